"""An invocation's end: what the manifest says happened, the lock released, and what the sweep says."""

from __future__ import annotations

import json

import pytest

from ablation.study import records as study


@pytest.mark.parametrize("failed, skipped, unfinished, interrupted, outcome", [
    ({}, {}, 0, False, "finished"),
    ({}, {}, 3, True, "stopped with 3 unfinished"),  # Ctrl-C: Tune returns as if it were done
    ({}, {}, 3, False, "ended with 3 unfinished"),  # no stop signal: not to be called a Ctrl-C
    ({"k": "error.txt"}, {"j": "its rotation run failed"}, 0, False, "1 failed, 1 skipped"),
    ({"k": "error.txt"}, {}, 2, True, "1 failed, stopped with 2 unfinished"),
    ({}, {}, None, True, "ended by an exception or a second interrupt")])
def test_an_invocations_end_says_what_happened(tmp_path, failed, skipped, unfinished, interrupted, outcome):
    manifest = {"format": study.FORMAT, "trials": {}, "invocations": [{"started": "t"}]}
    (tmp_path / study.LOCK).write_text("1 host\n")
    study.end(tmp_path, manifest, failed, skipped, unfinished, interrupted)
    run = json.loads((tmp_path / study.MANIFEST).read_text())["invocations"][-1]
    assert run["outcome"] == outcome and run["failed"] == failed and run["ended"]
    assert not (tmp_path / study.LOCK).exists()


@pytest.mark.parametrize("failed, skipped, unfinished, interrupted, says, code", [
    ([], {}, 0, False, [], 0),
    (["rot-s0"], {"k": "its rotation trial rot-s0 failed"}, 0, False,
     ["ablation: 1 trial(s) failed after retries: rot-s0; 1 skipped (its rotation trial rot-s0 failed); see"], 1),
    ([], {"k": "its rotation trial did not finish in this invocation"}, 0, False,
     ["ablation: 1 skipped (its rotation trial did not finish in this invocation); see"], 1),
    (["rot-s1"], {}, 2, True, ["ablation: 1 trial(s) failed after retries: rot-s1; see",
                               "ablation: study s stopped with 2 planned trial(s) unfinished (every finished epoch is "
                               "kept); rerun the same command to resume"], 130),
    ([], {}, 2, False, ["ablation: study s ended, with no stop signal (unexpected: please report it), with 2"], 1)])
def test_a_sweep_ends_with_a_line_per_problem_and_its_exit_code(failed, skipped, unfinished, interrupted, says,
                                                                 code):
    """Failures are named even when a Ctrl-C came too; only a stop signal makes an unfinished run a 'stop' (130)."""
    from ablation.driver.sweep import closing

    lines, rc = closing("s", "/x/s", failed, skipped, unfinished, interrupted)
    assert rc == code and len(lines) == len(says)
    assert all(line.startswith(start) for line, start in zip(lines, says)), lines


def test_only_what_a_failing_storage_raises_becomes_the_storage_line(monkeypatch):
    """Mid-sweep, an OSError or pyarrow's bare ArrowException (GCS credentials) from object storage is one line
    saying what is kept; pyarrow's ArrowInvalid (a ValueError: a bug), a closed console pipe and a local disk's
    errors keep their tracebacks."""
    import pyarrow.lib

    from ablation.driver.sweep import _storage_lost
    from ablation.errors import UserError
    from ablation.storage import store

    monkeypatch.setattr(store, "is_remote", lambda location: location.startswith("gs://"))
    failures = [OSError("connection reset"), pyarrow.lib.ArrowException("Unknown error: google::cloud::Status")]
    for exc in failures:
        with pytest.raises(UserError, match="the storage failed during the sweep .* what it holds is kept"):
            with _storage_lost("gs://bucket/studies/s"):
                raise exc
    for where, exc in [("gs://bucket/studies/s", pyarrow.lib.ArrowInvalid("a bug")),
                       ("gs://bucket/studies/s", BrokenPipeError()), ("/data/studies/s", OSError("disk full"))]:
        with pytest.raises(type(exc)):
            with _storage_lost(where):
                raise exc


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_a_stop_signal_outside_tunes_fit_ends_the_sweep_with_its_own_exit_code(sig, sigint):
    """SIGTERM is passed on as SIGINT for Tune's handler; when no fit is running (just before it starts, or
    while the sweep closes) the stop is raised at once: exit 128 + SIGTERM, not Ctrl-C's 130, so a batch
    scheduler sees its own signal, and never lost where SIGINT is ignored (a job started with & by a script)."""
    import os
    import signal
    import time

    from ablation.driver.sweep import _stop_signals
    from ablation.errors import Stopped

    signum = getattr(signal, sig)
    before, before_int = signal.getsignal(signum), signal.getsignal(signal.SIGINT)
    if sigint == "ignored":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(Stopped) as stopped:
            with _stop_signals():
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the stop interrupts this
    finally:
        signal.signal(signal.SIGINT, before_int)
    assert stopped.value.signum == signum
    assert signal.getsignal(signum) == before  # the handler before it is back


