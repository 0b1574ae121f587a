"""The tune block: its parsing, the configurations it draws, the choice per cell, the planner's search and chosen
trials, the searcher that plans a choice when its cell's search is done, and ASHA per cell (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from ablation.driver.launch import DependencySearcher, SearchScheduler
from ablation.errors import ConfigError
from ablation.study.planner import plan
from ablation.study.spec import parse_spec
from ablation.study.tuning import choose, configurations, parse_tune

SPACE = {"finetune.lr": "loguniform(0.001, 0.1)", "finetune.weight_decay": [0.0001, 0.0005]}


def spec(tune=None, **over):
    raw = {"name": "s", "dataset": "fashion-mnist", "val_split": 100, "seeds": [0, 1], "freeze": [4],
           "tune": {"space": SPACE, "samples": 3, **(tune or {})}, **over}
    return parse_spec(raw, where="t")


def block(**over):
    return parse_tune({"space": SPACE, "samples": 3, **over}, [0, 1], "t")


@pytest.mark.parametrize("tune, message", [
    ({"metric": "test_acc"}, "metric='test_acc' (that would select on the test set); use val_acc"),
    ({"space": {"pretrain.lr": [0.1]}}, "only fine-tuning keys are searched"),
    ({"space": {"finetune.freeze": [0, 4]}}, "freeze is not a nuisance hyperparameter"),
    ({"space": {"finetune.lr": "lognormal(1, 2)"}}, "is not a list of values or uniform(lo, hi)"),
    ({"space": {"finetune.lr": "loguniform(0.1"}}, "was cut at its comma; quote it"),
    ({"space": {"finetune.lr": "loguniform(0, 0.1)"}}, "needs two numbers lo < hi (loguniform: lo > 0)"),
    ({"search": "grid"}, "search=grid needs a list of values for lr"),
    ({"search": "optuna"}, "search=optuna is not supported"),
    ({"seeds": [7]}, "must be a non-empty list of distinct seeds of the study's [0, 1]"),
    ({"seeds": [0, 0]}, "must be a non-empty list of distinct seeds of the study's [0, 1]"),
    ({"seeds": [0, 1], "scheduler": "asha"}, "would stop a configuration on one seed and not another"),
    ({"reduction_factor": 1}, "reduction_factor must be a number > 1"),
    ({"patience": 3}, "unknown key 'patience'"),
    ({"samples": 1_000_000_000}, "samples=1000000000 is more than 1000 configurations per cell"),  # drawn silently
])
def test_a_bad_tune_block_is_one_line_naming_the_problem(tune, message):
    with pytest.raises(ConfigError) as err:
        spec(tune)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_searched_key_cannot_also_be_fixed_or_an_axis_and_a_search_needs_a_validation_split():
    with pytest.raises(ConfigError, match="lr is searched and also fixed"):
        spec(finetune={"lr": 0.01})
    with pytest.raises(ConfigError, match="lr is searched and also fixed in finetune: or an axis"):
        spec(finetune_lr=[0.01, 0.1])
    with pytest.raises(ConfigError, match="set val_split: N"):
        plan(spec(val_split=0), Path("/tmp/s"))


def test_configurations_are_drawn_the_same_every_time_and_more_samples_keep_the_first():
    three, five = configurations(block()), configurations(block(samples=5))
    assert three == configurations(block()) and five[:3] == three and len(five) == 5
    assert all(0.001 <= c["lr"] <= 0.1 and c["weight_decay"] in (0.0001, 0.0005) for c in five)
    assert all(c["lr"] == float(f"{c['lr']:.3g}") for c in five)  # readable: 3 significant digits
    assert configurations(block(seed=1)) != three
    grid = parse_tune({"space": {"lr": [0.01, 0.1], "weight_decay": [0.0, 0.001]}, "search": "grid"}, [0], "t")
    assert configurations(grid) == [{"lr": 0.01, "weight_decay": 0.0}, {"lr": 0.01, "weight_decay": 0.001},
                                    {"lr": 0.1, "weight_decay": 0.0}, {"lr": 0.1, "weight_decay": 0.001}]


def run(lr, seed, vals, state="finished"):
    return {"values": {"lr": lr}, "seed": seed, "rows": [{"val_acc": v, "val_loss": 1 - v} for v in vals],
            "state": state}


def test_the_choice_is_the_best_validation_epoch_averaged_over_search_seeds_among_finished_configs():
    b = parse_tune({"space": {"lr": [0.01, 0.1, 0.3]}, "seeds": [0, 1]}, [0, 1], "t")
    search = [run(0.01, 0, [0.5, 0.7]), run(0.01, 1, [0.6, 0.5]),  # mean of best epochs: 0.65
              run(0.1, 0, [0.8, 0.75]), run(0.1, 1, [0.4, 0.6]),  # 0.70: chosen
              run(0.3, 0, [0.95], "stopped early"), run(0.3, 1, [0.9, 0.9])]  # stopped on one seed: no candidate
    choice = choose(b, search)
    assert choice["values"] == {"lr": 0.1} and choice["score"] == pytest.approx(0.7)
    assert (choice["tried"], choice["stopped"], choice["failed"]) == (3, 1, 0)
    assert choose(b, search[:-1] + [run(0.3, 1, [0.9], "running")]) is None  # a search trial still to finish
    by_loss = parse_tune({"space": {"lr": [0.01, 0.1, 0.3]}, "seeds": [0, 1], "metric": "val_loss"}, [0, 1], "t")
    assert choose(by_loss, search)["values"] == {"lr": 0.1}  # lowest loss: 1 - best accuracy here
    assert choose(b, [run(0.01, 0, [0.5], "failed"), run(0.01, 1, [0.5], "failed")])["values"] is None


def test_the_planner_runs_each_cells_configurations_on_the_search_seeds_then_its_choice_on_every_seed():
    s = spec()
    trials = plan(s, Path("/tmp/s"))
    rotations = [t for t in trials if t.config.stage == "rotation"]
    search = [t for t in trials if t.search]
    assert [t.name for t in rotations] == ["rot-s0", "rot-s1"]  # seed 1's rotation is wanted for its chosen runs
    assert len(search) == 2 * 3 and {t.config.seed for t in search} == {0}
    assert {t.search for t in search} == {"ft-pretrained-f4", "ft-random-f4"} and not any(t.chosen for t in trials)
    first = search[0]
    values = {"lr": first.config.lr, "weight_decay": first.config.weight_decay}
    chosen = plan(s, Path("/tmp/s"), {first.search: {"values": values}})
    picked = [t for t in chosen if t.chosen]
    assert [t.config.seed for t in picked] == [0, 1]
    assert picked[0].key == first.key and picked[0].search == first.search  # the search trial itself, marked
    assert picked[1].depends_on == rotations[1].key and picked[1].config.lr == first.config.lr
    assert len(chosen) == len(trials) + 1


def test_the_searcher_plans_a_cells_choice_once_its_last_search_trial_is_done():
    s = spec({"samples": 2})
    trials = [t for t in plan(s, Path("/tmp/s")) if t.search != "ft-pretrained-f4"]
    search = [t for t in trials if t.search]
    later = [t for t in plan(s, Path("/tmp/s"), {search[0].search: {"values": {
        "lr": search[1].config.lr, "weight_decay": search[1].config.weight_decay}}}) if t.chosen and not t.search]
    asked = []

    def expand(cell, failed):
        asked.append((cell, set(failed)))
        return later

    searcher = DependencySearcher(trials, set(), lambda t: {"name": t.name},
                                  {search[0].search: {t.key for t in search}}, expand, {search[0].key})
    offered = [searcher.suggest(f"t{i}") for i in range(len(trials))]
    assert all(isinstance(o, dict) for o in offered)
    by_name = {o["trial"]["name"]: f"t{i}" for i, o in enumerate(offered)}
    assert searcher.suggest("x") is None  # nothing waits, but the search may plan more: not FINISHED
    searcher.on_trial_complete(by_name[search[0].name], result={"epoch": 1, "epochs": 2})  # stopped by ASHA
    assert not asked
    searcher.on_trial_complete(by_name[search[1].name], result={"epoch": 2, "epochs": 2})
    assert asked == [(search[0].search, set())]
    assert searcher.suggest("y")["trial"]["name"] == later[0].name == f"ft-random-f4-lr={search[1].config.lr:g}-s1"
    for key in [k for k in by_name.values() if k not in (by_name[search[0].name], by_name[search[1].name])]:
        searcher.on_trial_complete(key, result={"epoch": 2, "epochs": 2})
    searcher.on_trial_complete("y", result={"epoch": 2, "epochs": 2})
    assert searcher.suggest("z") == Searcher.FINISHED


def test_a_search_whose_rotation_failed_ends_its_cell_instead_of_hanging():
    s = spec({"samples": 2})
    trials = plan(s, Path("/tmp/s"))
    cell = "ft-pretrained-f4"
    keys = {t.key for t in trials if t.search == cell}
    asked = []
    searcher = DependencySearcher(trials, set(), lambda t: {"name": t.name}, {cell: keys},
                                  lambda c, failed: asked.append((c, failed)) or [], set())
    first = searcher.suggest("rot0")
    assert first["trial"]["name"] == "rot-s0"
    searcher.on_trial_complete("rot0", error=True)  # every pretrained search trial depends on it
    assert asked and asked[0][0] == cell and asked[0][1] >= keys
    assert all("rot-s0 failed" in searcher.skipped[k] for k in keys)


class FakeTrial:
    def __init__(self, key, cell, epochs=4):
        self.config = {"trial": {"key": key, "search": cell}}
        self.epochs = epochs


def result(epoch, acc, epochs=4):
    return {"epoch": epoch, "epochs": epochs, "val_acc": acc}


def test_asha_stops_a_poor_configuration_within_its_cell_only_and_records_the_stop():
    b = parse_tune({"space": {"lr": [0.01, 0.1]}, "scheduler": "asha", "reduction_factor": 2}, [0], "t")
    stops = []
    sched = SearchScheduler(b, {}, lambda key, epoch: stops.append((key, epoch)))
    good, poor, other = FakeTrial("a", "cell1"), FakeTrial("b", "cell1"), FakeTrial("c", "cell2")
    assert sched.on_trial_result(None, good, result(1, 0.9)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, other, result(1, 0.1)) == TrialScheduler.CONTINUE  # its own cell's rung
    assert sched.on_trial_result(None, poor, result(1, 0.2)) == TrialScheduler.STOP
    assert stops == [("b", 1)]
    grid = FakeTrial("d", "")  # not a search trial: never stopped
    assert sched.on_trial_result(None, grid, result(1, 0.0)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, good, result(4, 0.1)) == TrialScheduler.CONTINUE  # its last epoch


def test_a_resumed_search_replays_the_epochs_reported_before_so_asha_decides_as_it_would_have():
    b = parse_tune({"space": {"lr": [0.01, 0.1]}, "scheduler": "asha", "reduction_factor": 2}, [0], "t")
    history = {"a": ("cell1", [result(1, 0.9), result(2, 0.9)])}
    stops = []
    sched = SearchScheduler(b, history, lambda key, epoch: stops.append((key, epoch)))
    assert sched.on_trial_result(None, FakeTrial("b", "cell1"), result(1, 0.2)) == TrialScheduler.STOP
    fresh = SearchScheduler(b, {}, lambda key, epoch: None)  # without the replay it would have gone on
    assert fresh.on_trial_result(None, FakeTrial("b", "cell1"), result(1, 0.2)) == TrialScheduler.CONTINUE


def test_a_search_trial_that_ends_unfinished_still_ends_its_cells_wait_instead_of_hanging():
    s = spec({"samples": 1})
    trials = [t for t in plan(s, Path("/tmp/s")) if t.config.stage == "finetune" and t.config.init == "random"]
    asked = []
    searcher = DependencySearcher(trials, set(), lambda t: {"name": t.name}, {trials[0].search: {trials[0].key}},
                                  lambda cell, failed: asked.append(cell) or [], set())
    assert isinstance(searcher.suggest("t0"), dict)
    searcher.on_trial_complete("t0", result=None)  # no result: e.g. it returned without reporting an epoch
    assert asked == [trials[0].search] and searcher.suggest("t1") == Searcher.FINISHED


@pytest.mark.parametrize("grace", [2, 3])
def test_a_grace_period_not_below_the_epochs_is_refused(grace):
    """ASHA stops a trial at a rung after grace_period epochs: with grace_period >= epochs it stops nothing,
    which was accepted without a word."""
    with pytest.raises(ConfigError, match=f"grace_period={grace} is not below the search trials' 2 epochs"):
        plan(spec({"samples": 2, "scheduler": "asha", "grace_period": grace}, finetune={"epochs": 2}), "/nowhere")
    assert plan(spec({"samples": 2, "scheduler": "asha", "grace_period": 1}, finetune={"epochs": 2}), "/nowhere")


def test_the_asha_history_of_a_resumed_search_holds_its_done_trials_too(tmp_path):
    import json

    from ablation.study.decisions import search_history
    from ablation.study.planner import trial_dir
    from ablation.trial.rundir import METRICS_FILE

    s = spec({"samples": 2, "scheduler": "asha"})
    search = [t for t in plan(s, tmp_path / "s") if t.search]
    done = trial_dir(tmp_path / "s", search[0])
    done.mkdir(parents=True)
    (done / METRICS_FILE).write_text("".join(json.dumps({"epoch": e, "epochs": 2, "val_acc": 0.5}) + "\n"
                                             for e in (1, 2)))  # finished: not among the trials still to train
    history = search_history(s, tmp_path / "s")
    assert list(history) == [search[0].key] and history[search[0].key][0] == search[0].search
    assert [r["epoch"] for r in history[search[0].key][1]] == [1, 2]


def test_a_cell_searched_again_loses_its_old_choice_in_the_record(tmp_path):
    from ablation.study.records import add_trials

    manifest = {"invocations": [{"planned": [], "added": []}], "trials": {},
                "choices": {"ft-random-f4": {"values": {"lr": 0.1}}, "ft-random-f0": {"values": {"lr": 0.01}}}}
    add_trials(tmp_path, manifest, [], {"ft-random-f0": {"values": {"lr": 0.03}}},
               reopened={"ft-random-f4", "ft-random-f0"})
    assert manifest["choices"] == {"ft-random-f0": {"values": {"lr": 0.03}}}
