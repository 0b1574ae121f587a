"""Object storage for real: a study on an S3-compatible server on localhost (moto's, from the test extras),
reached as users reach one (AWS_* environment variables, s3:// URIs): it runs, survives a SIGKILLed driver
with nothing finished retrained, writes its report into the bucket; a missing bucket, refused credentials and
an endpoint that does not answer are one line before any work, an outage mid-sweep one line after it (a rerun
resumes); of two drivers started together on one study, one goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import write_spec
from helpers import free_port, kill_driver, s3_keys, s3_service, s3_trained, start_driver, sweep, wait_for

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

BUCKET = "studies"


@pytest.fixture(scope="module")
def s3():
    """The server, a bucket, and the environment a user's shell would have for it."""
    with s3_service(BUCKET) as (variables, client, server):
        yield {**os.environ, **variables}, client, server


def _keys(client, prefix: str) -> list[str]:
    return s3_keys(client, BUCKET, prefix)


def _trained(client, study: str) -> dict[str, int]:
    return s3_trained(client, BUCKET, study)


def _ablation(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablation.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow  # two sweeps and a kill
def test_a_study_on_s3_runs_resumes_after_a_kill_and_reports_into_the_bucket(tmp_path, s3):
    env, client, _ = s3
    spec = write_spec(tmp_path / "s3.yaml", name="s3study", seeds=[0], freeze=[4])
    storage = f"s3://{BUCKET}/runs"
    proc = start_driver(spec, storage, env=env)
    wait_for(lambda: any(n >= 1 for n in _trained(client, "runs/s3study").values()), proc, "an epoch in the bucket",
             timeout=300, poll=1.0)
    kill_driver(proc)
    at_kill = _trained(client, "runs/s3study")
    done = sweep(spec, storage, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = _trained(client, "runs/s3study")
    assert len(trained) == 3 and all(n in (2, 3) for n in trained.values()), trained  # 2 epochs; a kill: +1
    assert sum(trained.values()) - 6 <= sum(1 for d, n in at_kill.items() if 0 < n < 2), (at_kill, trained)
    keys = _keys(client, "runs/s3study/")
    assert "runs/s3study/manifest.json" in keys
    assert any(k.endswith("/checkpoints/epoch_0002/state.pt") for k in keys)
    assert {k.rsplit("/", 1)[-1] for k in keys if k.startswith("runs/s3study/trials/")} >= {"run.json",
                                                                                            "metrics.jsonl"}
    report = _ablation("report", f"{storage}/s3study", env=env)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "runs/s3study/report/report.md" in _keys(client, "runs/s3study/report/")
    status = _ablation("status", f"{storage}/s3study", env=env)
    assert "3 finished" in status.stdout, status.stdout + status.stderr
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key="runs/s3study/manifest.json")["Body"].read())
    assert len(manifest["invocations"]) == 2


@pytest.mark.parametrize("storage, change, message", [
    ("s3://no-such-bucket/runs", {}, "the bucket no-such-bucket does not exist; create it first"),
    (f"s3://{BUCKET}/refused", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "the storage refused or did not answer"),
])
def test_a_missing_bucket_or_an_endpoint_that_does_not_answer_is_one_line_before_any_work(tmp_path, s3, storage,
                                                                                         change, message):
    """(moto checks no credentials, so refused keys are not played here: they take the same path as a silent
    endpoint, pyarrow's OSError at the first request.)"""
    env, client, _ = s3
    spec = write_spec(tmp_path / "s.yaml", name="refused")
    result = _ablation("sweep", str(spec), "--storage", storage, env={**env, **change})
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not _keys(client, "refused/")


@pytest.mark.slow  # two drivers, one sweep
def test_two_drivers_started_together_on_one_s3_study_one_goes_on(tmp_path, s3):
    """S3 has no exclusive create that pyarrow can ask for, so the lock is written, read back after a pause, and
    only the driver whose lock is still there goes on (records.claim); the other is one line, exit 2."""
    env, client, _ = s3
    spec = write_spec(tmp_path / "two.yaml", name="two", seeds=[0], freeze=[4], init=["random"])
    storage = f"s3://{BUCKET}/both"
    procs = [start_driver(spec, storage, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    results = sorted((p.wait(timeout=600), p.stderr.read()) for p in procs)
    (won, _), (lost, why) = results
    assert (won, lost) == (0, 2), results
    assert "is being run by process" in why and len(why.strip().splitlines()) == 1, why
    assert _trained(client, "both/two") == {d: 2 for d in _trained(client, "both/two")} and \
        len(_trained(client, "both/two")) == 1


@pytest.mark.slow  # a sweep through an outage, then its rerun
def test_storage_that_stops_answering_mid_sweep_is_one_line_and_a_rerun_resumes(tmp_path, s3):
    env, client, server = s3
    spec = write_spec(tmp_path / "down.yaml", name="down", seeds=[0], freeze=[4], init=["random"],
                      finetune={"epochs": 4}, max_failures=1)
    storage = f"s3://{BUCKET}/outage"
    proc = start_driver(spec, storage, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: any(n >= 1 for n in _trained(client, "outage/down").values()), proc, "an epoch", timeout=300,
             poll=1.0)
    server.stop()
    try:
        err = proc.communicate(timeout=500)[1]
    finally:
        server.start()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith(f"ablation: error: {storage}/down?endpoint_override=") and \
        "the storage failed during the sweep" in last and "rerun the same command" in last, err[-3000:]
    before = _trained(client, "outage/down")
    done = sweep(spec, storage, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (epochs,) = _trained(client, "outage/down").values()
    assert epochs <= 4 + 1 and epochs >= max(before.values()), (before, epochs)  # at most the epoch in progress


@pytest.mark.slow  # a moto server and a driver of their own
def test_refused_credentials_are_one_line_before_any_work(tmp_path):
    """A moto server of its own that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0: every request must be
    signed by a known key), asked with keys it does not know."""
    import socket
    import time

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError(f"moto's server did not answer on port {port} within 30 s")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        spec = write_spec(tmp_path / "s.yaml", name="keys")
        result = _ablation("sweep", str(spec), "--storage", "s3://studies/keys", env=env)
        assert result.returncode == 2 and "the storage refused or did not answer" in result.stderr, result.stderr
        assert "ACCESS_DENIED" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    finally:
        server.kill()
        server.wait()
