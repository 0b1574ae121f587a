"""Every shipped study spec parses and plans (solo-learn's rule: a smoke test over every config file), and
axes are data: any trial key, for both stages or one, from the spec or from one override."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from ablation.errors import ConfigError
from ablation.study.tuning import configurations
from ablation.study.planner import plan
from ablation.study.spec import FINETUNE, PRETRAIN, load_spec, parse_spec
from ablation.trial.config import TrialConfig

SPECS = sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml"))
BASE = {"name": "s", "dataset": "fashion-mnist", "seeds": [0, 1]}


def planned(tmp_path, **over):
    return plan(parse_spec({**BASE, **over}, "spec"), tmp_path / "s")


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_plans_a_consistent_grid(path, tmp_path):
    spec = load_spec(str(path))
    assert spec.name == path.stem
    trials = plan(spec, tmp_path / spec.name)
    size = {scope: math.prod(len(a.values) for a in spec.axes if a.scope in ("", scope)) for scope in (PRETRAIN,
                                                                                                       FINETUNE)}
    inits = next(a.values for a in spec.axes if a.key == "init")
    pre_only = math.prod(len(a.values) for a in spec.axes if a.scope == PRETRAIN)
    n_ft = size[FINETUNE] // len(inits) * sum(pre_only if i == "pretrained" else 1 for i in inits)
    if spec.tune:  # each cell's configurations on the search seeds; the choices come once the search is done
        seeds = next(a.values for a in spec.axes if a.key == "seed")
        n_ft = n_ft // len(seeds) * len(spec.tune.seeds) * len(configurations(spec.tune))
    rotation = {t.key: t for t in trials if t.config.stage == "rotation"}
    assert len(trials) - len(rotation) == n_ft and len({t.key for t in trials}) == len(trials)
    assert len(rotation) == (size[PRETRAIN] if "pretrained" in inits else 0)
    for t in trials:
        assert Path(t.config.data_dir).is_absolute()
        if t.config.stage == "finetune" and t.config.init == "pretrained":
            source = rotation[t.depends_on]
            assert Path(t.config.pretrained_from).name == source.dirname and source.config.seed == t.config.seed
            assert source.config.stem == t.config.stem
        else:
            assert t.depends_on is None


def test_report_spec_is_the_reports_protocol():
    trials = plan(load_spec(str(SPECS[0].parent / "report.yaml")), Path("/tmp/x"))
    ft = [t.config for t in trials if t.config.stage == "finetune"]
    assert {c.freeze for c in ft} == {4, 0} and {c.epochs for c in ft} == {20}
    assert {(c.lr, c.momentum, c.weight_decay, c.batch_size, c.stem) for c in ft} == {(0.01, 0.9, 5e-4, 128, "imagenet")}
    assert len({c.seed for c in ft}) == 3 and len(trials) == 3 + 3 * 2 * 2
    assert {c.augment for c in (t.config for t in trials)} == {"on"}  # the assignment cropped + flipped in both


def test_yaml_on_off_reach_on_off_choices_as_words(tmp_path):
    """YAML 1.1 reads a bare `off` as False: a key whose choices are on/off takes it as the word; others refuse."""
    trials = plan(load_spec(str(SPECS[0].parent / "demo.yaml")), tmp_path / "demo")
    assert {t.config.augment for t in trials if t.config.stage == "rotation"} == {"off"}
    assert {t.config.augment for t in trials if t.config.stage == "finetune"} == {"on"}
    assert TrialConfig.from_dict({"channels_last": True}).channels_last == "on"
    with pytest.raises(ConfigError, match="stem must be str, got False"):
        TrialConfig.from_dict({"stem": False})


def test_a_trial_is_its_config_whatever_the_spec_around_it(tmp_path):
    """Growing a spec (more seeds, a new axis whose first value is the default) keeps every old trial's key and
    directory; a changed fixed value gives new keys; paths do not enter the key."""
    small = {t.key: t.dirname for t in planned(tmp_path, seeds=[0])}
    grown = planned(tmp_path, seeds=[0, 1], axes={"finetune.weight_decay": [0.0005, 0.005]})
    assert small.items() <= {t.key: t.dirname for t in grown}.items()
    assert len(grown) == 2 + 2 * (2 * 2 * 2)  # rotation per seed + seeds x init x freeze x weight decay
    moved = planned(tmp_path, seeds=[0], data_dir="/elsewhere")
    assert {t.key for t in moved} == set(small)
    assert not {t.key for t in planned(tmp_path, seeds=[0], finetune={"epochs": 3})} & {
        k for k, d in small.items() if d.startswith("ft-")}


def test_readable_names_carry_the_non_default_axis_values(tmp_path):
    names = {t.name for t in planned(tmp_path, seeds=[0], freeze=[4],
                                     axes={"finetune.weight_decay": [0.0005, 0.005], "pretrain.epochs": [20, 5]})}
    assert {"rot-s0", "rot-epochs=5-s0", "ft-random-f4-s0", "ft-random-f4-weight_decay=0.005-s0",
            "ft-pretrained-f4-s0", "ft-pretrained-f4-pretrain.epochs=5-s0",
            "ft-pretrained-f4-weight_decay=0.005-pretrain.epochs=5-s0"} <= names


def test_a_pretraining_axis_fans_out_rotation_runs_and_their_dependents_only(tmp_path):
    trials = planned(tmp_path, seeds=[0, 1], freeze=[4], axes={"pretrain.epochs": [2, 3]})
    rotation = {t.key: t.config for t in trials if t.config.stage == "rotation"}
    assert sorted((c.seed, c.epochs) for c in rotation.values()) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    pretrained = [t for t in trials if t.config.init == "pretrained" and t.config.stage == "finetune"]
    random = [t for t in trials if t.config.init == "random" and t.config.stage == "finetune"]
    assert len(pretrained) == 4 and len(random) == 2  # random init has nothing to fan out over
    for t in pretrained:
        source = rotation[t.depends_on]
        assert source.seed == t.config.seed and dict(t.pretrain)["pretrain.epochs"] == source.epochs
        assert t.config.epochs == TrialConfig.epochs  # the fine-tune keeps its own epochs


def test_an_axis_for_both_stages_reaches_both_and_one_stage_keys_reach_their_stage(tmp_path):
    trials = planned(tmp_path, seeds=[0], freeze=[4], axes={"label_smoothing": [0.0, 0.1], "rotation_mode":
                                                             ["random1", "all4"]})
    rotation = [t.config for t in trials if t.config.stage == "rotation"]
    assert sorted((c.label_smoothing, c.rotation_mode) for c in rotation) == [
        (0.0, "all4"), (0.0, "random1"), (0.1, "all4"), (0.1, "random1")]
    random = [t.config for t in trials if t.config.stage == "finetune" and t.config.init == "random"]
    assert sorted(c.label_smoothing for c in random) == [0.0, 0.1]  # rotation_mode does not fan out fine-tunes
    lpc = planned(tmp_path, seeds=[0], freeze=[4], axes={"labels_per_class": [10, 20]})
    assert {t.config.labels_per_class for t in lpc if t.config.stage == "rotation"} == {0}


def test_axes_from_one_override_merge_with_the_specs_own(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, "axes": {"finetune.momentum": [0.9, 0.8]}}))
    spec = load_spec(str(path), {"axes": "{finetune.weight_decay: [0.0005, 0.005]}"})
    assert {a.label for a in spec.axes} >= {"finetune.momentum", "finetune.weight_decay"}


@pytest.mark.parametrize("over, message", [
    ({"axes": {"finetune.colour": [1]}}, "unknown key 'finetune.colour'"),
    ({"axes": {"finetune.lr": [0.1, -1]}}, "finetune.lr: lr=-1.0 is out of range"),
    ({"axes": {"finetune.lr": []}}, "must list at least one value"),
    ({"axes": {"pretrain.freeze": [1]}}, "freeze applies to stage=finetune only"),
    ({"finetune": {"compile_mode": "reduce-overhead"}}, "compile_mode=reduce-overhead is read only with compile=true"),
    ({"axes": {"seed": [1]}}, "seeds are an axis of their own"),
    ({"axes": {"elsewhere.lr": [1]}}, "must be a trial key, pretrain.<key> or finetune.<key>"),
    ({"axes": [1, 2]}, "axes must be a mapping"),
    ({"axes": {"finetune.lr": [0.1]}, "finetune_lr": [0.2]}, "is an axis twice"),
    ({"axes": {"weight_decay": [0.1, 0.2]}, "finetune": {"weight_decay": 0.3}}, "fixed here and also an axis"),
    ({"finetune": {"freeze": 2}}, "fixed here and also an axis"),
    ({"axes": {"finetune.weight_decay": [0.0005, 0.0005]}}, "lists a value twice"),
    ({"axes": {"finetune.weight_decay": [0.0005, "5e-4"]}}, "lists a value twice: [0.0005, '5e-4'] (as "
                                                            "weight_decay values: [0.0005, 0.0005])"),  # one value
    ({"freeze": [4, "4"]}, "freeze lists a value twice"),
])
def test_bad_axes_are_one_line_naming_the_key(tmp_path, over, message):
    with pytest.raises(ConfigError) as err:
        planned(tmp_path, **over)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_key_added_later_at_its_default_leaves_earlier_trial_keys_unchanged():
    """A study made before a key existed is still the same study: its trials are not retrained."""
    from ablation.study.planner import trial_key
    from ablation.trial.config import TrialConfig

    cfg = TrialConfig(stage="finetune", epochs=3)
    recorded_before = {k: v for k, v in cfg.to_dict().items() if k != "val_split"}  # as an older run.json has it
    assert TrialConfig.identity_of(recorded_before) == cfg.identity()
    assert trial_key(cfg, None) == trial_key(cfg.replace(val_split=0), None) != trial_key(cfg.replace(val_split=5), None)
