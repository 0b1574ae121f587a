"""A parsed Spec -> every trial it asks for, in a stable order, configs validated. No torch; Ray only where a
tune: block's configurations are sampled (tuning.py uses Tune's samplers, seeded).

Why: a trial is its config: its key is a digest of what it computes (TrialConfig.identity, plus the key of the
rotation trial a pretrained fine-tune starts from), so a study can grow and still recognise what it ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..storage import store
from ..storage.store import Location
from ..trial.config import TrialConfig
from .precision import extra_seeds
from .spec import BOTH, FINETUNE, PRETRAIN, STAGE_OF, Axis, Spec, tag
from .tuning import configurations

TRIALS_DIR = "trials"


@dataclass(frozen=True)
class Trial:
    key: str  # digest of what the trial computes: its identity
    name: str  # readable: stage, init, freeze, the axis values that differ from the defaults, seed
    config: TrialConfig
    depends_on: str | None = None  # key of the rotation trial a pretrained fine-tune starts from
    pretrain: tuple = ()  # ((pretraining axis label, value), ...) of that rotation trial
    search: str = ""  # the cell whose search this trial belongs to (tuning.py), "" for none
    chosen: str = ""  # the cell whose chosen configuration this trial runs, "" for none
    tuned: tuple = ()  # the keys the tune block searches (set on search and chosen trials)
    group: str = ""  # with an until block: the cell whose effects it measures (precision.py), "" for none
    variant: str = ""  # ... and which side of them: the effect axis's value (init: with its pretraining)

    @property
    def dirname(self) -> str:
        """Stable from the config alone (the readable name follows the spec's axes, this must not)."""
        c = self.config
        base = f"rot-s{c.seed}" if c.stage == "rotation" else f"ft-{c.init}-f{c.freeze}-s{c.seed}"
        return f"{base}-{self.key[:10]}"


def trial_key(cfg: TrialConfig, depends_on: str | None) -> str:
    identity = {**cfg.identity(), "pretrained_trial": depends_on or ""}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _grid(axes: list[Axis]) -> list[dict[Axis, Any]]:
    return [dict(zip(axes, combo)) for combo in itertools.product(*(a.values for a in axes))]


def _name(stage_part: str, seed: int, tags: list[tuple[str, Any]]) -> str:
    defaults = TrialConfig()
    shown = [tag(label, value) for label, value in tags if value != getattr(defaults, label.rpartition(".")[2])]
    return "-".join([stage_part, *shown, f"s{seed}"])


def precision_cell(spec: Spec, ft_values: dict[Axis, Any], pre_values: dict[Axis, Any]) -> tuple[str, str]:
    """(group, variant) of a fine-tuning trial under the until block: the group is every axis value but the
    seed's and the effect's (init: and the pretraining's, which only its pretrained side has); the variant is
    the effect's value (init: pretrained with its pretraining values, or random)."""
    effect = spec.effect
    everything = {**ft_values, **pre_values}
    def named(a: Axis, v: Any) -> str:  # as trial names say it: a fine-tuning key by name, pretrain.<key> in full
        return tag(a.label if a.scope == PRETRAIN else a.key, v)

    if effect.key == "init":
        init = ft_values[effect]
        group = [named(a, v) for a, v in ft_values.items() if a.key not in ("seed", "init")]
        variant = " ".join([init, *(named(a, v) for a, v in pre_values.items())])
    else:
        group = [named(a, v) for a, v in everything.items() if a.key != "seed" and a != effect]
        if effect not in everything:  # a random-init trial, when the effect is a pretraining axis: no side
            return "", ""
        variant = named(effect, everything[effect])
    return " ".join(group) or "all", variant


def plan(spec: Spec, study_dir: Location, choices: dict[str, dict] | None = None,
         extra: dict[str, int] | None = None) -> list[Trial]:
    """Every trial the spec asks for, rotation trials first, in a stable order, configs validated. With a tune
    block: each cell's search trials, and its chosen configuration on every seed for the cells in `choices`
    (cell -> tuning.choose's answer); a chosen trial that is a search trial is one trial, marked both. With an
    until block: each group's trials on the seeds beyond the first round that `extra` (group -> how many;
    precision.py decides) gives it, and the rotation trials those seeds need (shared, as every rotation trial)."""
    shared = [a for a in spec.axes if a.scope == BOTH]
    pre_axes = [a for a in spec.axes if a.scope == PRETRAIN]
    ft_axes = [a for a in spec.axes if a.scope == FINETUNE]
    untagged = {"seed", "init", "freeze"}  # in every name already
    rotations: dict[str, Trial] = {}
    finetunes: dict[str, Trial] = {}
    block = spec.tune
    searched = configurations(block) if block else [{}]
    tuned = tuple(block.keys) if block else ()
    added = extra or {}
    seed_axis = next(a for a in shared if a.key == "seed")  # the first shared axis: seeds outermost, as ever
    others = [a for a in shared if a is not seed_axis]
    more = extra_seeds(seed_axis.values, max(added.values(), default=0))

    def fanned():
        """(fine-tuning values, pretraining values, group, variant) of every fine-tune, seed by seed: the
        first round's seeds, then each group's extra ones."""
        for seed in (*seed_axis.values, *more):
            for rest in _grid(others + ft_axes):
                ft_values = {seed_axis: seed, **rest}
                for pre_values in (_grid(pre_axes) if ft_values_init(ft_values) == "pretrained" else [{}]):
                    group, variant = precision_cell(spec, ft_values, pre_values) if spec.until else ("", "")
                    if seed in seed_axis.values or added.get(group, 0) > more.index(seed):
                        yield ft_values, pre_values, {"group": group, "variant": variant}

    def ft_values_init(ft_values: dict[Axis, Any]) -> str:
        return next(v for a, v in ft_values.items() if a.key == "init")  # init always has an axis

    def config(scope: str, values: dict[Axis, Any], tid: str, extra: dict | None = None) -> TrialConfig:
        merged = {**spec.common, **spec.blocks[scope], **{a.key: v for a, v in values.items()}, **(extra or {}),
                  "stage": STAGE_OF[scope]}
        return TrialConfig.from_dict(merged, where=f"{spec.name}: trial {tid}")

    def rotation(values: dict[Axis, Any]) -> Trial:
        tags = [(a.key, v) for a, v in values.items() if a.key not in untagged]
        name = _name("rot", values_seed(values), tags)
        cfg = config(PRETRAIN, values, name)
        key = trial_key(cfg, None)
        if key not in rotations:
            rotations[key] = Trial(key, name, cfg)
        return rotations[key]

    def values_seed(values: dict[Axis, Any]) -> int:
        return next((v for a, v in values.items() if a.key == "seed"), TrialConfig.seed)

    def finetune(ft_values: dict[Axis, Any], pre_values: dict[Axis, Any], cell: str, nuisance: dict[str, Any],
                 role: dict[str, Any]) -> None:
        init = next(v for a, v in ft_values.items() if a.key == "init")
        tags = [(a.key, v) for a, v in ft_values.items() if a.key not in untagged]
        tags += [(a.label, v) for a, v in pre_values.items()] + list(nuisance.items())
        freeze = next((v for a, v in ft_values.items() if a.key == "freeze"), TrialConfig.freeze)
        name = _name(f"ft-{init}-f{freeze}", values_seed(ft_values), tags)
        source = None
        if init == "pretrained":
            source = rotation({**{a: v for a, v in ft_values.items() if a.scope == BOTH}, **pre_values})
        extra = {"pretrained_from": str(store.child(study_dir, TRIALS_DIR, source.dirname))} if source else {}
        cfg = config(FINETUNE, ft_values, name, {**extra, **nuisance})
        key = trial_key(cfg, source.key if source else None)
        if key in finetunes:  # the chosen configuration on a search seed: the search trial itself
            finetunes[key] = dataclasses.replace(finetunes[key], **role)
            return
        finetunes[key] = Trial(key, name, cfg, source.key if source else None,
                               tuple((a.label, v) for a, v in pre_values.items()), **role)

    for ft_values, pre_values, side in fanned():
        if not block:
            finetune(ft_values, pre_values, "", {}, side)
            continue
        cell = cell_name(ft_values, pre_values)
        if values_seed(ft_values) in block.seeds:
            for nuisance in searched:
                finetune(ft_values, pre_values, cell, nuisance, {"search": cell, "tuned": tuned})
        elif ft_values_init(ft_values) == "pretrained":  # every seed's rotation trial is wanted before the choice
            rotation({**{a: v for a, v in ft_values.items() if a.scope == BOTH}, **pre_values})
    for ft_values, pre_values, side in fanned() if block else ():  # chosen configurations, after every search
        choice = (choices or {}).get(cell_name(ft_values, pre_values)) or {}
        if choice.get("values"):
            finetune(ft_values, pre_values, "", choice["values"],
                     {"chosen": cell_name(ft_values, pre_values), "tuned": tuned, **side})
    trials = list(rotations.values()) + list(finetunes.values())
    _check_unique(spec, trials)
    if spec.until and spec.until.metric == "test_acc_at_best_val" and any(
            not t.config.val_split for t in trials if t.group):
        raise ConfigError(f"{spec.name}: until: metric=test_acc_at_best_val needs validation data; set val_split: N "
                          f"(e.g. 5000 training images held out), or use metric: final_test_acc")
    if block and any(not t.config.val_split for t in trials if t.search):
        raise ConfigError(f"{spec.name}: tune: the search selects on validation data; set val_split: N (e.g. 5000 "
                          f"training images held out)")
    if not spec.gpu and any(t.config.device == "cuda" for t in trials):
        raise ConfigError(f"{spec.name}: device=cuda, but resources.gpu is 0, and a trial without a GPU share trains "
                          f"on the CPU; give each trial a share (resources: {{cpu: 1, gpu: 0.25}}) or device=auto")
    short = min((t.config.epochs for t in trials if t.search), default=None)
    if block and block.scheduler == "asha" and short is not None and block.grace_period >= short:
        raise ConfigError(f"{spec.name}: tune: grace_period={block.grace_period} is not below the search trials' "
                          f"{short} epochs, so ASHA could stop none of them; lower it, or use scheduler: none")
    return trials


def cell_name(ft_values: dict[Axis, Any], pre_values: dict[Axis, Any]) -> str:
    """A scientific cell of fine-tuning: every axis value but the seed (what a tune block searches per cell)."""
    init = next(v for a, v in ft_values.items() if a.key == "init")
    freeze = next((v for a, v in ft_values.items() if a.key == "freeze"), TrialConfig.freeze)
    tags = [(a.key, v) for a, v in ft_values.items() if a.key not in {"seed", "init", "freeze"}]
    tags += [(a.label, v) for a, v in pre_values.items()]
    return _name(f"ft-{init}-f{freeze}", 0, tags).rpartition("-")[0]


def _check_unique(spec: Spec, trials: list[Trial]) -> None:
    keys = [t.key for t in trials]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{spec.name}: two trials compute the same thing; an axis lists values that a fixed key "
                          f"or another axis makes equal")
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"{spec.name}: two trials would share the name {dup}; an axis lists equal values")


def trial_dir(study_dir: Location, trial: Trial) -> Location:
    return store.child(study_dir, TRIALS_DIR, trial.dirname)
