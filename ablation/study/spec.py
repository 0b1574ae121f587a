"""Study spec (experiments/<study>.yaml) -> the set of trials it asks for. No torch; Ray only where a tune: block's
configurations are sampled (tuning.py uses Tune's samplers, seeded).

Why: a researcher names an ablation by its axes and its fixed hyperparameters; this module turns that into
exact trial configs, the same way every time. Any TrialConfig key can be an axis, for both stages or one:

    axes:
      finetune.weight_decay: [0.0005, 0.005]   # fine-tuning trials only
      pretrain.epochs: [15, 30]                # fans out the rotation runs, and the pretrained fine-tunes
      rotation_mode: [random1, all4]           # both stages (a fine-tune ignores no key: it is in its config)

Shorthand that predates `axes:` keeps working: seeds, init, freeze, labels_per_class, finetune_lr, stem.
A trial is its config: its key is a digest of what it computes (TrialConfig.identity, plus the key of the
rotation trial a pretrained fine-tune starts from), so a study can grow and still recognise what it ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, unknown_key_message
from ..storage import store
from ..storage.files import read_yaml
from ..storage.store import Location
from ..trial.config import LOCATION_KEYS, TrialConfig, coerce
from .precision import Until, extra_seeds, parse_until
from .tuning import TuneBlock, configurations, parse_tune

BOTH, PRETRAIN, FINETUNE = "", "pretrain", "finetune"  # the scope of an axis or a block
STAGE_OF = {PRETRAIN: "rotation", FINETUNE: "finetune"}
# Shorthand axes: spec key -> (scope, trial key); seeds/init/freeze have defaults, the rest only when given.
SHORTHAND = {"seeds": (BOTH, "seed"), "stem": (BOTH, "stem"), "init": (FINETUNE, "init"),
             "freeze": (FINETUNE, "freeze"), "labels_per_class": (FINETUNE, "labels_per_class"),
             "finetune_lr": (FINETUNE, "lr")}
DEFAULT_AXES = {"seeds": [0], "init": ["pretrained", "random"], "freeze": [4, 0]}
PLANNED = {"stage", "pretrained_from"}  # set by the planner only
SPEC_KEYS = {"name", "description", "pretrain", "finetune", "resources", "max_failures", "max_concurrent", "axes",
             "tune", "until", *SHORTHAND}
TRIALS_DIR = "trials"


@dataclass(frozen=True)
class Axis:
    scope: str  # BOTH, PRETRAIN or FINETUNE
    key: str  # a TrialConfig key
    values: tuple

    @property
    def label(self) -> str:
        return f"{self.scope}.{self.key}" if self.scope else self.key


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


@dataclass
class Spec:
    name: str
    raw: dict[str, Any]  # the spec as given (after overrides): what the manifest records
    common: dict[str, Any]
    blocks: dict[str, dict[str, Any]]  # PRETRAIN / FINETUNE -> fixed keys of that stage
    axes: list[Axis]
    cpu: float = 1.0
    gpu: float = 0.0
    max_failures: int = 2
    max_concurrent: int = 0
    description: str = ""
    tune: TuneBlock | None = None
    until: Until | None = None
    effect: Axis | None = None  # the axis until.effects names

    @property
    def seeds(self) -> tuple[int, ...]:
        """The study's seeds: with an until block, its first round."""
        return next(a.values for a in self.axes if a.key == "seed")

    @property
    def baseline(self) -> str:
        """The variant every other one of a cell is compared with: random init, else the axis's last value."""
        effect = self.effect
        return "random" if effect.key == "init" else _tag(effect.label if effect.scope == PRETRAIN else effect.key,
                                                          effect.values[-1])

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trial_key(cfg: TrialConfig, depends_on: str | None) -> str:
    identity = {**cfg.identity(), "pretrained_trial": depends_on or ""}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _stage_only(key: str) -> str | None:
    """The stage a key applies to, when it applies to one stage only."""
    return TrialConfig.stage_only_keys().get(key)


def _values(label: str, value: Any, f, where: str) -> tuple:
    """The axis's values as the key's type; one written twice, in any spelling (5e-4, '5e-4', 0.0005), is
    refused: it would collapse the axis silently (the trials of one value planned once)."""
    written = value if isinstance(value, list) else [value]
    if not written:
        raise ConfigError(f"{where}: {label} must list at least one value")
    values = tuple(coerce(f, v, f"{where}: {label}") for v in written)
    if len(set(map(json.dumps, values))) != len(values):
        raise ConfigError(f"{where}: {label} lists a value twice: {written} (as {f.name} values: "
                          f"{list(values)}); keep one of each")
    return values


