"""The per-trial checks of the classic bugs: frozen groups stay bit-equal, a pretrained trial loads the weights
its rotation trial ended with, a random-init trial loads nothing. Tiny real runs prove what train.py records
(and that a broken freeze is caught); hand-made records prove how report/checks.py judges it; a fixture study
with doctored rows proves that report.md warns at the top.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny

from ablation.report.checks import failures, trial_checks, warnings

FIXTURE = Path(__file__).parent / "fixtures" / "study_tiny"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fashion):
    """A 2-epoch rotation run and a 2-epoch freeze-4 fine-tune from it, as run dirs (rundir.run)."""
    from ablation.trial import rundir

    root = tmp_path_factory.mktemp("runs")
    rot_cfg = tiny(stage="rotation")
    rundir.run(rot_cfg, root / "rot", log=lambda _: None, data=fashion)
    ft_cfg = tiny(stage="finetune", init="pretrained", pretrained_from=str(root / "rot"), freeze=4)
    rundir.run(ft_cfg, root / "ft", log=lambda _: None, data=fashion)
    return ft_cfg, rundir.read_rows(root / "rot"), rundir.read_rows(root / "ft")


def test_a_pretrained_trial_records_loading_the_weights_its_rotation_run_ended_with(runs):
    _, rot, ft = runs
    assert "backbone_digest" not in rot[0] and len(rot[-1]["backbone_digest"]) == 16  # the last epoch only
    assert {r["pretrained_digest"] for r in ft} == {rot[-1]["backbone_digest"]}
    records = {"r": {"key": "r", "name": "rot", "config": {"stage": "rotation"}, "rows": rot},
               "f": {"key": "f", "name": "ft", "config": {"stage": "finetune", "init": "pretrained", "freeze": 4},
                     "depends_on": "r", "rows": ft}}
    assert trial_checks(records["f"], records) == "backbone pass; frozen pass"
    assert trial_checks(records["r"], records) == "backbone recorded"


def test_a_frozen_fine_tune_records_its_frozen_groups_intact_every_epoch_also_after_resume(runs, fashion):
    from ablation.trial.train import train

    cfg, _, ft = runs
    assert [r["frozen_intact"] for r in ft] == [True, True]
    states = []
    history = train(cfg, lambda row, state: states.append(state), data=fashion)
    resumed = train(cfg, lambda row, state: None, resume=states[0], data=fashion)  # build recomputes the reference
    assert [r["frozen_intact"] for r in history] == [r["frozen_intact"] for r in resumed] == [True, True]
    assert "frozen_intact" not in train(tiny(stage="finetune", epochs=1), lambda *_: None, data=fashion)[0]


def test_a_frozen_batchnorm_left_in_train_mode_is_caught(runs, fashion, monkeypatch):
    """The classic bug: model.train() on the whole model moves the frozen groups' BN running statistics
    (their weights get no gradient); the check must see it."""
    import ablation.trial.train as T

    cfg, _, _ = runs
    monkeypatch.setattr(T, "set_train_mode", lambda model, freeze: model.train())
    history = T.train(cfg.replace(epochs=1), lambda row, state: None, data=fashion)
    assert history[0]["frozen_intact"] is False


def record(key, stage="finetune", init="random", freeze=0, depends_on=None, **row):
    rows = [{"epoch": e, "pretrained_digest": "" if init == "random" else "aaaa", **row} for e in (1, 2)]
    return {"key": key, "name": key, "config": {"stage": stage, "init": init, "freeze": freeze},
            "depends_on": depends_on, "rows": rows}


def by_key(*records):
    return {r["key"]: r for r in records}


@pytest.mark.parametrize("backbone, expected", [
    ("aaaa", "backbone pass"),
    ("bbbb", "backbone FAIL (loaded aaaa, rot ended with bbbb)"),
    (None, "backbone unchecked (rot recorded no backbone digest)")])  # trained before the digest was recorded
def test_a_pretrained_trial_passes_only_when_it_loaded_its_rotation_trials_final_weights(backbone, expected):
    rot = record("rot", stage="rotation")
    if backbone:
        rot["rows"][-1]["backbone_digest"] = backbone
    ft = record("ft", init="pretrained", depends_on="rot")
    assert trial_checks(ft, by_key(rot, ft)) == expected
    assert trial_checks(rot, by_key(rot, ft)) == ("backbone recorded" if backbone else "")
    assert bool(failures(trial_checks(ft, by_key(rot, ft)))) == (backbone == "bbbb")


def test_a_random_init_trial_that_loaded_a_backbone_fails():
    ok, bad = record("ok"), record("bad", pretrained_digest="cccc")
    assert trial_checks(ok, by_key(ok)) == "loaded nothing pass"
    assert trial_checks(bad, by_key(bad)) == "loaded nothing FAIL (random init loaded cccc)"
    assert trial_checks(record("old", pretrained_digest=None), {}) == "loaded nothing pass"  # no digest recorded


def test_frozen_groups_that_moved_in_any_epoch_fail():
    moved = record("m", freeze=4, frozen_intact=True)
    moved["rows"][1]["frozen_intact"] = False
    assert trial_checks(moved, by_key(moved)) == "loaded nothing pass; frozen FAIL (frozen groups moved in epoch 2)"
    assert trial_checks(record("old", freeze=4), {}) == "loaded nothing pass; frozen unchecked (not recorded)"
    assert trial_checks(record("f0", frozen_intact=False), {}) == "loaded nothing pass"  # freeze 0: nothing frozen
    assert trial_checks({**record("new", freeze=4), "rows": []}, {}) == ""  # no epoch yet: nothing to check


def trial_dir(study: Path, name: str) -> Path:
    manifest = json.loads((study / "manifest.json").read_text())
    (entry,) = [t for t in manifest["trials"].values() if t["name"] == name]
    return study / "trials" / entry["dir"]


def rewrite_rows(study: Path, name: str, change) -> None:
    """Edit a fixture trial's metrics.jsonl in place: change(rows) mutates the parsed rows."""
    path = trial_dir(study, name) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    change(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_md_warns_at_the_top_for_each_trial_that_failed_a_check(tmp_path):
    from ablation.report import write_report
    from ablation.trial.rundir import read_rows

    study = tmp_path / "tiny"
    shutil.copytree(FIXTURE, study)
    text = write_report(study).read_text()
    assert "Warning" not in text and "backbone unchecked (rot-s0 recorded no backbone digest)" in text  # old records

    loaded = {name: read_rows(trial_dir(study, name))[0]["pretrained_digest"]
              for name in ("ft-pretrained-f0-s0", "ft-pretrained-f4-s1", "ft-pretrained-f0-s1")}
    rewrite_rows(study, "rot-s0", lambda rows: rows[-1].update(backbone_digest=loaded["ft-pretrained-f0-s0"]))
    rewrite_rows(study, "rot-s1", lambda rows: rows[-1].update(backbone_digest="0123456789abcdef"))  # not loaded
    rewrite_rows(study, "ft-pretrained-f4-s0", lambda rows: [r.update(frozen_intact=r["epoch"] == 1) for r in rows])
    lines = write_report(study).read_text().splitlines()
    top = [line for line in lines[:lines.index("- Study: **tiny**")] if line]
    assert top == [
        "# Ablation report: tiny",
        "> **Warning**: trial ft-pretrained-f4-s0 failed a check: frozen FAIL (frozen groups moved in epoch 2)",
        f"> **Warning**: trial ft-pretrained-f4-s1 failed a check: backbone FAIL (loaded "
        f"{loaded['ft-pretrained-f4-s1']}, rot-s1 ended with 0123456789abcdef)",
        f"> **Warning**: trial ft-pretrained-f0-s1 failed a check: backbone FAIL (loaded "
        f"{loaded['ft-pretrained-f0-s1']}, rot-s1 ended with 0123456789abcdef)"]
    code = "0.1.0+gf5fec7c9ce17"  # the fixture's invocation
    assert f"| ft-pretrained-f0-s0 | 458fee7903 | 18.75 | 18.75 | 3.61 | 0 | ? | {code} | backbone pass |" in lines
    assert f"| rot-s0 | 530b748e2a | 27.73 | 27.73 | 4.82 | 0 | ? | {code} | backbone recorded |" in lines


def test_warnings_come_from_the_trials_frame():
    import pandas as pd

    failed = "backbone pass; frozen FAIL (frozen groups moved in epoch 1)"
    trials = pd.DataFrame({"trial": ["a", "b", "c"], "checks": ["loaded nothing pass", None, failed]})
    assert warnings(trials) == ["> **Warning**: trial c failed a check: frozen FAIL (frozen groups moved in epoch 1)"]
