"""A tuned study through the real Ray: each cell's search (ASHA within the cell), its choice on every seed, the
report at the choices, growth by a seed, and a driver killed during the search (Fashion-MNIST subsets)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import write_spec
from helpers import assert_resumed_from_checkpoints, kill_driver, start_driver, trained_by_trial, wait_for
from test_report import read_csv

from ablation.driver.sweep import run_study
from ablation.report import write_report
from ablation.study.records import trial_records

pytestmark = pytest.mark.slow

TUNE = {"space": {"finetune.lr": [0.001, 0.01, 0.1]}, "search": "grid", "scheduler": "asha", "reduction_factor": 2}


def tuned_spec(path, name, epochs=2, **over):
    return write_spec(path / f"{name}.yaml", name=name, seeds=[0], freeze=[4], val_split=64,
                      pretrain={"epochs": 1}, finetune={"epochs": epochs}, tune=TUNE, **over)


def search_states(study):
    return {r["name"]: r["state"] for r in trial_records(study) if r["search"]}


def test_each_cell_is_reported_at_its_chosen_config_and_a_new_seed_trains_only_its_chosen_runs(tmp_path, ray_session):
    spec, study = tuned_spec(tmp_path, "tuned"), tmp_path / "tuned"
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    states = search_states(study)
    assert len(states) == 2 * 3 and set(states.values()) <= {"finished", "stopped early"}
    manifest = json.loads((study / "manifest.json").read_text())
    choices = manifest["choices"]
    assert set(choices) == {"ft-pretrained-f4", "ft-random-f4"}
    assert all(c["values"]["lr"] in (0.001, 0.01, 0.1) and c["metric"] == "val_acc" for c in choices.values())
    chosen = {r["chosen"]: r for r in trial_records(study) if r["chosen"]}
    for cell, record in chosen.items():  # on the search seed, the choice is the search trial itself
        assert record["search"] == cell and record["config"]["lr"] == choices[cell]["values"]["lr"]
    status = subprocess.run([sys.executable, "-m", "ablation.cli", "status", str(study)], capture_output=True,
                            text=True, check=True).stdout
    for cell, c in choices.items():
        assert f"chosen for {cell}: lr={c['values']['lr']:g} (val_acc {c['score']:.4f})" in status
    first = trained_by_trial(study)
    assert all(r["trained"] == len(r["rows"]) for r in trial_records(study))  # no epoch trained twice

    write_report(study)
    tables = study / "report" / "tables"
    picked = {r["cell"]: float(r["lr"]) for r in read_csv(tables / "tuning_choices.csv")}
    assert picked == {cell: c["values"]["lr"] for cell, c in choices.items()}
    partial = read_csv(tables / "finetune_partial.csv")
    assert sorted(r["init"] for r in partial) == ["pretrained", "random"]  # one row per cell, not per lr
    trials_csv = read_csv(tables / "trials.csv")
    assert {"best_val_acc", "test_acc_at_best_val", "best_val_epoch"} <= set(trials_csv[0])
    epochs_csv = read_csv(tables / "epochs.csv")
    assert all(r["val_acc"] and r["val_loss"] for r in epochs_csv)
    assert (study / "report" / "figures" / "validation_by_lr.png").exists()

    assert run_study(str(spec), storage=str(tmp_path), overrides={"seeds": "[0, 1]"}) == 0
    grown = trained_by_trial(study)
    new = {r["name"]: r for r in trial_records(study) if r["name"] not in first}
    assert {(r["config"]["stage"], r["chosen"], r["config"]["seed"], r["config"]["lr"]) for r in new.values()} == {
        ("rotation", "", 1, 0.01), *(("finetune", cell, 1, c["values"]["lr"]) for cell, c in choices.items())}
    assert all(grown[name] == len(r["rows"]) for name, r in new.items())
    assert all(grown[name] == n for name, n in first.items())  # nothing of the search trained again
    assert json.loads((study / "manifest.json").read_text())["choices"] == choices


def test_a_driver_killed_during_the_search_resumes_without_retraining_a_finished_trial(tmp_path, ray_session):
    # 4 epochs: a kill that waited for a trial's second epoch lands before its last, however fast they go
    spec, study = tuned_spec(tmp_path, "killed", epochs=4), tmp_path / "killed"
    proc = start_driver(spec, tmp_path)

    def finished_and_two_epochs_in() -> bool:  # one search trial done, another with epochs to lose
        if not (study / "manifest.json").exists():
            return False
        records = trial_records(study)
        return any(r["state"] == "finished" for r in records if r["search"]) and \
            any(len(r["rows"]) == 2 for r in records if r["state"] not in ("finished", "stopped early"))

    wait_for(finished_and_two_epochs_in, proc, "a search trial finished and another two epochs in", poll=0.05)
    kill_driver(proc)
    before = {r["name"]: r["trained"] for r in trial_records(study) if r["state"] in ("finished", "stopped early")}
    assert any(name.startswith("ft-") for name in before)
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    after = {r["name"]: r for r in trial_records(study)}
    assert all(after[name]["trained"] == n for name, n in before.items())  # done before the kill: not retrained
    assert_resumed_from_checkpoints(study)  # the ones running at the kill: from their checkpoints
    assert set(search_states(study).values()) <= {"finished", "stopped early"}
    assert set(json.loads((study / "manifest.json").read_text())["choices"]) == {"ft-pretrained-f4", "ft-random-f4"}