def _claim_at_once(study_dir, start, results, release):
    start.wait()
    try:
        study.claim(study_dir)
        results.put("claimed")
    except study.StudyError:
        results.put("refused")
    release.wait(60)  # alive until every other one has looked at the lock


@pytest.mark.parametrize("lock", ["none", "stale"])
def test_of_drivers_claiming_a_study_at_once_exactly_one_gets_it(tmp_path, lock):
    """check_claim looks before the data loads (minutes); the lock is taken after: created exclusively, or
    (replacing a killed driver's) written and read back."""
    import multiprocessing
    import socket

    if lock == "stale":
        (tmp_path / "s").mkdir()
        (tmp_path / "s" / study.LOCK).write_text(f"999999999 {socket.gethostname()}\n")  # no such process
    ctx = multiprocessing.get_context("fork")
    start, results, release = ctx.Barrier(4), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_at_once, args=(tmp_path / "s", start, results, release)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    release.set()
    for p in procs:
        p.join()
    assert outcomes == ["claimed", "refused", "refused", "refused"]


def test_a_stale_lock_is_taken_over_and_a_live_one_refused(tmp_path):
    import os
    import socket
    import subprocess

    (tmp_path / study.LOCK).write_text(f"999999999 {socket.gethostname()}\n")  # no such process
    study.claim(tmp_path)
    assert (tmp_path / study.LOCK).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / study.LOCK).write_text(f"{other.pid} {socket.gethostname()}\n")
        with pytest.raises(study.StudyError, match=f"being run by process {other.pid}"):
            study.claim(tmp_path)
        assert (tmp_path / study.LOCK).read_text().startswith(f"{other.pid} ")
    finally:
        other.kill()


def test_a_trial_tune_started_is_running_before_its_first_epoch_lands(tmp_path):
    """A fine-tune's first epoch can take minutes: `status` says running from the sweep log's start line."""
    import os
    import shutil
    import socket

    fixture = __import__("pathlib").Path(__file__).parent / "fixtures" / "study_tiny"
    shutil.copytree(fixture, tmp_path / "s")
    s = tmp_path / "s"
    manifest = json.loads((s / study.MANIFEST).read_text())
    by_name = {t["name"]: t for t in manifest["trials"].values()}
    for name in ("ft-random-f0-s1", "ft-random-f4-s1"):  # neither has an epoch yet
        shutil.rmtree(s / "trials" / by_name[name]["dir"])
    (s / study.LOCK).write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live driver
    log = study.log_location(s, len(manifest["invocations"]))
    log.parent.mkdir(exist_ok=True)
    log.write_text(f"[0:04] {study.STARTED}ft-random-f0-s1\n[0:31] 0/2 trials done, 1 running\n")
    states = {r["name"]: r["state"] for r in study.trial_records(s)}
    assert states["ft-random-f0-s1"] == "running" and states["ft-random-f4-s1"] == "waiting"
    (s / study.LOCK).unlink()  # the driver gone: neither is running
    states = {r["name"]: r["state"] for r in study.trial_records(s)}
    assert {states["ft-random-f0-s1"], states["ft-random-f4-s1"]} == {"not started"}
