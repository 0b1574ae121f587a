"""The test helpers that drive `ablation sweep` as a user would (start it, wait for an event, kill it) and read a
study's files back (trial dirs, epochs, what was trained, final weights). One place, so that every test that
kills a driver waits for the same events and reads the study the same way."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ablation.study.records import trial_records
from ablation.trial.rundir import read_rows, trained_log

# ------------------------------------------------------------------------------------------ reading a study


def trial_dirs(study: Path, everything: bool = False) -> dict[str, Path]:
    """Trial name -> run dir, for the current spec's trials (or every trial the study ever planned)."""
    manifest = json.loads((study / "manifest.json").read_text())
    keys = manifest["trials"] if everything else manifest["invocations"][-1]["planned"]
    return {manifest["trials"][k]["name"]: study / "trials" / manifest["trials"][k]["dir"] for k in keys}


def trial_states(study: Path) -> list[dict]:
    return [r for r in trial_records(study) if r["current"]]


def rows_by_trial(study: Path) -> dict[str, list[dict]]:
    return {trial: read_rows(d) for trial, d in trial_dirs(study).items()}


def trained_by_trial(study: Path, everything: bool = False) -> dict[str, int]:
    """Trial -> epochs it ever trained (trained.log: retrained epochs count again)."""
    return {trial: len(trained_log(d)) for trial, d in trial_dirs(study, everything).items()}


def trained_so_far(study: Path) -> int:
    """Epochs trained in the study, 0 before its manifest exists (a driver still starting)."""
    return sum(trained_by_trial(study, True).values()) if (study / "manifest.json").exists() else 0


def finished_trials(study: Path) -> dict[str, int]:
    """Finished trial -> epochs it trained so far."""
    if not (study / "manifest.json").exists():
        return {}
    trained = trained_by_trial(study)
    return {s["name"]: trained[s["name"]] for s in trial_states(study) if s["state"] == "finished"}


def final_state(study: Path, trial: str) -> dict:
    from ablation.trial.checkpoint import checkpoint_dirs, load_checkpoint

    return load_checkpoint(checkpoint_dirs(trial_dirs(study)[trial])[0])


def backbone_digest(study: Path, trial: str) -> str:
    from ablation.trial.models import HEAD_KEYS, weights_digest

    return weights_digest({k: v for k, v in final_state(study, trial)["model"].items() if k not in HEAD_KEYS})


def outcome(study: Path) -> dict[str, tuple]:
    """Per trial: its epochs, final metrics and a digest of its final weights: what an interrupted study must
    end with to count as the uninterrupted one."""
    from ablation.trial.models import weights_digest

    out = {}
    for trial, rows in rows_by_trial(study).items():
        final = rows[-1] if rows else {}
        out[trial] = ([r["epoch"] for r in rows], {k: final.get(k) for k in ("train_loss", "test_loss", "test_acc")},
                      weights_digest(final_state(study, trial)["model"]))
    return out


# ------------------------------------------------------------------------------------------ driving a sweep


def start_driver(spec: Path, storage: Path, *extra: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """`ablation sweep SPEC --storage STORAGE [extra]` in a process of its own, as a user starts it."""
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(storage),
                             *extra], env=env, text=True, **popen)


def sweep(spec: Path, storage: Path, *extra: str, env: dict | None = None,
          timeout: float = 900) -> subprocess.CompletedProcess:
    """`ablation sweep` to its end."""
    return subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(storage),
                           *extra], env=env, capture_output=True, text=True, timeout=timeout)


