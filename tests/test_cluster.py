"""A real multi-node Ray cluster on this machine (a head and a worker node, one CPU each, started with
`ray start` as a user would, once for the module): the reference study runs across both nodes, a worker node
SIGKILLed while one of its trials is training loses nothing (the trial is retried on the remaining node from
its last checkpoint), a driver SIGKILLed and rerun with --address resumes, and every trial ends with the
metrics and weights of the reference study run on one node. A node that cannot see the storage or the data is
one line before any trial."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import EPOCHS, REFERENCE, write_spec
from helpers import (AGENTS, S3_KEYS, assert_resumed_from_checkpoints, finished_trials, free_port, kill_driver, outcome,
                     ray_processes, rows_by_trial, s3_service, s3_trained, start_driver, sweep, trained_by_trial,
                     trial_states, wait_for)

from ablation.driver.sweep import run_study

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
# token auth is tested by Ray; here the nodes are ours. Every node holds the S3 test server's keys, as each node
# of a cluster on object storage holds its credentials (the endpoint travels in the study's URI)
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", **S3_KEYS}


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
    # short: Ray's socket paths live below it; named ray/ as Ray names its own, so that with RAY_TMPDIR at its
    # parent a driver finds the address `ray start` recorded there, as it finds /tmp/ray's
    temp = os.path.join(tempfile.mkdtemp(prefix="rc", dir="/tmp"), "ray")
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



@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One two-node cluster for the module; its worker node sees an empty folder at `hidden`."""
    hidden = tmp_path_factory.mktemp("hidden")
    with ray_cluster(hide=(hidden,)) as (address, temp):
        yield address, temp, hidden


def trial_workers(raylet_pids: set[int]) -> list[bytes]:
    """Titles of the processes of these raylets that run a trial (an idle worker is `ray::IDLE`)."""
    return [t for t in ray_processes(raylet_pids).values()
            if t.startswith(b"ray::") and not t.startswith((b"ray::IDLE", *AGENTS))]


def test_cluster_nodes_that_cannot_see_the_storage_or_the_data_are_one_line_before_any_trial(
        tmp_path, cluster, ray_session):
    """Runs before the test that kills the worker node."""
    from PIL import Image

    address, temp, hidden = cluster
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
    overrides = dict(arg.split("=", 1) for arg in data)
    assert run_study(str(spec), storage=str(tmp_path / "old"), overrides=overrides) == 0  # a study to replace
    storage = hidden / "studies"  # the driver sees it; the worker node sees an empty folder there
    recorded = ENV | {"RAY_TMPDIR": os.path.dirname(temp)}  # where `ray start` recorded it: what `auto` joins
    result = sweep(spec, storage, "--address", "auto", env=recorded, timeout=300)
    assert result.returncode == 2 and "cannot see the study storage" in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ablation: error: Ray node ")
    assert not storage.exists()  # nothing written, not even the probe's folder

    result = sweep(spec, tmp_path / "st", "--address", address, *data, env=ENV, timeout=300)
    assert result.returncode == 2 and "imagefolder: neither" in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and not (tmp_path / "st").exists()

    result = sweep(spec, tmp_path / "old", "--address", address, "--fresh", *data, env=ENV, timeout=300)
    assert result.returncode == 2 and "imagefolder: neither" in result.stderr, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["n"]  # --fresh moved nothing aside


