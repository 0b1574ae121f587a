"""A study grows without retraining: more seeds, a new axis, a narrower spec (trials outside it kept and
listed), through the real Ray; another data copy under the same name is refused before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import write_spec
from helpers import trained_by_trial
from test_report import read_csv

from ablation.driver.sweep import run_study
from ablation.report import write_report
from ablation.study.records import trial_records

pytestmark = pytest.mark.slow

SPEC = dict(name="grow", seeds=[0], freeze=[4], pretrain={"epochs": 1}, finetune={"epochs": 1})


def test_adding_seeds_and_an_axis_trains_only_new_configs(tmp_path, ray_session):
    spec = write_spec(tmp_path / "g.yaml", **SPEC)
    study = tmp_path / "grow"
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    first = trained_by_trial(study)
    assert sorted(first) == ["ft-pretrained-f4-s0", "ft-random-f4-s0", "rot-s0"] and set(first.values()) == {1}

    assert run_study(str(spec), storage=str(tmp_path), overrides={"seeds": "[0, 1]"}) == 0
    second = trained_by_trial(study)
    assert len(second) == 6 and sum(second.values()) == 6  # seed 1's 3 trials trained, seed 0's reused as they were

    axis = {"seeds": "[0, 1]", "axes": "{finetune.weight_decay: [0.0005, 0.005]}"}
    assert run_study(str(spec), storage=str(tmp_path), overrides=axis) == 0
    third = trained_by_trial(study)
    assert len(third) == 10 and sum(third.values()) == 10  # only the 4 fine-tunes at weight decay 0.005 are new
    manifest = json.loads((study / "manifest.json").read_text())
    assert [len(r["added"]) for r in manifest["invocations"]] == [3, 3, 4]
    assert [r["spec"].get("seeds") for r in manifest["invocations"]] == [[0], [0, 1], [0, 1]]

    write_report(study)
    tables = study / "report" / "tables"
    rows = read_csv(tables / "finetune_partial.csv")
    assert {(r["init"], float(r["weight_decay"])) for r in rows} == {
        (i, wd) for i in ("pretrained", "random") for wd in (0.0005, 0.005)}
    assert {r["n seeds"] for r in rows} == {"2"}  # cells never pooled: n = the number of seeds
    assert {r["n pairs"] for r in read_csv(tables / "pretraining_effect.csv")} == {"2"}

    assert run_study(str(spec), storage=str(tmp_path)) == 0  # back to seed 0 only: nothing trains
    assert sum(trained_by_trial(study, everything=True).values()) == 10
    records = trial_records(study)
    outside = {r["name"] for r in records if not r["current"]}
    assert outside == {"rot-s1", "ft-pretrained-f4-s1", "ft-random-f4-s1", "ft-pretrained-f4-weight_decay=0.005-s0",
                       "ft-pretrained-f4-weight_decay=0.005-s1", "ft-random-f4-weight_decay=0.005-s0",
                       "ft-random-f4-weight_decay=0.005-s1"}
    assert all(r["state"] == "finished" for r in records)
    status = subprocess.run([sys.executable, "-m", "ablation.cli", "status", str(study)], capture_output=True,
                            text=True, check=True).stdout
    assert "7 trial(s) outside the current spec" in status and "ft-random-f4-weight_decay=0.005-s1" in status
    text = write_report(study).read_text()
    assert "7 trial(s) of earlier specs lie outside the current spec" in text
    assert {r["n seeds"] for r in read_csv(tables / "finetune_partial.csv")} == {"1"}
    assert "outside the current spec" in text.split("## Trials")[-1]


def test_another_data_copy_under_the_same_name_is_refused_and_nothing_is_written(tmp_path, ray_session):
    spec = write_spec(tmp_path / "g.yaml", **{**SPEC, "init": ["random"]})
    assert run_study(str(spec), storage=str(tmp_path)) == 0
    manifest_path = tmp_path / "grow" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["data"] = {"fashion-mnist": "0123456789abcdef"}  # as if the study had trained on another copy
    manifest_path.write_text(json.dumps(manifest))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "grow").rglob("*"))
    result = subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", str(spec), "--storage", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "fashion-mnist data changed" in result.stderr and "--fresh" in result.stderr
    assert manifest_path.read_text() == json.dumps(manifest)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "grow").rglob("*")) == before
