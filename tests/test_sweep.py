"""Sweeps through the real Ray: the reference study's grid completes, pretrained trials use their own seed's
backbone, a crashed trial is retried from its checkpoint, Ctrl-C stops a study that the same command resumes.
(A SIGKILLed driver: tests/test_faults.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EPOCHS, REFERENCE, copy_study, write_spec
from helpers import (backbone_digest, rows_by_trial, start_driver, sweep, trained_by_trial, trained_so_far, trial_dirs,
                     trial_states, wait_for)

from ablation.cli import main
from ablation.driver.sweep import run_study
from ablation.errors import UserError
from ablation.trial.rundir import read_rows, trained_log
from ablation.trial.train import CRASH_AT_EPOCH

pytestmark = pytest.mark.slow


def test_the_grid_completes_with_every_trial_finished(reference_study):
    states = trial_states(reference_study)
    assert len(states) == 2 + 2 * 2 * 2  # a rotation run per seed + seeds x init x freeze
    assert {s["state"] for s in states} == {"finished"}
    for trial, rows in rows_by_trial(reference_study).items():
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)), trial
    assert set(trained_by_trial(reference_study).values()) == {EPOCHS}  # nothing trained twice
    # one thread per trial (resources.cpu = 1), though the workers' environment says OMP_NUM_THREADS=2
    assert {r["threads"] for rows in rows_by_trial(reference_study).values() for r in rows} == {1}
    manifest = json.loads((reference_study / "manifest.json").read_text())
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


def test_a_pretrained_fine_tune_starts_as_soon_as_its_own_rotation_run_is_done(reference_study):
    """One Tune run per invocation: pretrained trials do not wait for every random-init trial to finish."""
    times = epoch_times(reference_study)
    first_pretrained = min(t[0] for trial, t in times.items() if "-pretrained-" in trial)
    last_random = max(t[-1] for trial, t in times.items() if "-random-" in trial)
    assert first_pretrained < last_random
    for trial, t in times.items():  # and never before its own rotation run ended
        if "-pretrained-" in trial:
            assert t[0] > times[f"rot-s{trial.rsplit('-s', 1)[1]}"][-1], trial


def test_the_console_shows_events_and_the_log_file_every_epoch(reference_study):
    log = (reference_study / "logs" / "run001.log").read_text()
    assert log.count("started ") == log.count("finished ") == 10
    assert log.count(" epoch ") == 10 * EPOCHS and "10/10 trials done" in log


def test_pretrained_trials_loaded_their_own_seeds_backbone(reference_study):
    rotation = {seed: backbone_digest(reference_study, f"rot-s{seed}") for seed in (0, 1)}
    assert rotation[0] != rotation[1]
    for trial, rows in rows_by_trial(reference_study).items():
        if "-pretrained-" in trial:
            seed = int(trial.rsplit("-s", 1)[1])
            assert rows[0]["pretrained_digest"] == rotation[seed], trial
        elif trial.startswith("ft-"):
            assert rows[0]["pretrained_digest"] == ""


def test_each_trial_keeps_its_selection_epochs_weights_and_export_loads_into_plain_torchvision(
        tmp_path, reference_study, capsys):
    """The weights behind a trial's number were deleted (only the newest two checkpoints stayed). Now its
    selection epoch's checkpoint stays too, and `ablation export` writes it as a torchvision resnet18 state
    dict that reproduces the test accuracy recorded for that epoch."""
    import torch
    import torchvision

    from ablation.trial import data as D
    from ablation.trial.config import TrialConfig
    from ablation.trial.rundir import selection_epoch

    dirs = trial_dirs(reference_study)
    for trial, d in dirs.items():
        best, metric = selection_epoch(read_rows(d))
        assert metric == "test_acc"  # no validation split here
        kept = {p.name for p in (d / "checkpoints").iterdir()}
        assert kept == {f"epoch_{e:04d}" for e in (best, EPOCHS - 1, EPOCHS)}, trial
    early = [t for t, d in dirs.items() if t.startswith("ft-") and selection_epoch(read_rows(d))[0] < EPOCHS - 1]
    name = (early or ["ft-pretrained-f0-s0"])[0]  # one whose weights only the new rule kept, where there is one
    rows = read_rows(dirs[name])
    best, _ = selection_epoch(rows)
    out = tmp_path / "weights.pt"
    assert main(["export", str(reference_study), name, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"wrote {out}: trial {name}, epoch {best} (its best test_acc (selected on the test set))")
    assert "torchvision.models.resnet18(num_classes=10)" in said
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(torch.load(out, weights_only=True))  # strict: every key, no other
    model.eval()
    cfg = TrialConfig.from_dict(json.loads((dirs[name] / "run.json").read_text())["config"])
    data = D.load_data(cfg)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (data.mean, data.std))
    with torch.no_grad():
        correct = sum((model(D.normalize(x, mean, std)).argmax(1) == y).sum().item()
                      for x, y in zip(data.test.x.split(cfg.eval_batch_size), data.test.y.split(cfg.eval_batch_size)))
    assert correct / len(data.test.y) == next(r["test_acc"] for r in rows if r["epoch"] == best)


def test_a_finished_study_rerun_trains_nothing_and_needs_no_tune_logs(tmp_path, reference_study):
    """Each invocation is a fresh Tune run; the study's own records decide what is done. A finished study
    reruns without training anything, also when its Tune experiment logs are torn (by a kill while Tune
    wrote them) or gone."""
    study = copy_study(reference_study, tmp_path / "ref")
    spec = write_spec(tmp_path / "ref.yaml", name="ref", **REFERENCE)
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    assert set(trained_by_trial(study).values()) == {EPOCHS}
    tune_dir = study / "tune"
    assert list(tune_dir.glob("run001/*/result.json"))
    (next(tune_dir.glob("run001/tuner.pkl"))).write_bytes(b"")  # torn
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    shutil.rmtree(tune_dir)
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    assert {s["state"] for s in trial_states(study)} == {"finished"}
    assert set(trained_by_trial(study).values()) == {EPOCHS}


def test_torn_metrics_are_named_by_status_and_report_and_a_rerun_rewrites_them_training_nothing(
        tmp_path, reference_study, capsys):
    """metrics.jsonl is written whole, so a line that does not parse is damage. A trial torn to its first
    line showed as "not started", one torn in the middle reported two epochs as if finished, and the report
    dropped or misread them without a word. Now both are named on stderr, in status and atop report.md; the
    rerun rewrites the rows from each trial's checkpoint and trains nothing."""
    study = copy_study(reference_study, tmp_path / "ref")
    dirs = trial_dirs(study)
    first, middle = dirs["ft-random-f0-s0"] / "metrics.jsonl", dirs["ft-pretrained-f4-s1"] / "metrics.jsonl"
    first.write_text(first.read_text()[:40])
    lines = middle.read_text().splitlines(keepends=True)
    middle.write_text(lines[0] + lines[1][:30] + "\n" + lines[2])
    assert main(["status", str(study)]) == 0
    out, err = capsys.readouterr()
    for trial, line in (("ft-random-f0-s0", 1), ("ft-pretrained-f4-s1", 2)):
        assert f"ablation: warning: trial {trial}: metrics.jsonl line {line} is not JSON: rerun the sweep" in err
        assert re.search(rf"^{trial} .* interrupted \(metrics.jsonl line {line} is not JSON", out, re.M), out
    assert "8 finished, 2 interrupted" in out
    assert main(["report", str(study)]) == 0
    err = capsys.readouterr().err
    report = (study / "report" / "report.md").read_text()
    for trial, line in (("ft-random-f0-s0", 1), ("ft-pretrained-f4-s1", 2)):
        assert f"ablation: warning: trial {trial}: metrics.jsonl line {line} is not JSON" in err
        assert f"> **Warning**: trial {trial}: metrics.jsonl line {line} is not JSON" in report
    spec = write_spec(tmp_path / "ref.yaml", name="ref", **REFERENCE)
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    assert set(trained_by_trial(study).values()) == {EPOCHS}  # rewritten from checkpoints, nothing retrained
    def measured(study: Path) -> dict:  # each row but its end-work time (the checkpoint is saved before it)
        return {t: [{k: v for k, v in r.items() if k != "epoch_overhead_s"} for r in rows]
                for t, rows in rows_by_trial(study).items()}

    assert measured(study) == measured(reference_study)
    assert main(["status", str(study)]) == 0
    out, err = capsys.readouterr()
    assert "10 finished" in out and "warning" not in err


