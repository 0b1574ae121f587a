"""Study spec (experiments/<study>.yaml) -> validated plan of trials in two phases.

Why: a researcher names an ablation by its axes (seeds x init x freeze, optionally labels per class,
fine-tune lr, stem) and fixed hyperparameters; this module turns that into the exact trial configs,
once, the same way every time, so that a rerun can tell whether the spec changed. No torch, no ray.

Phase 1 holds the rotation pretraining trials (one per seed and stem) and every random-init fine-tune
trial (they need no pretraining); phase 2 holds the pretrained-init fine-tune trials, each pointed at
its own seed's rotation trial directory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import store
from .config import ConfigError, TrialConfig, unknown_key_message
from .store import Location

# Keys the axes and the planner own; a spec may not set them in its blocks.
PLANNED = {"stage", "seed", "init", "freeze", "pretrained_from", "stem", "labels_per_class"}
AXES = {"seeds": [0], "init": ["pretrained", "random"], "freeze": [4, 0], "labels_per_class": [0],
        "finetune_lr": [], "stem": ["imagenet"]}
SPEC_KEYS = {"name", "description", "pretrain", "finetune", "resources", "max_failures", "max_concurrent", *AXES}
PATH_KEYS = ("data_dir", "cache_dir")
PHASES = ("phase1", "phase2")


@dataclass(frozen=True)
class Trial:
    id: str
    phase: str
    config: TrialConfig


@dataclass
class Spec:
    name: str
    raw: dict[str, Any]  # the normalised spec: what the study's manifest stores and hashes
    common: dict[str, Any]
    pretrain: dict[str, Any]
    finetune: dict[str, Any]
    axes: dict[str, list]
    cpu: float = 1.0
    gpu: float = 0.0
    max_failures: int = 2
    max_concurrent: int = 0
    description: str = ""
    trials: list[Trial] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()[:16]


def _as_list(key: str, value: Any, where: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{where}: {key} must list at least one value")
    if len(set(map(json.dumps, values))) != len(values):
        raise ConfigError(f"{where}: {key} lists a value twice: {values}")
    return values


def _block(values: Any, where: str, also: frozenset[str] = frozenset()) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: must be a mapping of trial keys (e.g. epochs: 15)")
    for key in values:
        if key in PLANNED:
            raise ConfigError(f"{where}: '{key}' is set by the study's axes; use the top-level axis instead")
        if key not in TrialConfig.fields():
            raise ConfigError(unknown_key_message(key, (set(TrialConfig.fields()) - PLANNED) | also, where))
    return dict(values)


def _absolute(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Trials run in Ray workers with another working directory: make paths absolute now."""
    out = dict(values)
    for key in PATH_KEYS:
        if out.get(key):
            out[key] = str((base / Path(str(out[key])).expanduser()).resolve())
    return out


def parse_spec(raw: dict[str, Any], where: str, base: Path | None = None) -> Spec:
    """Validate a spec mapping; every problem is one ConfigError line naming the key."""
    base = base or Path.cwd()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    common = {k: v for k, v in raw.items() if k not in SPEC_KEYS}
    _block(common, where, also=frozenset(SPEC_KEYS))
    name = raw.get("name")
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\:") \
            or name.strip() != name:
        raise ConfigError(f"{where}: name must be a plain directory name (no path separator), got {name!r}")
    axes = {k: _as_list(k, raw.get(k, default), where) for k, default in AXES.items() if k in raw or default}
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"}:
        raise ConfigError(f"{where}: resources takes cpu and gpu only, e.g. resources: {{cpu: 1, gpu: 0.25}}")
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", 0)
    if not isinstance(gpu, (int, float)) or isinstance(gpu, bool) or not 0 <= gpu <= 1:
        raise ConfigError(f"{where}: resources.gpu={gpu!r} must be a fraction of one GPU in [0, 1]")
    if not isinstance(cpu, (int, float)) or isinstance(cpu, bool) or cpu <= 0:
        raise ConfigError(f"{where}: resources.cpu={cpu!r} must be a positive number")
    for key in ("max_failures", "max_concurrent"):
        if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 0):
            raise ConfigError(f"{where}: {key} must be an integer >= 0, got {raw[key]!r}")
    common.setdefault("data_dir", TrialConfig.data_dir)  # the default is relative too
    spec = Spec(name=name, raw=json.loads(json.dumps(raw, default=str)), common=_absolute(common, base),
                pretrain=_absolute(_block(raw.get("pretrain"), f"{where}: pretrain"), base),
                finetune=_absolute(_block(raw.get("finetune"), f"{where}: finetune"), base),
                axes=axes, cpu=float(cpu), gpu=float(gpu), max_failures=raw.get("max_failures", 2),
                max_concurrent=raw.get("max_concurrent", 0), description=str(raw.get("description", "")))
    spec.raw["_paths"] = {k: spec.common.get(k) for k in PATH_KEYS if spec.common.get(k)}
    return spec


def plan(spec: Spec, study_dir: Location) -> list[Trial]:
    """Every trial of the study, in a stable order, with configs validated by TrialConfig."""
    trials: list[Trial] = []

    def make(tid: str, phase: str, values: dict[str, Any]) -> Trial:
        return Trial(tid, phase, TrialConfig.from_dict(values, where=f"{spec.name}: trial {tid}"))

    pretrained = "pretrained" in spec.axes["init"]
    for init in spec.axes["init"]:
        if init not in ("pretrained", "random"):
            raise ConfigError(f"{spec.name}: init={init!r} is not one of pretrained, random")
    for stem, seed in itertools.product(spec.axes["stem"], spec.axes["seeds"]):
        if pretrained:
            trials.append(make(f"rot-{stem}-s{seed}", "phase1",
                               {**spec.common, **spec.pretrain, "stage": "rotation", "stem": stem, "seed": seed}))
    lrs = spec.axes.get("finetune_lr") or [None]
    for stem, init, freeze, lpc, lr, seed in itertools.product(
            spec.axes["stem"], spec.axes["init"], spec.axes["freeze"], spec.axes["labels_per_class"], lrs,
            spec.axes["seeds"]):
        values = {**spec.common, **spec.finetune, "stage": "finetune", "stem": stem, "seed": seed, "init": init,
                  "freeze": freeze, "labels_per_class": lpc}
        if lr is not None:
            values["lr"] = lr
        phase = "phase1"
        if init == "pretrained":
            values["pretrained_from"] = str(store.child(study_dir, "phase1", f"rot-{stem}-s{seed}"))
            phase = "phase2"
        lr_tag = f"{lr:g}" if lr is not None else "base"
        trials.append(make(f"ft-{stem}-{init}-f{freeze}-lpc{lpc}-lr{lr_tag}-s{seed}", phase, values))
    ids = [t.id for t in trials]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{spec.name}: two trials share an id; an axis lists equal values")
    return trials
