"""Fault injection: the reference study run again with its driver SIGKILLed at seeded random moments (each a
random fraction of an epoch after 1-3 more epochs landed, the first while only the rotation runs train and
every fine-tune waits on them), and the newest checkpoint of an unfinished trial then torn, ends with
exactly the metrics and weights of the uninterrupted reference run; a trial finished at a kill never trains
again, and each kill costs at most the epoch in progress of each trial running (plus one epoch for the torn
checkpoint)."""

from __future__ import annotations

import random
import time

import pytest
from conftest import EPOCHS, REFERENCE, write_spec
from helpers import (assert_resumed_from_checkpoints, finished_trials, kill_driver, outcome, rows_by_trial,
                     start_driver, sweep, trained_by_trial, trained_so_far, trial_dirs, trial_states, wait_for)

from ablation.trial.checkpoint import checkpoint_dirs

pytestmark = pytest.mark.slow

SLOTS = 2  # trials running at once (the local Ray's 2 CPUs, 1 per trial)
KILLS = 5


def test_sigkills_at_random_moments_lose_nothing_and_repeat_nothing(tmp_path, reference_study):
    expected = outcome(reference_study)
    spec = write_spec(tmp_path / "killed.yaml", name="killed", **REFERENCE)
    study = tmp_path / "killed"
    rng = random.Random(20261128)
    kills, torn, done_at_kill = 0, None, {}
    while kills < KILLS:
        proc = start_driver(spec, tmp_path)
        target = trained_so_far(study) + (1 if kills == 0 else rng.randint(1, 3))
        wait_for(lambda: trained_so_far(study) >= target, proc, f"epoch {target} landed")
        time.sleep(rng.uniform(0.0, 1.5))  # into the next epoch
        if proc.poll() is not None:
            break  # the study finished before this kill
        kill_driver(proc)
        kills += 1
        for trial, n in finished_trials(study).items():
            done_at_kill.setdefault(trial, n)
        if kills == 1:  # killed while the fine-tunes wait on the rotation runs (the dependency scheduler's state)
            at_kill = trained_by_trial(study, True)
            assert {t for t, n in at_kill.items() if n} <= {"rot-s0", "rot-s1"}, at_kill
            assert all(at_kill[t] < EPOCHS for t in ("rot-s0", "rot-s1")), at_kill
        if kills == 3:  # also tear the newest checkpoint of an unfinished trial
            unfinished = [s["name"] for s in trial_states(study) if s["state"] != "finished"
                          and checkpoint_dirs(trial_dirs(study)[s["name"]])]
            if unfinished:
                torn = unfinished[0]
                state = checkpoint_dirs(trial_dirs(study)[torn])[0] / "state.pt"
                state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])
    final = sweep(spec, tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    assert kills == KILLS, f"only {kills} kills landed before the study finished; lengthen the study"
    assert {s["state"] for s in trial_states(study)} == {"finished"}
    for trial, rows in rows_by_trial(study).items():
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)), trial
    assert outcome(study) == expected  # same metrics, bit-identical weights (each fine-tune its own backbone)
    trained = trained_by_trial(study)
    assert {t: trained[t] for t in done_at_kill} == done_at_kill  # finished at a kill: not one more epoch
    assert sum(trained.values()) - EPOCHS * len(expected) <= SLOTS * kills + (torn is not None)
    assert_resumed_from_checkpoints(study, torn)  # each trial, at each kill, lost at most its epoch in progress