def wait_for(event: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 600,
             poll: float = 0.2) -> None:
    """Poll until `event()` holds while the driver runs; fail if the driver ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not event():
        if proc.poll() is not None:
            raise AssertionError(f"the driver ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(poll)


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            out.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return out


def descendants(pid: int) -> set[int]:
    """Every process below pid (a driver's local Ray: its raylet, GCS and trial workers)."""
    children, found, todo = _children(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# Ray's per-node agents outlive a SIGKILLed driver's local Ray (orphaned, they never exit by themselves); they
# hold no trial, so the waits below do not wait for them, and kill_driver kills them after.
AGENTS = (b"ray::DashboardAgent", b"ray::RuntimeEnvAgent")


def _title(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def ray_processes(raylets: set[int]) -> dict[int, bytes]:
    """pid -> title of every live process that these raylets started: Ray gives each its raylet's pid in
    RAY_RAYLET_PID, which stays when the worker is orphaned (its parent gone, it may train on for seconds)."""
    wanted = {f"RAY_RAYLET_PID={pid}".encode() for pid in raylets}
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and alive(int(entry)):
            try:
                env = set(Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if env & wanted:
                out[int(entry)] = _title(int(entry))
    return out


def wait_until_gone(raylets: set[int], timeout: float = 60, what: str = "processes of the killed driver") -> None:
    """Until no process of these raylets but their agents lives: no orphaned trial worker writes any more."""
    deadline = time.monotonic() + timeout
    while left := [t for t in ray_processes(raylets).values() if not t.startswith(AGENTS)]:
        assert time.monotonic() < deadline, f"{what} still alive after {timeout} s: {left}"
        time.sleep(0.1)


def kill_driver(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
    """Signal the driver only, as `kill -9 PID` would, and wait until its local Ray (reaped by Ray once the
    driver is gone) has stopped too, so that no orphaned trial worker still writes while the next driver runs."""
    below = descendants(proc.pid)
    raylets = {p for p in below if _title(p).split(b"\0")[0].endswith(b"/raylet")}
    proc.send_signal(sig)
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in below if not _title(p).startswith(AGENTS)):
        assert time.monotonic() < deadline, f"processes of the killed driver still alive after {timeout} s"
        time.sleep(0.1)
    wait_until_gone(raylets, timeout)
    for pid, title in ray_processes(raylets).items():  # the orphaned agents
        if title.startswith(AGENTS):
            os.kill(pid, signal.SIGKILL)


def assert_resumed_from_checkpoints(study: Path, torn: str | None = None) -> None:
    """Every restart of every trial continued from its newest checkpoint: in its trained.log an epoch is never
    followed by an earlier one (a kill between the log line and the checkpoint trains that epoch again; the
    trial whose newest checkpoint was torn may go back one more). A run started over would go back further."""
    for trial, d in trial_dirs(study, everything=True).items():
        epochs = [line["epoch"] for line in trained_log(d)]
        back = 1 if trial == torn else 0
        assert all(b >= a - back for a, b in zip(epochs, epochs[1:])), f"{trial} trained epochs {epochs}"


# ------------------------------------------------------------------------------------------ the file system


def read_only_dir(path: Path):
    """A command prefix under which `path` is read-only even for root (a read-only bind mount in a user and
    mount namespace), or [] when chmod suffices (not root); None when neither is possible here."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        return []
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        return None
    return ["unshare", "-rm", "sh", "-c", f'mount --bind "{path}" "{path}" && mount -o remount,bind,ro "{path}" '
                                          f'"{path}" && exec "$0" "$@"']


# ------------------------------------------------------------------------------------------ object storage


class S3Server:
    """moto's S3 app on a localhost port, in a thread of this process (stopped and started again, it keeps its
    buckets: they live in this process). One fix-up: moto 5 names the root element of its CompleteMultipartUpload
    answer CompleteMultipartUploadResponse where S3 says CompleteMultipartUploadResult, and the AWS SDK inside
    pyarrow takes the former for an error in a 200 answer (every pyarrow write is a multipart upload)."""

    def __init__(self, port: int):
        self.port, self.server, self.thread = port, None, None
        from moto.server import DomainDispatcherApplication, create_backend_app

        self.app = DomainDispatcherApplication(create_backend_app)

    def _wsgi(self, environ, start_response):
        said = {}
        body = b"".join(self.app(environ, lambda status, headers, exc_info=None: said.update(s=status, h=headers)))
        headers = said["h"]
        if b"<CompleteMultipartUploadResponse" in body:
            body = body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
            headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in headers]
        start_response(said["s"], headers)
        return [body]

    def start(self) -> None:
        import threading

        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", self.port, self._wsgi, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def s3_service(bucket: str):
    """An S3Server on a free port with `bucket` in it: yields (the variables a user's shell would hold for it,
    a boto3 client, the server)."""
    import logging

    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = free_port()
    server = S3Server(port)
    server.start()
    variables = {**S3_KEYS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    client = boto3.client("s3", endpoint_url=variables["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    try:
        yield variables, client, server
    finally:
        server.stop()


def s3_keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def s3_trained(client, bucket: str, study: str) -> dict[str, int]:
    """Trial dir -> epochs its trained.log records, read from the bucket (study: its key prefix)."""
    out = {}
    for key in s3_keys(client, bucket, f"{study}/trials/"):
        if key.endswith("/trained.log"):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            out[key.split("/")[-2]] = len([line for line in body.splitlines() if line.strip()])
    return out
