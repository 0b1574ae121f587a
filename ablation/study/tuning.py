"""A spec's `tune:` block: the nuisance hyperparameters searched per scientific cell, on validation data,
and the choice each cell makes (no torch; Ray only for Tune's samplers).

Why: the tuning playbook compares the values of a scientific hyperparameter (init, freeze depth, ...) each
at its own best nuisance hyperparameters (lr, weight decay), chosen without the test set. A cell is one
value of every fine-tuning axis but the seed. Its search trials are ordinary study trials: the same
`samples` configurations (drawn once with Tune's samplers from `space`, seeded, so a rerun draws them again)
on the search seeds, with Tune's ASHA stopping poor ones early (launch.py). When every search trial of a
cell has finished or been stopped, the configuration with the best validation score (its best epoch, mean
over the search seeds; finished trials only) is the cell's choice, and the planner adds that configuration
on every seed of the study: on a search seed it is the search trial itself (same config, same key).
    tune:
      space: {finetune.lr: loguniform(0.001, 0.1), finetune.weight_decay: [0.0001, 0.0005, 0.002]}
      samples: 8          # configurations per cell (random search); grid: every combination of the lists
      seeds: [0]          # the search seeds (default: the study's first seed)
      metric: val_acc     # or val_loss; a test metric is refused
      scheduler: asha     # or none; grace_period (epochs) and reduction_factor tune it
      search: random      # or grid
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, check_block, shown
from ..trial.config import TrialConfig, coerce
from .trial_states import DONE, FAILED, FINISHED, STOPPED

METRICS = {"val_acc": "max", "val_loss": "min"}
TUNE_KEYS = {"space", "samples", "seeds", "metric", "scheduler", "search", "grace_period", "reduction_factor",
             "seed"}
NOT_SEARCHED = {"seed", "stage", "init", "pretrained_from", "freeze", "epochs", "dataset", "data_dir", "cache_dir",
                "val_split", "data_seed", "train_subset", "test_subset", "labels_per_class",
                "device"}  # scientific, data or execution keys: an axis or a fixed value, not a nuisance
SAMPLERS = {"uniform": 2, "loguniform": 2}  # name(lo, hi) -> Tune's sampler of that name
_CALL = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$")


@dataclass(frozen=True)
class Dim:
    key: str  # a fine-tuning TrialConfig key
    values: tuple = ()  # a list in the spec: Tune's choice (random) or one grid dimension
    sampler: str = ""  # uniform / loguniform
    bounds: tuple = ()

    def domain(self):
        from ray import tune

        return getattr(tune, self.sampler)(*self.bounds) if self.sampler else tune.choice(list(self.values))


@dataclass(frozen=True)
class TuneBlock:
    dims: tuple[Dim, ...]
    samples: int
    seeds: tuple[int, ...]
    metric: str
    scheduler: str  # "asha" or "none"
    grace_period: int
    reduction_factor: float
    search: str  # "random" or "grid"
    seed: int  # of the random draws

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dims]


def _dim(label: Any, value: Any, where: str) -> Dim:
    scope, _, key = str(label).rpartition(".")
    fields = TrialConfig.fields()
    if scope == "pretrain":
        raise ConfigError(f"{where}: {label}: only fine-tuning keys are searched (a rotation run serves every cell "
                          f"of its seed); make pretrain.{key} an axis instead")
    if scope not in ("", "finetune") or key not in fields or fields[key].metadata.get("internal"):
        raise ConfigError(f"{where}: {shown(label)} is not a fine-tuning key (e.g. finetune.lr, "
                          f"finetune.weight_decay)")
    if key in NOT_SEARCHED:
        raise ConfigError(f"{where}: {key} is not a nuisance hyperparameter to search; make it an axis or fix it")
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: {label} lists no values")
        values = tuple(coerce(fields[key], v, f"{where}: {label}") for v in value)
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: {label} lists a value twice: {list(values)}")
        return Dim(key, values=values)
    match = _CALL.match(str(value))
    if not match and str(value).split("(")[0].strip() in SAMPLERS:  # YAML splits a {...} mapping at the comma
        raise ConfigError(f"{where}: {label}: {shown(value)} was cut at its comma; quote it in a {{...}} mapping: "
                          f"'{str(value).strip()}, hi)' or write the space as a block, one key per line")
    if not match or match.group(1) not in SAMPLERS or not isinstance(fields[key].default, float):
        raise ConfigError(f"{where}: {label}: {shown(value)} is not a list of values or uniform(lo, hi) / "
                          f"loguniform(lo, hi) of a float key")
    try:
        bounds = tuple(float(x) for x in match.group(2).split(","))
    except ValueError:
        bounds = ()
    if len(bounds) != 2 or not bounds[0] < bounds[1] or (match.group(1) == "loguniform" and bounds[0] <= 0):
        raise ConfigError(f"{where}: {label}: {value} needs two numbers lo < hi (loguniform: lo > 0)")
    for bound in bounds:
        coerce(fields[key], bound, f"{where}: {label}")  # the range of the key itself
    return Dim(key, sampler=match.group(1), bounds=bounds)


MAX_SAMPLES = 1000  # configurations per cell: each is a training run per search seed; drawn before any output


def _int(raw: dict, key: str, default: int, lo: int, where: str) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ConfigError(f"{where}: {key} must be an integer >= {lo}, got {shown(value)}")
    return value


def parse_tune(raw: Any, study_seeds: list[int], where: str) -> TuneBlock | None:
    """The `tune:` block, validated; every problem is one line naming the key."""
    if raw is None:
        return None
    where = f"{where}: tune"
    check_block(raw, TUNE_KEYS, where, "space:, samples:, seeds:, metric:, scheduler:, search:")
    metric = raw.get("metric", "val_acc")
    if metric not in METRICS:
        hint = " (that would select on the test set)" if str(metric).startswith("test") else ""
        raise ConfigError(f"{where}: metric={shown(metric)}{hint}; use val_acc or val_loss, measured on the "
                          f"val_split images")
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}: space must map fine-tuning keys to values, e.g. "
                          f"space: {{finetune.lr: loguniform(0.001, 0.1)}}")
    dims = tuple(_dim(label, value, f"{where}.space") for label, value in space.items())
    if len({d.key for d in dims}) != len(dims):
        raise ConfigError(f"{where}.space: a key is listed twice")
    search = raw.get("search", "random")
    if search == "optuna":
        raise ConfigError(f"{where}: search=optuna is not supported (the configurations are planned ahead so that a "
                          f"study can resume and grow); use random or grid")
    if search not in ("random", "grid"):
        raise ConfigError(f"{where}: search={shown(search)} is not random or grid")
    if search == "grid" and (bad := [d.key for d in dims if d.sampler]):
        raise ConfigError(f"{where}: search=grid needs a list of values for {bad[0]}")
    if search == "grid" and "samples" in raw:
        raise ConfigError(f"{where}: samples applies to search=random; a grid tries every combination")
    scheduler = raw.get("scheduler", "none")
    if scheduler not in ("asha", "none", None):
        raise ConfigError(f"{where}: scheduler={shown(scheduler)} is not asha or none")
    seeds = raw.get("seeds", study_seeds[:1])
    if not isinstance(seeds, list) or not seeds or any(s not in study_seeds for s in seeds) \
            or len(set(map(str, seeds))) != len(seeds):
        raise ConfigError(f"{where}: seeds={shown(seeds)} must be a non-empty list of distinct seeds of the "
                          f"study's {study_seeds}")
    if scheduler == "asha" and len(seeds) > 1:
        raise ConfigError(f"{where}: scheduler=asha with {len(seeds)} search seeds would stop a configuration on "
                          f"one seed and not another; search on one seed, or use scheduler: none")
    factor = raw.get("reduction_factor", 3)
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 1:
        raise ConfigError(f"{where}: reduction_factor must be a number > 1, got {shown(factor)}")
    samples = _int(raw, "samples", 8, 1, where)
    if samples > MAX_SAMPLES:
        raise ConfigError(f"{where}: samples={samples} is more than {MAX_SAMPLES} configurations per cell, each a "
                          f"training run on every search seed; ask for at most {MAX_SAMPLES}")
    return TuneBlock(dims=dims, samples=samples, seeds=tuple(seeds), metric=metric,
                     scheduler=scheduler or "none", grace_period=_int(raw, "grace_period", 1, 1, where),
                     reduction_factor=float(factor), search=search, seed=_int(raw, "seed", 0, 0, where))


def configurations(block: TuneBlock) -> list[dict[str, Any]]:
    """The configurations every cell tries, in a stable order: a grid's every combination, or `samples`
    random draws from one generator seeded by the block's seed (raising samples keeps the first draws).
    Sampled floats keep 3 significant digits (readable names; finer steps than that do not matter here);
    a draw equal to an earlier one is dropped."""
    if block.search == "grid":
        combos = itertools.product(*(d.values for d in block.dims))
        return [dict(zip(block.keys, combo)) for combo in combos]
    import numpy as np

    out: list[dict[str, Any]] = []
    rng = np.random.RandomState(block.seed)
    for _ in range(block.samples):
        draw = {}
        for d in block.dims:
            value = d.domain().sample(random_state=rng)
            draw[d.key] = float(f"{value:.3g}") if d.sampler else (value.item() if hasattr(value, "item") else value)
        if draw not in out:
            out.append(draw)
    return out


def choose(block: TuneBlock, search: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A cell's choice from its search trials' records ({"values", "seed", "rows", "state"}: state finished,
    stopped early, failed, or anything else = not done yet), or None while any is not done. Score of a trial:
    its best validation epoch; of a configuration: the mean over the search seeds, when every one finished."""
    if any(r["state"] not in (*DONE, FAILED) for r in search):
        return None
    pick = max if block.mode == "max" else min
    by_config: dict[str, list] = {}
    for r in search:
        by_config.setdefault(json.dumps(r["values"], sort_keys=True), []).append(r)
    scores = {}
    for config, runs in by_config.items():
        if all(r["state"] == FINISHED and r["rows"] for r in runs) and len(runs) == len(block.seeds):
            scores[config] = sum(pick(row[block.metric] for row in r["rows"]) for r in runs) / len(runs)
    stopped = sum(r["state"] == STOPPED for r in search)
    failed = sum(r["state"] == FAILED for r in search)
    if not scores:
        return {"values": None, "score": None, "tried": len(by_config), "stopped": stopped, "failed": failed}
    best = pick(scores, key=lambda c: scores[c])  # the first of equal scores: configuration order
    return {"values": json.loads(best), "score": scores[best], "metric": block.metric, "tried": len(by_config),
            "stopped": stopped, "failed": failed}
