"""Every shipped study spec parses and plans (solo-learn's rule: a smoke test over every config file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablation.config import ConfigError, TrialConfig
from ablation.spec import plan
from ablation.sweep import load_spec

SPECS = sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_plans_a_consistent_grid(path, tmp_path):
    spec = load_spec(str(path))
    assert spec.name == path.stem
    trials = plan(spec, tmp_path / spec.name)
    axes = spec.axes
    n_ft = (len(axes["seeds"]) * len(axes["init"]) * len(axes["freeze"]) * len(axes["labels_per_class"])
            * len(axes.get("finetune_lr") or [None]) * len(axes["stem"]))
    n_rot = len(axes["seeds"]) * len(axes["stem"]) if "pretrained" in axes["init"] else 0
    assert len(trials) == n_ft + n_rot == len({t.id for t in trials})
    rotation = {t.id for t in trials if t.config.stage == "rotation"}
    for t in trials:
        assert Path(t.config.data_dir).is_absolute()
        if t.config.init == "pretrained" and t.config.stage == "finetune":
            assert t.phase == "phase2" and Path(t.config.pretrained_from).name in rotation
            assert Path(t.config.pretrained_from).name.endswith(f"-s{t.config.seed}")
        else:
            assert t.phase == "phase1"


def test_report_spec_is_the_reports_protocol():
    trials = plan(load_spec(str(SPECS[0].parent / "report.yaml")), Path("/tmp/x"))
    ft = [t.config for t in trials if t.config.stage == "finetune"]
    assert {c.freeze for c in ft} == {4, 0} and {c.epochs for c in ft} == {20}
    assert {(c.lr, c.momentum, c.weight_decay, c.batch_size, c.stem) for c in ft} == {(0.01, 0.9, 5e-4, 128, "imagenet")}
    assert len({c.seed for c in ft}) == 3
    assert {c.augment for c in (t.config for t in trials)} == {"on"}  # the assignment cropped + flipped in both


def test_yaml_on_off_reach_on_off_choices_as_words(tmp_path):
    """YAML 1.1 reads a bare `off` as False: a key whose choices are on/off takes it as the word; others refuse."""
    trials = plan(load_spec(str(SPECS[0].parent / "demo.yaml")), tmp_path / "demo")
    assert {t.config.augment for t in trials if t.config.stage == "rotation"} == {"off"}
    assert {t.config.augment for t in trials if t.config.stage == "finetune"} == {"on"}
    assert TrialConfig.from_dict({"channels_last": True}).channels_last == "on"
    with pytest.raises(ConfigError, match="stem must be str, got False"):
        TrialConfig.from_dict({"stem": False})