def test_a_trial_failing_every_try_is_a_line_per_try_and_one_crashing_once_resumes_from_its_checkpoint(
        tmp_path, reference_study):
    """The driver is a process of its own, whose Ray's workers see the test switch ABLATION_TEST_CRASH_AT_EPOCH.
    A trial that crashes in its first epoch on every try printed Ray's ~40-line traceback at each try and
    pointed into Ray's temp dir; now each try is one line naming the exception and the study's copy of the
    traceback. Rerun, it crashes once mid-way through epoch 2 and resumes from epoch 1's checkpoint."""
    spec = write_spec(tmp_path / "c.yaml", name="crash", **{**REFERENCE, "seeds": [0], "init": ["random"],
                      "freeze": [0], "max_failures": 1})
    failed = sweep(spec, tmp_path, env={**os.environ, CRASH_AT_EPOCH: "1"})
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "Traceback" not in failed.stdout + failed.stderr
    error = tmp_path / "crash" / "tune" / "run001" / "ft-random-f0-s0" / "error.txt"
    said = f"InjectedFault: {CRASH_AT_EPOCH}=1: injected fault mid-epoch (test switch) (traceback: {error})"
    assert failed.stdout.count(f"retrying ft-random-f0-s0 from its last finished epoch: ablation.trial.train.{said}") == 1
    assert failed.stdout.count(f"FAILED   ft-random-f0-s0 after its retries: ablation.trial.train.{said}") == 1
    assert "InjectedFault" in error.read_text()
    assert failed.stderr.splitlines()[-1].startswith("ablation: 1 trial(s) failed after retries: ft-random-f0-s0")
    result = sweep(spec, tmp_path, env={**os.environ, CRASH_AT_EPOCH: "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr and "retrying ft-random-f0-s0" in result.stdout
    trial_dir = trial_dirs(tmp_path / "crash")["ft-random-f0-s0"]
    rows = read_rows(trial_dir)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert len(trained_log(trial_dir)) == EPOCHS  # epoch 1 came from the checkpoint, not retrained
    clean = read_rows(trial_dirs(reference_study)["ft-random-f0-s0"])  # the same trial, never crashed
    assert [r["test_loss"] for r in rows] == [r["test_loss"] for r in clean]  # resumed run is exact


def test_a_reader_that_closes_the_console_pipe_decides_no_trials_fate(tmp_path, ray_session):
    """`ablation sweep ... | head`: the BrokenPipeError of the next console write, raised inside Tune's callback,
    marked a finished trial crashed, retried it, and ended the driver "by an exception". Now the console goes
    quiet and the sweep runs to its end."""
    spec = write_spec(tmp_path / "p.yaml", name="pipe", seeds=[0], init=["pretrained"], freeze=[0],
                      pretrain={"epochs": 1}, finetune={"epochs": 1})
    proc = start_driver(spec, tmp_path, stdout=subprocess.PIPE)
    assert proc.stdout.readline().startswith("study pipe: 2 trials in the spec")
    proc.stdout.close()  # what `head -1` does after its line
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    assert "Error" not in proc.stderr.read()
    assert {s["state"] for s in trial_states(tmp_path / "pipe")} == {"finished"}
    assert set(trained_by_trial(tmp_path / "pipe").values()) == {1}  # nothing retried
    (invocation,) = json.loads((tmp_path / "pipe" / "manifest.json").read_text())["invocations"]
    assert invocation["outcome"] == "finished"
    log = (tmp_path / "pipe" / "logs" / "run001.log").read_text()
    assert "finished ft-pretrained-f0-s0" in log and "retrying" not in log


def test_the_committed_stem_spec_shrunk_sweeps_and_reports_with_its_stem_column_and_figure(tmp_path, ray_session):
    """experiments/cifar_stem.yaml as committed, shrunk by overrides to 64 Fashion-MNIST images and an epoch a
    stage: its report has the stem (a word-valued axis, which crashed the report) as a column and a figure."""
    import csv

    spec = Path(__file__).resolve().parents[1] / "experiments" / "cifar_stem.yaml"
    shrink = ["dataset=fashion-mnist", "data_dir=", "train_subset=64", "test_subset=32", "batch_size=32",
              "eval_batch_size=64", "seeds=[0]", "freeze=[0]", "pretrain.epochs=1", "finetune.epochs=1",
              "resources={cpu: 1, gpu: 0}"]
    assert main(["sweep", str(spec), "--storage", str(tmp_path), *shrink]) == 0
    assert main(["report", str(tmp_path / "cifar_stem")]) == 0
    report = tmp_path / "cifar_stem" / "report"
    with open(report / "tables" / "finetune_cells.csv") as fh:
        cells = list(csv.DictReader(fh))
    assert sorted((c["init"], c["stem"]) for c in cells) == [
        ("pretrained", "cifar"), ("pretrained", "imagenet"), ("random", "cifar"), ("random", "imagenet")]
    assert (report / "figures" / "accuracy_by_stem.png").stat().st_size > 20_000
    assert "figures/accuracy_by_stem.png" in (report / "report.md").read_text()


def test_gpu_request_on_a_cpu_machine_runs_on_cpu_after_one_warning(tmp_path, ray_session, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    spec = write_spec(tmp_path / "g.yaml", name="gpu", seeds=[0], init=["random"], freeze=[5],
                      finetune={"epochs": 1}, resources={"cpu": 1, "gpu": 0.5})
    assert main(["sweep", str(spec), "--storage", str(tmp_path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ablation: warning:")]
    assert len(warnings) == 1 and "no GPU" in warnings[0]
    assert {s["state"] for s in trial_states(tmp_path / "gpu")} == {"finished"}


def test_more_cpus_per_trial_than_a_node_has_is_refused_before_anything_is_written(tmp_path, ray_session):
    """Tune would keep every trial pending, silently (the test run's Ray has 2 CPUs)."""
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


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_a_study_whose_fine_tunes_wait_and_the_same_command_resumes_it(tmp_path, ray_session, sig,
                                                                                      code):
    """Tune ends its run quietly on SIGINT; the sweep must not call the study finished, must not pass on Tune's
    Tuner.restore advice (rerunning the command resumes) nor its "Failed to fetch metrics" list of the trials
    that never started (one slot, every CPU Ray sees: the random-init fine-tune waits in Tune's queue, the
    pretrained one on its rotation run), and records the stop. The rerun continues the rotation run from its
    checkpoint, then runs the fine-tunes, the pretrained one from the rotation run's final weights. SIGTERM (a
    batch scheduler's preemption, a container stop) does the same, with exit code 143."""
    from ray._private.utils import get_num_cpus  # what the driver's local Ray will have

    spec = write_spec(tmp_path / "c.yaml", name="ctrlc", seeds=[0], init=["pretrained", "random"], freeze=[4],
                      pretrain={"epochs": 4}, finetune={"epochs": 1}, resources={"cpu": get_num_cpus(), "gpu": 0})
    study = tmp_path / "ctrlc"
    proc = start_driver(spec, tmp_path, stdout=subprocess.PIPE)
    wait_for(lambda: trained_so_far(study) >= 1, proc, "the rotation run's first epoch")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-3000:]
    assert "ablation: study ctrlc stopped with 3 planned trial(s) unfinished" in err, err[-3000:]
    assert "rerun the same command to resume" in err and "finished; next" not in out
    assert "Tuner.restore" not in out + err and "Failed to fetch metrics" not in out + err
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["invocations"][-1]["outcome"] == "stopped with 3 unfinished"
    assert not (study / "driver.pid").exists() and len(rows_by_trial(study)["rot-s0"]) >= 1  # kept
    stopped, kept = trained_by_trial(study, True), len(rows_by_trial(study)["rot-s0"])
    assert 1 <= stopped["rot-s0"] < 4 and not any(n for t, n in stopped.items() if t != "rot-s0")

    one_slot = {"resources": "{cpu: 2, gpu: 0}"}  # the test run's Ray has 2 CPUs: one slot again
    assert run_study(str(spec), storage=str(tmp_path), overrides=one_slot) == 0
    assert {s["state"] for s in trial_states(study)} == {"finished"}
    assert trained_by_trial(study)["rot-s0"] == stopped["rot-s0"] + 4 - kept  # from its checkpoint: only the rest
    pretrained = rows_by_trial(study)["ft-pretrained-f4-s0"]
    assert pretrained[0]["pretrained_digest"] == backbone_digest(study, "rot-s0")
