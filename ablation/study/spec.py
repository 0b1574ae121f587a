"""Study spec (experiments/<study>.yaml) -> a validated Spec: its axes, its fixed keys, its tune: and until:
blocks. No torch, no Ray.

Why: a researcher names an ablation by its axes and its fixed hyperparameters; this module turns that into
exact trial configs, the same way every time. Any TrialConfig key can be an axis, for both stages or one:

    axes:
      finetune.weight_decay: [0.0005, 0.005]   # fine-tuning trials only
      pretrain.epochs: [15, 30]                # fans out the rotation runs, and the pretrained fine-tunes
      rotation_mode: [random1, all4]           # both stages (a fine-tune ignores no key: it is in its config)

Shorthand that predates `axes:` keeps working: seeds, init, freeze, labels_per_class, finetune_lr, stem.
planner.py turns a parsed Spec into its trials.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, unknown_key_message
from ..storage.files import read_yaml
from ..trial.config import LOCATION_KEYS, TrialConfig, coerce
from .precision import Until, parse_until
from .tuning import TuneBlock, parse_tune

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


@dataclass(frozen=True)
class Axis:
    scope: str  # BOTH, PRETRAIN or FINETUNE
    key: str  # a TrialConfig key
    values: tuple

    @property
    def label(self) -> str:
        return f"{self.scope}.{self.key}" if self.scope else self.key


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
        return "random" if effect.key == "init" else tag(effect.label if effect.scope == PRETRAIN else effect.key,
                                                         effect.values[-1])

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tag(label: str, value: Any) -> str:
    return f"{label}={value:g}" if isinstance(value, float) else f"{label}={value}"


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