def _axis(scope: str, key: str, value: Any, where: str, name: str | None = None) -> Axis:
    """One axis; name is the shorthand spec key it was written as (seeds, finetune_lr, ...), if any."""
    fields = TrialConfig.fields()
    label = name or (f"{scope}.{key}" if scope else key)
    if key == "seed" and not name:
        raise ConfigError(f"{where}: seeds are an axis of their own: write seeds: [0, 1, 2], not axes: {label}")
    if key in PLANNED:
        raise ConfigError(f"{where}: '{label}' is set by the planner, not by an axis")
    if key not in fields:
        raise ConfigError(unknown_key_message(label, [f"{scope}.{k}" if scope else k for k in fields], where))
    if key in LOCATION_KEYS:  # not part of a trial's identity: its values would all be one trial
        raise ConfigError(f"{where}: {label} says where files are, not what a trial computes, so it cannot be an "
                          f"axis; set it once ({key}: <path>), or make one study per copy")
    only = _stage_only(key)
    if only and scope and STAGE_OF[scope] != only:
        raise ConfigError(f"{where}: {label}: {key} applies to stage={only} only; write "
                          f"{'finetune' if only == 'finetune' else 'pretrain'}.{key}")
    values = _values(label, value, fields[key], where)
    scope = {"finetune": FINETUNE, "rotation": PRETRAIN}.get(only, scope)  # a one-stage key reaches its stage
    return Axis(scope, key, values)


def _axes(raw: dict[str, Any], where: str) -> list[Axis]:
    shorthand = [name for name in SHORTHAND if name in raw or name in DEFAULT_AXES]
    axes = [_axis(*SHORTHAND[name], raw.get(name, DEFAULT_AXES.get(name)), where, name) for name in shorthand]
    origin = [f"'{name}:'" + ("" if name in raw else " by default") for name in shorthand]
    given = raw.get("axes") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{where}: axes must be a mapping of trial key: [values], e.g. "
                          f"axes: {{finetune.weight_decay: [0.0005, 0.005]}}")
    for label, values in given.items():
        scope, _, key = str(label).rpartition(".")
        if scope not in (BOTH, PRETRAIN, FINETUNE):
            raise ConfigError(f"{where}: axes: '{label}' must be a trial key, pretrain.<key> or finetune.<key>")
        axes.append(_axis(scope, key, values, where))
        origin.append(f"axes: {label}")
    seen: dict[tuple, str] = {}
    for a, named in zip(axes, origin):
        for scope in ((PRETRAIN, FINETUNE) if a.scope == BOTH else (a.scope,)):
            if (scope, a.key) in seen:
                raise ConfigError(f"{where}: {a.key} is an axis twice ({seen[scope, a.key]} and {named}); keep one")
            seen[scope, a.key] = named
    return axes


def _block(values: Any, where: str, scope: str, axes: list[Axis], also: frozenset[str] = frozenset()) -> dict:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: must be a mapping of trial keys (e.g. epochs: 15)")
    for key in values:
        if key in PLANNED or key == "seed":
            raise ConfigError(f"{where}: '{key}' is set by the study's planner; "
                              f"{'use seeds: [...]' if key == 'seed' else 'remove it'}")
        if key not in TrialConfig.fields():
            raise ConfigError(unknown_key_message(key, (set(TrialConfig.fields()) - PLANNED) | also, where))
        on_axis = [a for a in axes if a.key == key and (a.scope in (BOTH, scope) or scope == BOTH)]
        if on_axis:
            raise ConfigError(f"{where}: '{key}' is fixed here and also an axis ({on_axis[0].label}); "
                              f"keep one (a fixed value is an axis of one value: {key}: [value])")
    return dict(values)


