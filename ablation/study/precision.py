"""A spec's `until:` block: seeds added per cell until each effect's 95% interval is as narrow as asked, by
Stein's two-stage rule; and how many seeds a half-width needs (no torch, no Ray; numpy and scipy).

Why: "how many seeds?" is the question every ablation study answers by guess. A cell here is a group of
trials that differ only in the effect's axis (and the seed); its effect is the paired difference of each value
of that axis against the baseline (init: random; any other axis: the last value listed), seed by seed.

Why Stein's rule: stopping when the current interval is narrow enough (a sequential rule) under-covers at the
small n of seed studies: a cell stops when its seeds happened to agree, so its spread is underestimated. Stein's
two-stage procedure is exact for normal differences: the first round's n0 pairs give a spread s0, which alone
fixes the total N = max(n0, ceil((t(n0-1) s0 / h)^2)) (capped at max_seeds); the interval is the mean of the
pairs that finished (all N, unless some failed) ± t(n0-1) s0 / sqrt(their number). Given s0 the mean of the N
pairs is normal with variance sigma^2 / N, and s0 is independent of it, so the interval covers with probability
exactly 95% whatever N the rule chose, and its half-width is at most h unless max_seeds capped N. The price: t
with n0-1 degrees of freedom (4.30 for a first round of 3) asks for more seeds than a sequential rule would
(tests/test_precision.py measures both). The rule looks at spreads only, never at a p-value or the sign of an
effect.

    until:
      halfwidth: 1.0          # points: the 95% half-width each effect must reach
      max_seeds: 10
      effects: init           # the axis whose paired differences are the effects
      metric: final_test_acc  # or best_test_acc (selected on the test set), test_acc_at_best_val (val_split)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from scipy import stats

from ..errors import ConfigError, check_block, shown
from .trial_states import FAILED, FINISHED, SKIPPED, STOPPED

LEVEL = 0.95
UNTIL_KEYS = {"halfwidth", "max_seeds", "effects", "metric"}
# metric -> what it is (the report's columns; every one in points of test accuracy)
METRICS = {"final_test_acc": "test accuracy at the last epoch",
           "best_test_acc": "highest test accuracy over epochs (selected on the test set, as the report did)",
           "test_acc_at_best_val": "test accuracy at the epoch of the highest validation accuracy (val_split)"}
# why a cell's seeds ended where they did
FIRST_ROUND, TOO_FEW, WAITING, MET, CAPPED, LOST = (
    "first round running", "fewer than 2 pairs finished in the first round", "waiting for seeds", "target met",
    "max_seeds reached", "trials failed")


@dataclass(frozen=True)
class Until:
    halfwidth: float  # points
    max_seeds: int
    effects: str  # the axis as the spec names it
    metric: str


def parse_until(raw: Any, axes: list, seeds: tuple, where: str) -> tuple[Until, Any] | None:
    """The `until:` block and the axis it names (spec.Axis), validated: every problem one line naming the key."""
    if raw is None:
        return None
    where = f"{where}: until"
    check_block(raw, UNTIL_KEYS, where, "e.g. until: {halfwidth: 1.0, max_seeds: 10, effects: init}")
    h = raw.get("halfwidth")
    if not isinstance(h, (int, float)) or isinstance(h, bool) or not math.isfinite(h) or h <= 0:
        raise ConfigError(f"{where}: halfwidth={shown(h)} must be a number of points > 0, e.g. halfwidth: 1.0")
    if len(seeds) < 2:
        raise ConfigError(f"{where}: the first round needs at least 2 seeds for a spread; give seeds: [0, 1, 2]")
    most = raw.get("max_seeds", 10)
    if not isinstance(most, int) or isinstance(most, bool) or most < len(seeds):
        raise ConfigError(f"{where}: max_seeds={shown(most)} must be an integer >= the first round's "
                          f"{len(seeds)} seeds")
    metric = raw.get("metric", "final_test_acc")
    if metric not in METRICS:
        raise ConfigError(f"{where}: metric={shown(metric)} is not one of {', '.join(METRICS)}")
    name = raw.get("effects", "init")
    matches = [a for a in axes if a.key != "seed" and name in (a.key, a.label)]
    if len(matches) > 1:
        raise ConfigError(f"{where}: effects={name} names {len(matches)} axes; write one of "
                          f"{', '.join(a.label for a in matches)}")
    if not matches or len(matches[0].values) < 2:
        varied = [a.label for a in axes if a.key != "seed" and len(a.values) > 1]
        raise ConfigError(f"{where}: effects={shown(name)} is not an axis this spec varies; choose one of "
                          f"{', '.join(varied) or '(none: give an axis two values)'}")
    return Until(float(h), most, str(name), metric), matches[0]


def score(rows: list[dict[str, Any]], metric: str) -> float | None:
    """A finished trial's value of `metric` (a fraction), from its epoch rows; None where it has none (no
    validation rows for test_acc_at_best_val)."""
    if metric == "final_test_acc":
        return rows[-1]["test_acc"]
    if metric == "best_test_acc":
        return max(r["test_acc"] for r in rows)
    if not all("val_acc" in r for r in rows):
        return None
    return max(rows, key=lambda r: r["val_acc"])["test_acc"]  # the first of equal val_acc: earliest epoch


def t_quantile(df: int) -> float:
    return float(stats.t.ppf(0.5 + LEVEL / 2, df))


def stein_total(s0: float, n0: int, halfwidth: float) -> int:
    """Stein's N: the pairs a cell needs in all, from its first round's n0 pairs and their sd s0."""
    return max(n0, math.ceil((t_quantile(n0 - 1) * s0 / halfwidth) ** 2))


def seeds_needed(s: float, halfwidth: float, most: int = 10_000) -> int | None:
    """Planning from an observed spread s: the smallest n >= 2 with t(n-1) s / sqrt(n) <= halfwidth (the fixed-n
    t-interval's width, taking s as the truth); None when even `most` is not enough."""
    if not s >= 0:  # NaN: no spread measured
        return None
    for n in range(2, most + 1):
        if t_quantile(n - 1) * s / math.sqrt(n) <= halfwidth:
            return n
    return None


def extra_seeds(first: Iterable[int], count: int) -> list[int]:
    """The seeds a cell adds after its first round: the smallest ones not in it, in order."""
    taken, out, seed = set(first), [], 0
    while len(out) < count:
        if seed not in taken:
            out.append(seed)
        seed += 1
    return out


@dataclass(frozen=True)
class Effect:
    """One effect of one cell under the rule: what its first round said and where it stands now."""
    group: str  # the cell: every axis value but the seed and the effect's
    variant: str  # compared with the baseline
    baseline: str
    n0: int  # pairs finished in the first round
    s0: float  # their sd, points (NaN with fewer than 2)
    needed: int  # pairs Stein's rule asks for (uncapped); 0 while the first round runs
    seeds: int  # seeds planned for the cell on this effect's account: the first round + what the rule added
    n: int  # pairs finished now
    mean: float  # points
    low: float
    high: float
    reason: str  # FIRST_ROUND, TOO_FEW, WAITING, MET, CAPPED or LOST

    @property
    def halfwidth(self) -> float:
        return (self.high - self.low) / 2


# values[group][variant][seed]: a finished trial's score in points, None for a trial done without one (failed,
# skipped, stopped early), absent while it has not ended
Values = dict[str, dict[str, dict[int, float | None]]]


def collect(entries: Iterable[tuple[str, str, int, str, float | None]]) -> Values:
    """Values from (group, variant, seed, state, score as a fraction) of a study's grouped trials: a finished
    trial's score in points, None for one that ended without (failed, skipped, stopped); the rest are not in."""
    out: Values = {}
    for group, variant, seed, state, value in entries:
        if not group:
            continue
        runs = out.setdefault(group, {}).setdefault(variant, {})
        if state == FINISHED:
            runs[int(seed)] = None if value is None or value != value else 100.0 * value
        elif state in (FAILED, SKIPPED, STOPPED):
            runs[int(seed)] = None
    return out


def assess(until: Until, first: tuple[int, ...], values: Values, baselines: dict[str, str]) -> list[Effect]:
    """Every effect of every cell under Stein's rule (baselines: group -> its baseline variant)."""
    out = []
    for group, variants in values.items():
        base = baselines[group]
        for variant, runs in variants.items():
            if variant != base:
                out.append(_effect(until, first, group, variant, base, runs, variants.get(base, {})))
    return out


def _effect(until: Until, first: tuple[int, ...], group: str, variant: str, base: str,
            runs: dict[int, float | None], bases: dict[int, float | None]) -> Effect:
    def pairs(seeds) -> list[float]:
        return [runs[s] - bases[s] for s in seeds if runs.get(s) is not None and bases.get(s) is not None]

    first_done = all(s in runs and s in bases for s in first)
    d0 = pairs(first)
    n0 = len(d0)
    nan = math.nan
    if not first_done or n0 < 2:
        reason = FIRST_ROUND if not first_done else TOO_FEW
        return Effect(group, variant, base, n0, nan, 0, len(first), n0, float(np.mean(d0)) if d0 else nan, nan,
                      nan, reason)
    s0 = float(np.std(d0, ddof=1))
    needed = stein_total(s0, n0, until.halfwidth)
    seeds = min(until.max_seeds, len(first) + needed - n0)  # failed first-round pairs are made up for
    planned = list(first) + extra_seeds(first, seeds - len(first))
    d = pairs(planned)
    half = t_quantile(n0 - 1) * s0 / math.sqrt(len(d))
    mean = float(np.mean(d))
    if not all(s in runs and s in bases for s in planned):
        reason = WAITING
    elif half <= until.halfwidth + 1e-12:
        reason = MET
    elif seeds == until.max_seeds:
        reason = CAPPED
    else:
        reason = LOST
    return Effect(group, variant, base, n0, s0, needed, seeds, len(d), mean, mean - half, mean + half, reason)


def seeds_per_cell(effects: list[Effect], first: tuple[int, ...]) -> dict[str, int]:
    """group -> the seeds beyond the first round the rule gives that cell (the most any of its effects needs)."""
    out: dict[str, int] = {}
    for e in effects:
        out[e.group] = max(out.get(e.group, 0), e.seeds - len(first))
    return out
