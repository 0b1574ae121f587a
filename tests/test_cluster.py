"""A real multi-node Ray cluster on this machine (a head and a worker node, one CPU each, started with
`ray start` as a user would): a study runs across both nodes, and a worker node SIGKILLed while one of its
trials is training loses nothing: the trial is retried on the remaining node from its last checkpoint, and
every trial ends with the metrics and weights of the same study run on one node."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import write_spec
from test_sweep import rows_by_trial, trained_by_trial, trial_dirs, trial_states

pytestmark = pytest.mark.slow

EPOCHS = 3
RAY = str(Path(sys.executable).parent / "ray")
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # token auth is tested by Ray; here the nodes are ours


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def raylets(marker: str) -> dict[str, tuple[int, bool]]:
    """Ray node id -> (raylet pid, is the head) of the cluster whose temp dir is `marker`."""
    out = {}
    for pid in processes_of(marker):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not args or not args[0].endswith(b"raylet"):
            continue
        flags = dict(a.decode().split("=", 1) for a in args if a.startswith(b"--") and b"=" in a)
        out[flags["--node_id"]] = (pid, "__internal_head__" in flags.get("--static_resource_list", ""))
    return out


@contextlib.contextmanager
def ray_cluster(hide: tuple[Path, ...] = ()):
    """`ray start --head` + `ray start --address` on this machine, 1 CPU each, in a temp dir of their own (so
    that tearing them down touches no other Ray on the machine: no `ray stop`). The worker node can be
    started in a mount namespace of its own where `hide` paths are empty (a node that lacks them)."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live below it
    port = free_port()
    common = ["--num-cpus=1", "--disable-usage-stats"]
    worker = [RAY, "start", f"--address=127.0.0.1:{port}", *common]
    if hide:
        mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(p))}" for p in hide)
        worker = ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mounts} && exec {shlex.join(worker)}"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
                        *common], env=ENV, check=True, capture_output=True, timeout=120)
        subprocess.run(worker, env=ENV, check=True, capture_output=True, timeout=120)
        deadline = time.time() + 60
        while len(raylets(temp)) < 2 and time.time() < deadline:
            time.sleep(0.5)
        assert len(raylets(temp)) == 2
        yield f"127.0.0.1:{port}", temp
    finally:
        for pid in processes_of(temp):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cluster():
    with ray_cluster() as c:
        yield c


def outcome(study: Path) -> dict:
    from ablation.checkpoint import checkpoint_dirs, load_checkpoint
    from ablation.models import weights_digest

    out = {}
    for trial, rows in rows_by_trial(study).items():
        weights = load_checkpoint(checkpoint_dirs(trial_dirs(study)[trial])[0])["model"]
        out[trial] = ([r["epoch"] for r in rows], rows[-1]["test_loss"], rows[-1]["test_acc"], weights_digest(weights))
    return out


def sweep(spec: Path, storage: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(storage),
                             *extra], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_cluster_study_runs_on_two_nodes_and_survives_a_worker_node_killed_mid_trial(tmp_path, cluster):
    address, temp = cluster
    spec = write_spec(tmp_path / "c.yaml", name="c", train_subset=384, pretrain={"epochs": EPOCHS},
                      finetune={"epochs": EPOCHS}, max_failures=3)
    study = tmp_path / "cluster" / "c"
    proc = sweep(spec, tmp_path / "cluster", "--address", address)
    nodes = raylets(temp)
    (worker,) = [n for n, (_, head) in nodes.items() if not head]
    victim, deadline = None, time.time() + 600
    while victim is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if not (study / "manifest.json").exists():
            continue
        for trial, rows in rows_by_trial(study).items():  # a trial on the worker node, one epoch in, more to go
            if rows and rows[-1].get("node") == worker and len(rows) < EPOCHS:
                victim = trial
    assert victim, f"no trial ran on the worker node: {proc.communicate()[0][-3000:]}"
    os.kill(nodes[worker][0], signal.SIGKILL)  # the node's raylet: its workers go with it
    output = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, output[-3000:]
    assert {s["state"] for s in trial_states(study)} == {"finished"}
    ran_on = {r["node"] for rows in rows_by_trial(study).values() for r in rows}
    assert worker in ran_on and len(ran_on) >= 2
    (head,) = [n for n, (_, is_head) in nodes.items() if is_head]
    assert [r["node"] for r in rows_by_trial(study)[victim]][0] == worker  # begun on the worker node,
    assert rows_by_trial(study)[victim][-1]["node"] == head  # finished on the head from its checkpoint
    assert trained_by_trial(study)[victim] <= EPOCHS + 1  # at most the epoch it was training again
    assert sum(trained_by_trial(study).values()) <= EPOCHS * len(trial_states(study)) + 2

    one_node = sweep(spec, tmp_path / "local")  # the same study on one node (local Ray, 2 CPUs)
    local_output = one_node.communicate(timeout=900)[0]
    assert one_node.returncode == 0, local_output[-3000:]
    assert outcome(study) == outcome(tmp_path / "local" / "c")  # same metrics, bit-identical weights
    log = json.loads((study / "manifest.json").read_text())["invocations"][-1]
    assert log["outcome"] == "finished" and not log["failed"]