def _absolute(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Trials run in Ray workers with another working directory: make paths absolute now."""
    out = dict(values)
    for key in ("data_dir", "cache_dir"):
        if out.get(key):
            out[key] = str((base / Path(str(out[key])).expanduser()).resolve())
    return out


def _resources(raw: dict[str, Any], where: str) -> tuple[float, float]:
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"}:
        raise ConfigError(f"{where}: resources takes cpu and gpu only, e.g. resources: {{cpu: 1, gpu: 0.25}}")
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", 0)
    if not isinstance(gpu, (int, float)) or isinstance(gpu, bool) or not 0 <= gpu <= 1:
        raise ConfigError(f"{where}: resources.gpu={gpu!r} must be a fraction of one GPU in [0, 1]")
    if not isinstance(cpu, (int, float)) or isinstance(cpu, bool) or cpu <= 0:
        raise ConfigError(f"{where}: resources.cpu={cpu!r} must be a positive number")
    return float(cpu), float(gpu)


def parse_spec(raw: dict[str, Any], where: str, base: Path | None = None) -> Spec:
    """Validate a spec mapping; every problem is one ConfigError line naming the key."""
    base = base or Path.cwd()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    name = raw.get("name")
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\:") \
            or name.strip() != name:
        raise ConfigError(f"{where}: name must be a plain directory name (no path separator), got {name!r}")
    axes = _axes(raw, where)
    common = _block({k: v for k, v in raw.items() if k not in SPEC_KEYS}, where, BOTH, axes, frozenset(SPEC_KEYS))
    blocks = {scope: _absolute(_block(raw.get(scope), f"{where}: {scope}", scope, axes), base)
              for scope in (PRETRAIN, FINETUNE)}
    for key in ("max_failures", "max_concurrent"):
        if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 0):
            raise ConfigError(f"{where}: {key} must be an integer >= 0, got {raw[key]!r}")
    common.setdefault("data_dir", TrialConfig.data_dir)  # the default is relative too
    cpu, gpu = _resources(raw, where)
    seeds = next(a.values for a in axes if a.key == "seed")
    tune = parse_tune(raw.get("tune"), list(seeds), where)
    until, effect = parse_until(raw.get("until"), axes, seeds, where) or (None, None)
    for key in tune.keys if tune else ():
        if key in blocks[FINETUNE] or any(a.key == key and a.scope in (BOTH, FINETUNE) for a in axes):
            raise ConfigError(f"{where}: tune.space: {key} is searched and also fixed in finetune: or an axis; "
                              f"keep one")
    return Spec(name=name, raw=json.loads(json.dumps(raw, default=str)), common=_absolute(common, base),
                blocks=blocks, axes=axes, cpu=cpu, gpu=gpu, max_failures=raw.get("max_failures", 2),
                max_concurrent=raw.get("max_concurrent", 0), description=str(raw.get("description", "")), tune=tune,
                until=until, effect=effect)


def _grid(axes: list[Axis]) -> list[dict[Axis, Any]]:
    return [dict(zip(axes, combo)) for combo in itertools.product(*(a.values for a in axes))]


def _tag(label: str, value: Any) -> str:
    return f"{label}={value:g}" if isinstance(value, float) else f"{label}={value}"


def _name(stage_part: str, seed: int, tags: list[tuple[str, Any]]) -> str:
    defaults = TrialConfig()
    shown = [_tag(label, value) for label, value in tags if value != getattr(defaults, label.rpartition(".")[2])]
    return "-".join([stage_part, *shown, f"s{seed}"])


def precision_cell(spec: Spec, ft_values: dict[Axis, Any], pre_values: dict[Axis, Any]) -> tuple[str, str]:
    """(group, variant) of a fine-tuning trial under the until block: the group is every axis value but the
    seed's and the effect's (init: and the pretraining's, which only its pretrained side has); the variant is
    the effect's value (init: pretrained with its pretraining values, or random)."""
    effect = spec.effect
    everything = {**ft_values, **pre_values}
    def tag(a: Axis, v: Any) -> str:  # as trial names say it: a fine-tuning key by name, pretrain.<key> in full
        return _tag(a.label if a.scope == PRETRAIN else a.key, v)

    if effect.key == "init":
        init = ft_values[effect]
        group = [tag(a, v) for a, v in ft_values.items() if a.key not in ("seed", "init")]
        variant = " ".join([init, *(tag(a, v) for a, v in pre_values.items())])
    else:
        group = [tag(a, v) for a, v in everything.items() if a.key != "seed" and a != effect]
        if effect not in everything:  # a random-init trial, when the effect is a pretraining axis: no side
            return "", ""
        variant = tag(effect, everything[effect])
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


def apply_overrides(raw: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """`seeds=[0,1]`, `finetune.epochs=3` or `axes={finetune.weight_decay: [0.0005, 0.005]}`: values are YAML,
    dotted keys reach into a block; an `axes` mapping is merged into the spec's own axes."""
    raw = json.loads(json.dumps(raw))
    for key, text in overrides.items():
        try:
            value = yaml.safe_load(text) if text else text
        except yaml.YAMLError:
            raise ConfigError(f"override {key}={text}: not a YAML value (quote it, e.g. '{key}=[0, 1]')") from None
        if key == "axes" and isinstance(value, dict) and isinstance(raw.get("axes"), dict):
            raw["axes"] = {**raw["axes"], **value}
            continue
        *blocks, leaf = key.split(".")
        target = raw
        for block in blocks:
            target = target.setdefault(block, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {key}: '{block}' is not a block of the spec")
        target[leaf] = value
    return raw


def load_spec(path: str, overrides: dict[str, str] | None = None) -> Spec:
    return parse_spec(apply_overrides(read_yaml(path), overrides or {}), where=path, base=Path.cwd())
