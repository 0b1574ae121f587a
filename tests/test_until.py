"""A spec's `until:` block end to end: what it refuses, what the planner adds for the seeds it decides, decisions
rebuilt from the trials' files (a tighter target adds seeds, a looser one trains nothing), and a driver
SIGKILLed while a cell waits for its next seed resuming to the same decisions and tables, nothing retrained."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import write_spec
from helpers import kill_driver, start_driver, sweep, trained_by_trial, trial_dirs, wait_for

from ablation.cli import main
from ablation.study.decisions import effects, plan_study
from ablation.study.planner import plan, trial_dir
from ablation.study.spec import load_spec

UNTIL = {"halfwidth": 1.0, "max_seeds": 6, "effects": "init"}


@pytest.mark.parametrize("until, message", [
    ({**UNTIL, "halfwidth": 0}, "until: halfwidth=0 must be a number of points > 0"),
    ({**UNTIL, "halfwidth": -1.5}, "until: halfwidth=-1.5 must be a number of points > 0"),
    ({**UNTIL, "max_seeds": 1}, "until: max_seeds=1 must be an integer >= the first round's 2 seeds"),
    ({**UNTIL, "effects": "stem"}, "until: effects='stem' is not an axis this spec varies; choose one of"),
    ({**UNTIL, "effects": "lr"}, "until: effects='lr' is not an axis this spec varies"),
    ({**UNTIL, "metric": "val_acc"}, "until: metric='val_acc' is not one of final_test_acc, best_test_acc"),
    ({**UNTIL, "metric": "test_acc_at_best_val"}, "metric=test_acc_at_best_val needs validation data; set val_split"),
    ({**UNTIL, "halfwith": 1}, "unknown key 'halfwith'"),
    ([1.0], "until: must be a mapping"),
])
def test_bad_until_blocks_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, until, message):
    spec = write_spec(tmp_path / "s.yaml", until=until)
    assert main(["sweep", str(spec), "--storage", str(tmp_path / "studies")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "studies").exists()


def test_a_first_round_of_one_seed_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", seeds=[0], until=UNTIL)
    assert main(["sweep", str(spec), "--storage", str(tmp_path / "studies")]) == 2
    assert "the first round needs at least 2 seeds" in capsys.readouterr().err


def test_extra_seeds_plan_only_that_cells_trials_and_the_rotation_runs_they_need(tmp_path):
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", until=UNTIL)))
    first = plan(spec, tmp_path)
    plain = load_spec(str(write_spec(tmp_path / "p.yaml")))
    assert [t.key for t in first] == [t.key for t in plan(plain, tmp_path)]  # the block changes no trial
    assert {(t.group, t.variant) for t in first if t.config.stage == "finetune"} == {
        (g, v) for g in ("freeze=4", "freeze=0") for v in ("pretrained", "random")}
    grown = plan(spec, tmp_path, extra={"freeze=0": 2})
    new = sorted(t.name for t in grown if t.key not in {t.key for t in first})
    assert new == sorted(["rot-s2", "rot-s3", "ft-pretrained-f0-s2", "ft-random-f0-s2", "ft-pretrained-f0-s3",
                          "ft-random-f0-s3"])


def _finish(study, trial, test_acc: float) -> None:
    """A trial's files as a finished run leaves them (its epoch rows; the last one's test_acc is its score)."""
    location = trial_dir(study, trial)
    location.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": e, "test_acc": test_acc, "test_loss": 1.0, "epoch_time_s": 1.0}
            for e in range(1, trial.config.epochs + 1)]
    (location / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_decisions_come_from_the_files_tighter_targets_add_seeds_looser_ones_train_nothing(tmp_path):
    """First round of 3 seeds: freeze 4's differences agree (sd 0.1 point), freeze 0's do not (sd ~3): Stein's
    rule gives freeze 4 no seed more and freeze 0 the seeds its sd asks for, up to max_seeds; the decision is
    made again, the same, from the files alone; a looser target then plans none, a tighter one more."""
    path = write_spec(tmp_path / "s.yaml", seeds=[0, 1, 2], until=UNTIL)
    spec = load_spec(str(path))
    study = tmp_path / "study"
    diffs = {"freeze=4": [2.0, 2.1, 2.2], "freeze=0": [1.0, 4.0, -2.0]}
    for t in plan(spec, study):
        if t.config.stage == "finetune":
            d = diffs[t.group][t.config.seed] if t.variant == "pretrained" else 0.0
            _finish(study, t, 0.5 + d / 100)
    trials, _, assessed = plan_study(spec, study)
    by = {e.group: e for e in effects(spec, study, trials)}
    assert {e.group: e for e in assessed} == by  # what decided the seeds: the grown plan adds no result yet
    assert by["freeze=4"].reason == "target met" and by["freeze=4"].seeds == 3
    assert by["freeze=0"].needed > 6 and by["freeze=0"].seeds == 6 and by["freeze=0"].reason == "waiting for seeds"
    added = {t.name for t in trials} - {t.name for t in plan(spec, study)}
    assert added == {f"{kind}-s{s}" for s in (3, 4, 5) for kind in ("rot", "ft-pretrained-f0", "ft-random-f0")}
    assert plan_study(spec, study)[0] == trials  # rebuilt from the files: the same trials

    loose = load_spec(str(path), {"until": yaml.safe_dump({**UNTIL, "halfwidth": 50.0})})
    assert {t.key for t in plan_study(loose, study)[0]} == {t.key for t in plan(spec, study)}  # nothing more
    tight = load_spec(str(path), {"until": yaml.safe_dump({**UNTIL, "max_seeds": 8})})
    more = {t.name for t in plan_study(tight, study)[0]} - {t.name for t in trials}
    assert more == {f"{kind}-s{s}" for s in (6, 7) for kind in ("rot", "ft-pretrained-f0", "ft-random-f0")}


@pytest.mark.slow  # three sweeps
def test_a_driver_killed_while_a_cell_waits_for_its_next_seed_resumes_to_the_same_decisions(tmp_path):
    """seeds 0-1 first, max 3, a target no spread meets: each cell gets seed 2. The driver is SIGKILLed as the
    sweep log says the decision was made; the rerun plans the same trials, trains only what was not finished,
    and its tables equal those of the same study run without a kill."""
    over = dict(freeze=[4], until={**UNTIL, "halfwidth": 0.001, "max_seeds": 3})
    ref = write_spec(tmp_path / "ref.yaml", name="ref", **over)
    assert sweep(ref, tmp_path).returncode == 0
    spec = write_spec(tmp_path / "k.yaml", name="k", **over)
    study = tmp_path / "k"
    proc = start_driver(spec, tmp_path)
    log = study / "logs" / "run001.log"
    wait_for(lambda: log.exists() and "seeds    freeze=4" in log.read_text(), proc, "the decision's log line")
    kill_driver(proc)
    at_kill = json.loads((study / "manifest.json").read_text())["invocations"][-1]["planned"]
    assert len(at_kill) == 9  # 2 seeds x (rot + 2 fine-tunes), and seed 2's three, recorded as decided
    done = sweep(spec, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(json.loads((study / "manifest.json").read_text())["invocations"][-1]["planned"]) == sorted(at_kill)
    trained = trained_by_trial(study)
    assert set(trained) == set(trial_dirs(tmp_path / "ref")) and all(n <= 3 for n in trained.values()), trained
    for name in ("ref", "k"):
        assert main(["report", str(tmp_path / name)]) == 0
    for table in ("precision", "pretraining_effect", "finetune_partial"):
        assert (study / "report" / "tables" / f"{table}.csv").read_text() == \
            (tmp_path / "ref" / "report" / "tables" / f"{table}.csv").read_text(), table
    assert "until freeze=4: pretrained - random: n 3 of 3 seeds planned" in _status(study)


def _status(study) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ablation.cli", "status", str(study)], capture_output=True,
                          text=True).stdout


def test_with_a_tune_block_the_chosen_configuration_gets_the_extra_seeds(tmp_path):
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", seeds=[0, 1, 2], val_split=16, until=UNTIL,
                                    tune={"space": {"finetune.lr": [0.01, 0.1]}, "search": "grid"})))
    choices = {cell: {"values": {"lr": 0.1}} for cell in ("ft-pretrained-f4", "ft-random-f4", "ft-pretrained-f0",
                                                          "ft-random-f0")}
    trials = plan(spec, tmp_path, choices, extra={"freeze=4": 2})
    chosen = {(t.config.freeze, t.config.init, t.config.seed) for t in trials if t.chosen}
    assert chosen == {(f, i, s) for f in (4, 0) for i in ("pretrained", "random") for s in range(3)} | {
        (4, i, s) for i in ("pretrained", "random") for s in (3, 4)}
    extra = [t for t in trials if t.config.seed >= 3]
    assert all(t.config.lr == 0.1 and not t.search for t in extra if t.config.stage == "finetune")
    assert {t.group for t in extra if t.config.stage == "finetune"} == {"freeze=4"}
    assert not any(t.group for t in trials if t.search and not t.chosen)  # the search is not an effect


def test_plan_forecasts_seeds_trials_and_time_from_a_pilot(tmp_path, capsys):
    """A pilot (here a published folder: tables/trials.csv) holding the spec's first-round trials by key: the
    forecast states each effect's sd, the fixed-n and Stein seeds, and what the whole study would train."""
    import pandas as pd

    path = write_spec(tmp_path / "s.yaml", seeds=[0, 1, 2], until=UNTIL)
    spec = load_spec(str(path))
    diffs = {"freeze=4": [2.0, 2.1, 2.2], "freeze=0": [1.0, 4.0, -2.0]}
    rows = [{"key": t.key, "state": "finished", "epochs_done": t.config.epochs, "wall_time_s": 2.0 * t.config.epochs,
             "final_test_acc": 0.5 + (diffs[t.group][t.config.seed] / 100 if t.variant == "pretrained" else 0)}
            for t in plan(spec, tmp_path)]
    (tmp_path / "pilot" / "tables").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tmp_path / "pilot" / "tables" / "trials.csv", index=False)
    assert main(["plan", str(path), "--from", str(tmp_path / "pilot")]) == 0
    out = capsys.readouterr().out.splitlines()
    line = {w.split()[0]: w.split() for w in out if w.startswith("freeze=")}
    sd0 = float(pd.Series(diffs["freeze=0"]).std())
    assert line["freeze=0"][5] == f"{sd0:.2f}" and line["freeze=0"][-2:] == ["6", "(max_seeds)"]
    assert line["freeze=4"][-1] == "3" and line["freeze=4"][-2] == "3"  # Stein asks for no more
    assert out[-1].startswith("in all: 24 trials (15 in the first round, 9 more: freeze=0: +3 (3, 4, 5))")
    assert "48 epochs; about 1.6 min of slot time" in out[-1]  # 24 trials x 2 epochs x the pilot's 2 s each