def test_cluster_study_survives_a_worker_node_killed_mid_trial_and_a_driver_killed_then_rerun(
        tmp_path, cluster, reference_study):
    """The reference study over two nodes: the worker node's raylet SIGKILLed while one of its trials trains
    (the trial is retried on the head from its checkpoint), then the driver SIGKILLed (the cluster outlives
    it) and the same command rerun with --address: every trial ends with the reference's metrics and weights."""
    address, temp, _ = cluster
    spec = write_spec(tmp_path / "c.yaml", name="c", **REFERENCE, max_failures=3)
    study = tmp_path / "c"
    proc = start_driver(spec, tmp_path, "--address", address, env=ENV)
    nodes = raylets(temp)
    (worker,) = [n for n, (_, head) in nodes.items() if not head]
    (head,) = [n for n, (_, is_head) in nodes.items() if is_head]

    def on_worker() -> str | None:  # a trial on the worker node with all but its last epoch done
        if not (study / "manifest.json").exists():
            return None
        return next((t for t, rows in rows_by_trial(study).items()
                     if len(rows) == EPOCHS - 1 and rows[-1].get("node") == worker), None)

    wait_for(lambda: on_worker() is not None, proc, "a trial on the worker node", poll=0.05)
    victim = on_worker()
    lost = {nodes[worker][0], *ray_processes({nodes[worker][0]})}  # the node lost: raylet and workers at once
    for pid in lost:  # (a worker outliving its raylet for a moment could finish the victim's last epoch first)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: rows_by_trial(study)[victim][-1]["node"] == head, proc, f"{victim} resumed on the head",
             timeout=180)

    def unfinished_on_head() -> bool:  # the driver killed while a trial with epochs to lose trains
        return any(1 < len(rows) < EPOCHS for rows in rows_by_trial(study).values())

    wait_for(unfinished_on_head, proc, "a trial two epochs in on the head")
    kill_driver(proc)
    done_at_kill = finished_trials(study)
    deadline = time.monotonic() + 60  # the cluster outlives the driver: Ray stops the trials of the dead job
    while trial_workers({pid for pid, _ in nodes.values()}):
        assert time.monotonic() < deadline, "the killed driver's trials still run on the cluster"
        time.sleep(0.2)
    rerun = sweep(spec, tmp_path, "--address", address, env=ENV)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {s["state"] for s in trial_states(study)} == {"finished"}
    rows = rows_by_trial(study)
    assert {worker, head} <= {r["node"] for trial_rows in rows.values() for r in trial_rows}  # both nodes trained
    assert rows[victim][0]["node"] == worker  # begun on the worker node,
    assert rows[victim][-1]["node"] == head  # finished on the head from its checkpoint
    trained = trained_by_trial(study)
    assert {t: trained[t] for t in done_at_kill} == done_at_kill  # finished at the driver kill: not one more epoch
    # at most the epoch in progress of each trial running at a kill: the worker node's one at the raylet kill,
    # the head's one at the driver kill (one node, one CPU, one slot left)
    assert trained[victim] <= EPOCHS + 1 and sum(trained.values()) <= EPOCHS * len(trained) + 2
    assert_resumed_from_checkpoints(study)  # the victim and the trials at the driver kill: from their checkpoints
    assert outcome(study) == outcome(reference_study)  # same metrics, bit-identical weights as on one node
    log = json.loads((study / "manifest.json").read_text())["invocations"][-1]
    assert log["outcome"] == "finished" and not log["failed"]


def test_a_cluster_without_a_shared_filesystem_runs_a_study_on_s3_and_a_lost_node_costs_one_epoch(
        tmp_path, reference_study):
    """A cluster of its own (the module's loses its worker node in the test above), whose worker node sees none
    of this test's files; the study lives in an S3 bucket (a moto server on this machine) that every node
    reaches. The worker node's raylet is SIGKILLed while one of its trials trains: the trial resumes on the head
    from its checkpoint in the bucket, and the study's tables equal the one-node reference's."""
    pytest.importorskip("moto.server")
    from ablation.cli import main

    with ray_cluster(hide=(tmp_path,)) as (address, temp), s3_service("cluster") as (variables, client, _server):
        env = {**ENV, **variables, "ABLATION_CACHE": str(tmp_path / "cache")}
        spec = write_spec(tmp_path / "c.yaml", name="ref", **REFERENCE, max_failures=3)
        storage = "s3://cluster/studies"
        proc = start_driver(spec, storage, "--address", address, env=env)
        nodes = raylets(temp)
        (worker,) = [n for n, (_, head) in nodes.items() if not head]
        (head,) = [n for n, (_, is_head) in nodes.items() if is_head]

        def rows(trial_dir: str) -> list[dict]:
            body = client.get_object(Bucket="cluster", Key=f"studies/ref/trials/{trial_dir}/metrics.jsonl")["Body"]
            return [json.loads(line) for line in body.read().decode().splitlines() if line.strip()]

        def on_worker() -> str | None:  # a trial on the worker node with all but its last epoch done
            return next((d for d, n in s3_trained(client, "cluster", "studies/ref").items()
                         if n == EPOCHS - 1 and rows(d)[-1].get("node") == worker), None)

        wait_for(lambda: on_worker() is not None, proc, "a trial on the worker node", poll=0.5)
        victim = on_worker()
        for pid in {nodes[worker][0], *ray_processes({nodes[worker][0]})}:  # the node lost: raylet and workers
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=900) == 0, proc.stderr.read()[-3000:]
        assert rows(victim)[0]["node"] == worker and rows(victim)[-1]["node"] == head
        trained = s3_trained(client, "cluster", "studies/ref")
        assert len(trained) == 10 and trained[victim] <= EPOCHS + 1 and sum(trained.values()) <= 10 * EPOCHS + 1
        with pytest.MonkeyPatch.context() as patch:  # `ablation report` in this process, as the user's shell runs it
            for name, value in env.items():
                patch.setenv(name, value)
            assert main(["report", f"{storage}/ref"]) == 0
        assert main(["report", str(reference_study)]) == 0
        local = next((tmp_path / "cache" / "studies").iterdir())
        for table in ("rotation", "finetune_partial", "finetune_full", "pretraining_effect"):
            assert (local / "report" / "tables" / f"{table}.csv").read_text() == \
                (reference_study / "report" / "tables" / f"{table}.csv").read_text(), table