def test_cluster_driver_killed_and_rerun_with_address_resumes(tmp_path, cluster):
    from test_sweep import finished_trials

    address, _ = cluster
    spec = write_spec(tmp_path / "d.yaml", name="d", train_subset=384, pretrain={"epochs": EPOCHS},
                      finetune={"epochs": EPOCHS})
    study = tmp_path / "d"
    proc = sweep(spec, tmp_path, "--address", address)
    deadline = time.time() + 600
    while not finished_trials(study) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
    assert proc.poll() is None, "the study ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = finished_trials(study)
    time.sleep(5)  # the cluster outlives the driver: its trials are stopped as their owner is gone
    rerun = sweep(spec, tmp_path, "--address", address)
    output = rerun.communicate(timeout=900)[0]
    assert rerun.returncode == 0, output[-3000:]
    assert {s["state"] for s in trial_states(study)} == {"finished"}
    trained = trained_by_trial(study)
    assert {t: trained[t] for t in done_at_kill} == done_at_kill  # not one more epoch
    assert sum(trained.values()) <= EPOCHS * len(trained) + 2  # one epoch per slot at the kill, at most


def test_cluster_nodes_that_cannot_see_the_storage_or_the_data_are_one_line_before_any_trial(tmp_path):
    from PIL import Image

    hidden = tmp_path / "hidden"
    images = hidden / "images"
    for split in ("train", "test"):
        for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            folder = images / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), colour).save(folder / f"{i}.png")
    spec = write_spec(tmp_path / "n.yaml", name="n", seeds=[0], init=["random"], freeze=[0], train_subset=0,
                      test_subset=0, finetune={"epochs": 1}, pretrain={"epochs": 1})
    data = ["dataset=imagefolder", f"data_dir={images}", f"cache_dir={tmp_path / 'cache'}"]
    made = subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(tmp_path / "old"),
                           *data], env=ENV, capture_output=True, text=True, timeout=300)  # a study to replace
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    with ray_cluster(hide=(hidden,)) as (address, _):
        storage = hidden / "studies"  # the driver sees it; the worker node sees an empty folder there
        result = subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(storage),
                                 "--address", address], env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "cannot see the study storage" in result.stderr, result.stderr[-3000:]
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("ablation: error: Ray node ")
        assert not storage.exists()  # nothing written, not even the probe's folder

        result = subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage",
                                 str(tmp_path / "st"), "--address", address, "dataset=imagefolder",
                                 f"data_dir={images}", f"cache_dir={tmp_path / 'cache'}"],
                                env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "imagefolder: neither" in result.stderr, result.stderr[-3000:]
        assert result.stderr.count("\n") == 1 and not (tmp_path / "st").exists()

        result = subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage",
                                 str(tmp_path / "old"), "--address", address, "--fresh", *data],
                                env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "imagefolder: neither" in result.stderr, result.stderr[-3000:]
        assert [p.name for p in (tmp_path / "old").iterdir()] == ["n"]  # --fresh moved nothing aside
