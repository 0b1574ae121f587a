"""Sweeps through the real Ray: a tiny grid completes, pretrained trials use their own seed's backbone,
a crashed trial is retried from its checkpoint, a SIGKILLed driver is resumed by rerunning the command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablation.checkpoint import checkpoint_dirs, load_checkpoint
from ablation.config import UserError
from ablation.models import HEAD_KEYS, weights_digest
from ablation.rundir import read_rows, trained_log
from ablation.study import trial_records
from ablation.sweep import run_study
from conftest import write_spec

pytestmark = pytest.mark.slow


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
    return {trial: len(trained_log(d)) for trial, d in trial_dirs(study, everything).items()}


def final_state(study: Path, trial: str) -> dict:
    return load_checkpoint(checkpoint_dirs(trial_dirs(study)[trial])[0])


def backbone_digest(study: Path, trial: str) -> str:
    return weights_digest({k: v for k, v in final_state(study, trial)["model"].items() if k not in HEAD_KEYS})


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("studies")
    spec = write_spec(root / "t.yaml")
    assert run_study(str(spec), storage=str(root)) == 0
    return root / "t"


def test_tiny_grid_completes_with_every_trial_finished(tiny_study):
    states = trial_states(tiny_study)
    assert len(states) == 2 + 2 * 2 * 2  # a rotation run per seed + seeds x init x freeze
    assert {s["state"] for s in states} == {"finished"}
    for trial, rows in rows_by_trial(tiny_study).items():
        assert [r["epoch"] for r in rows] == [1, 2], trial
    assert set(trained_by_trial(tiny_study).values()) == {2}  # nothing trained twice
    manifest = json.loads((tiny_study / "manifest.json").read_text())
    (invocation,) = manifest["invocations"]
    assert invocation["outcome"] == "finished"
    data = manifest["data"]["fashion-mnist"]  # what the report says about the data copy (data.describe)
    assert (data["task"], data["train_images"], data["test_images"], data["image_shape"]) == \
        ("fashion-mnist", 60_000, 10_000, [3, 32, 32]) and len(data["fingerprint"]) == 16
    assert invocation["code_version"] and invocation["spec_digest"] and manifest["provenance"]["code_version"]
    assert sorted(invocation["added"]) == sorted(invocation["planned"]) == sorted(manifest["trials"])


def epoch_times(study: Path) -> dict[str, list[str]]:
    """Trial -> the ISO times at which its epochs were trained (trained.log)."""
    return {trial: [json.loads(line)["time"] for line in (d / "trained.log").read_text().splitlines()]
            for trial, d in trial_dirs(study).items()}


def test_a_pretrained_fine_tune_starts_as_soon_as_its_own_rotation_run_is_done(tiny_study):
    """One Tune run per invocation: pretrained trials do not wait for every random-init trial to finish."""
    times = epoch_times(tiny_study)
    first_pretrained = min(t[0] for trial, t in times.items() if "-pretrained-" in trial)
    last_random = max(t[-1] for trial, t in times.items() if "-random-" in trial)
    assert first_pretrained < last_random
    for trial, t in times.items():  # and never before its own rotation run ended
        if "-pretrained-" in trial:
            assert t[0] > times[f"rot-s{trial.rsplit('-s', 1)[1]}"][-1], trial


def test_the_console_shows_events_and_the_log_file_every_epoch(tiny_study):
    log = (tiny_study / "logs" / "run001.log").read_text()
    assert log.count("started ") == log.count("finished ") == 10
    assert log.count(" epoch ") == 20 and "10/10 trials done" in log


def test_pretrained_trials_loaded_their_own_seeds_backbone(tiny_study):
    rotation = {seed: backbone_digest(tiny_study, f"rot-s{seed}") for seed in (0, 1)}
    assert rotation[0] != rotation[1]
    for trial, rows in rows_by_trial(tiny_study).items():
        if "-pretrained-" in trial:
            seed = int(trial.rsplit("-s", 1)[1])
            assert rows[0]["pretrained_digest"] == rotation[seed], trial
        elif trial.startswith("ft-"):
            assert rows[0]["pretrained_digest"] == ""


def test_rerunning_a_finished_study_trains_nothing(tiny_study, ray_session):
    assert run_study(str(write_spec(tiny_study.parent / "t.yaml")), storage=str(tiny_study.parent)) == 0
    assert set(trained_by_trial(tiny_study).values()) == {2}


def test_a_trial_that_crashes_once_finishes_from_its_checkpoint(tmp_path, ray_session):
    spec = write_spec(tmp_path / "c.yaml", name="crash", seeds=[0], init=["random"], freeze=[0],
                      finetune={"epochs": 3, "crash_at_epoch": 2})
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    trial_dir = trial_dirs(tmp_path / "crash")["ft-random-f0-s0"]
    rows = read_rows(trial_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert len(trained_log(trial_dir)) == 3  # epoch 1 came from the checkpoint, not retrained
    clean = write_spec(tmp_path / "n.yaml", name="clean", seeds=[0], init=["random"], freeze=[0],
                       finetune={"epochs": 3})
    assert run_study(str(clean), storage=str(tmp_path)) == 0
    clean_rows = read_rows(trial_dirs(tmp_path / "clean")["ft-random-f0-s0"])
    assert [r["test_loss"] for r in rows] == [r["test_loss"] for r in clean_rows]  # resumed run is exact


def test_tune_logs_are_not_needed_to_resume(tmp_path, ray_session):
    """Each invocation is a fresh Tune run; the study's own records decide what is done. A study whose Tune
    experiment logs are gone (or torn by a kill while Tune wrote them) reruns without training anything again."""
    spec = write_spec(tmp_path / "s.yaml", name="snap", seeds=[0], init=["random"], freeze=[0])
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    tune_dir = tmp_path / "snap" / "tune"
    assert list(tune_dir.glob("run001/*/result.json"))
    (next(tune_dir.glob("run001/tuner.pkl"))).write_bytes(b"")  # torn
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    shutil.rmtree(tune_dir)
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    assert {s["state"] for s in trial_states(tmp_path / "snap")} == {"finished"}
    assert set(trained_by_trial(tmp_path / "snap").values()) == {2}


def test_gpu_request_on_a_cpu_machine_runs_on_cpu_after_one_warning(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    spec = write_spec(tmp_path / "g.yaml", name="gpu", seeds=[0], init=["random"], freeze=[5],
                      finetune={"epochs": 1}, resources={"cpu": 1, "gpu": 0.5})
    result = subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("ablation: warning:")]
    assert len(warnings) == 1 and "no GPU" in warnings[0]
    assert {s["state"] for s in trial_states(tmp_path / "gpu")} == {"finished"}


def test_more_cpus_per_trial_than_a_node_has_is_refused_before_anything_is_written(tmp_path, ray_session):
    """Tune would keep every trial pending, silently (the test session's Ray has 2 CPUs)."""
    spec = write_spec(tmp_path / "c.yaml", name="big", resources={"cpu": 3, "gpu": 0})
    with pytest.raises(UserError, match=r"resources.cpu=3 per trial, but the largest Ray node has 2 CPUs, so no "
                                        r"trial could start; ask for at most resources=\{cpu: 2\}"):
        run_study(str(spec), storage=str(tmp_path))
    assert not (tmp_path / "big").exists()


def test_uri_storage_runs_resumes_and_reports_through_pyarrow(tmp_path, ray_session):
    """--storage as a URI: every study file goes through pyarrow.fs (file:// here, s3:// on a cluster)."""
    uri = f"file://{tmp_path}/bucket"
    spec = write_spec(tmp_path / "u.yaml", name="uri", seeds=[0], freeze=[4])
    assert run_study(str(spec), storage=uri) == 0
    study = tmp_path / "bucket" / "uri"
    assert {s["state"] for s in trial_states(study)} == {"finished"} and len(trial_states(study)) == 3
    rotation = backbone_digest(study, "rot-s0")
    pretrained = read_rows(trial_dirs(study)["ft-pretrained-f4-s0"])
    assert pretrained[0]["pretrained_digest"] == rotation
    assert run_study(str(spec), storage=uri) == 0  # resumed through Tune.restore at the URI
    assert set(trained_by_trial(study).values()) == {2}
    env = {**os.environ, "ABLATION_CACHE": str(tmp_path / "cache")}
    stale = study / "report" / "tables" / "accuracy_by_lr.md"  # a table of an older spec
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    for command in ("status", "report"):
        out = subprocess.run([sys.executable, "-m", "ablation.cli", command, f"{uri}/uri"], capture_output=True,
                             text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
    assert "3 finished" in subprocess.run([sys.executable, "-m", "ablation.cli", "status", f"{uri}/uri"],
                                          capture_output=True, text=True, env=env).stdout
    assert (study / "report" / "report.md").stat().st_size > 0 and not stale.exists()  # replaced at the URI
    assert not list((tmp_path / "cache").rglob("state.pt"))  # the local copy skips the weights


# ------------------------------------------------------------------------------------------ driver kills


def start_driver(spec: Path, storage: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(storage)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL the driver only, as `kill -9 PID` would; Ray's reaper takes its local cluster down."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # let the orphaned workers notice


def finished_trials(study: Path) -> dict[str, int]:
    """Finished trial -> epochs it trained so far."""
    if not (study / "manifest.json").exists():
        return {}
    trained = trained_by_trial(study)
    return {s["name"]: trained[s["name"]] for s in trial_states(study) if s["state"] == "finished"}


def test_sigkilled_driver_resumes_and_finished_trials_do_not_train_again(tmp_path):
    spec = write_spec(tmp_path / "k.yaml", name="kill", seeds=[0], freeze=[4, 0], pretrain={"epochs": 3},
                      finetune={"epochs": 3})
    study = tmp_path / "kill"
    proc = start_driver(spec, tmp_path)
    deadline = time.time() + 600
    while not finished_trials(study) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the study ended before it could be killed"
    kill_driver(proc)
    done_at_kill = finished_trials(study)
    assert done_at_kill
    rerun = subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(tmp_path)],
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trained = trained_by_trial(study)
    assert {t: trained[t] for t in done_at_kill} == done_at_kill  # not one more epoch
    for trial, trial_rows in rows_by_trial(study).items():
        assert [r["epoch"] for r in trial_rows] == [1, 2, 3], trial
    assert {s["state"] for s in trial_states(study)} == {"finished"}
    extra = sum(trained.values()) - 3 * len(trained)
    assert 0 <= extra <= 2, f"{extra} epochs retrained; at most one per trial running at the kill (2 slots)"


def test_ctrl_c_says_the_study_stopped_unfinished_and_how_to_resume(tmp_path):
    """Tune ends its run quietly on SIGINT; the sweep must not call the study finished, must not pass on Tune's
    Tuner.restore advice (rerunning the command resumes) nor its "Failed to fetch metrics" list of the trials
    that never started (one slot, every CPU Ray sees: the random-init fine-tune waits in Tune's queue), and
    records the stop."""
    from ray._private.utils import get_num_cpus  # what the driver's local Ray will have

    spec = write_spec(tmp_path / "c.yaml", name="ctrlc", seeds=[0], init=["pretrained", "random"], freeze=[4],
                      pretrain={"epochs": 4}, finetune={"epochs": 1}, resources={"cpu": get_num_cpus(), "gpu": 0})
    study = tmp_path / "ctrlc"
    proc = subprocess.Popen([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (
            (study / "manifest.json").exists() and trained_by_trial(study, True).get("rot-s0", 0) >= 1):
        time.sleep(0.3)
    assert proc.poll() is None, "the study ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "ablation: study ctrlc stopped with 3 planned trial(s) unfinished" in err, err[-3000:]
    assert "rerun the same command to resume" in err and "finished; next" not in out
    assert "Tuner.restore" not in out + err and "Failed to fetch metrics" not in out + err
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["invocations"][-1]["outcome"] == "stopped with 3 unfinished"
    assert not (study / "driver.pid").exists() and len(rows_by_trial(study)["rot-s0"]) >= 1  # kept


def test_a_driver_killed_while_fine_tunes_wait_for_their_rotation_run_resumes(tmp_path):
    """Killed while the pretrained fine-tunes wait on a running rotation trial (nothing else to run): the rerun
    continues the rotation from its checkpoint, then runs the fine-tunes from its final weights."""
    spec = write_spec(tmp_path / "w.yaml", name="wait", seeds=[0], init=["pretrained"], freeze=[4, 0],
                      pretrain={"epochs": 4}, finetune={"epochs": 1})
    study = tmp_path / "wait"
    proc = start_driver(spec, tmp_path)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (
            (study / "manifest.json").exists() and trained_by_trial(study, True).get("rot-s0", 0) >= 1):
        time.sleep(0.3)
    assert proc.poll() is None, "the study ended before it could be killed"
    kill_driver(proc)
    at_kill = trained_by_trial(study, True)
    assert 1 <= at_kill["rot-s0"] < 4 and not any(at_kill[t] for t in at_kill if t != "rot-s0")
    rerun = subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(tmp_path)],
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {s["state"] for s in trial_states(study)} == {"finished"}
    assert trained_by_trial(study)["rot-s0"] <= 5  # at most the epoch running at the kill again
    for trial, rows in rows_by_trial(study).items():
        if trial != "rot-s0":
            assert rows[0]["pretrained_digest"] == backbone_digest(study, "rot-s0"), trial