@pytest.mark.parametrize("args, message", [
    ([], "has no until: block; give --halfwidth H"),
    (["--halfwidth", "0"], "halfwidth=0.0 must be a number of points > 0"),
    (["--halfwidth", "1", "--from", "nowhere"], "--from nowhere: no such folder"),
])
def test_plan_refuses_bad_input_in_one_line(tmp_path, capsys, args, message):
    assert main(["plan", str(write_spec(tmp_path / "s.yaml")), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # a sweep of 13 trials
def test_with_a_tune_block_searching_every_first_round_seed_the_choice_gets_its_extra_seeds(tmp_path):
    """The first round's chosen trials are search trials that ran before any choice was known: the cell's seeds
    are decided when the search ends, and the extra seed's rotation run and both inits' choices train."""
    spec = write_spec(tmp_path / "t.yaml", name="t", freeze=[4], val_split=16,
                      tune={"space": {"finetune.lr": [0.01, 0.05]}, "search": "grid", "seeds": [0, 1]},
                      until={**UNTIL, "halfwidth": 0.001, "max_seeds": 3})
    done = sweep(spec, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = trained_by_trial(tmp_path / "t")
    assert len(trained) == 13 and all(n == 2 for n in trained.values()), trained  # 3 rot, 8 search, 2 extra
    extra = sorted(t for t in trained if t.endswith("-s2"))  # each init's own choice of lr
    assert len(extra) == 3 and extra[0].startswith("ft-pretrained-f4-lr=") and extra[1].startswith(
        "ft-random-f4-lr=") and extra[2] == "rot-s2", extra
    assert "until freeze=4: pretrained - random: n 3 of 3 seeds planned" in _status(tmp_path / "t")
