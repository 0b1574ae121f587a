"""Fault injection: a study whose driver is SIGKILLed at seeded random moments (and whose newest
checkpoint is then corrupted) ends with exactly the metrics and weights of an uninterrupted run, and
retrains at most one epoch per trial running at each kill (plus one for the corrupted checkpoint)."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest

from ablation.checkpoint import checkpoint_dirs, load_checkpoint
from ablation.models import weights_digest
from ablation.sweep import run_study
from conftest import write_spec
from test_sweep import kill_driver, rows_by_trial, start_driver, trained_by_trial, trial_dirs, trial_states

pytestmark = pytest.mark.slow

EPOCHS = 3
SLOTS = 2  # trials running at once (2 CPUs, 1 per trial)


def outcome(study):
    """Per trial: final metrics row and a digest of the final weights."""
    out = {}
    for trial, rows in rows_by_trial(study).items():
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)), trial
        final = rows[-1]
        weights = load_checkpoint(checkpoint_dirs(trial_dirs(study)[trial])[0])["model"]
        out[trial] = ({k: final[k] for k in ("epoch", "train_loss", "test_loss", "test_acc")}, weights_digest(weights))
    return out


def test_sigkills_at_random_moments_lose_nothing_and_repeat_nothing(tmp_path, ray_session):
    # long enough for 5 kills to land before the end (a kill at 4-20 s, Ray's start-up included)
    over = dict(seeds=[0, 1], freeze=[4, 0], train_subset=384, pretrain={"epochs": EPOCHS}, finetune={"epochs": EPOCHS})
    assert run_study(str(write_spec(tmp_path / "clean.yaml", name="clean", **over)), storage=str(tmp_path)) == 0
    expected = outcome(tmp_path / "clean")

    spec = write_spec(tmp_path / "killed.yaml", name="killed", **over)
    study = tmp_path / "killed"
    rng = random.Random(20261128)
    kills, corrupted = 0, 0
    while kills < 5:
        proc = start_driver(spec, tmp_path)
        time.sleep(rng.uniform(4.0, 20.0))
        if proc.poll() is not None:
            break  # the study finished before this kill
        kill_driver(proc)
        kills += 1
        if kills == 3:  # also tear the newest checkpoint of an unfinished trial
            unfinished = [s["name"] for s in trial_states(study) if s["state"] != "finished"
                          and checkpoint_dirs(trial_dirs(study)[s["name"]])]
            if unfinished:
                trial = unfinished[0]
                newest = checkpoint_dirs(trial_dirs(study)[trial])[0]
                state = newest / "state.pt"
                state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])
                corrupted = 1
    final = subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(tmp_path)],
                           capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    assert kills >= 5, f"only {kills} kills landed before the study finished; lengthen the study"
    assert outcome(study) == expected  # same metrics, bit-identical weights
    trained = sum(trained_by_trial(study).values())
    assert trained - EPOCHS * len(expected) <= SLOTS * kills + corrupted
