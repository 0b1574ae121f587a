"""Mean, spread and 95% t-intervals over seeds, the paired pretrained-vs-random test, and the statistics a
larger study supports: bootstrap intervals, the probability of improvement, Holm-adjusted p-values.

Why: a study has few seeds (2-5), so intervals use Student's t, not a normal approximation; with fewer than
two values there is no interval and the result says so (NaN). A bootstrap interval (BCa) is given beside it
from BOOTSTRAP_MIN values on, where resampling has something to resample; below, it is absent (NaN) and the
notes say why. The report's numbers are single runs: the CI of our mean says where the mean is, the
prediction interval where one more run (or seed pair) would fall, which is what a single run is to be
compared with. Everything here is scipy's; Holm's step-down (which scipy lacks) is the one exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
BOOTSTRAP_MIN = 8  # values below which a bootstrap interval is not given
BOOTSTRAP_RESAMPLES = 9999


@dataclass(frozen=True)
class Interval:
    n: int
    mean: float
    std: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        """False only when both the interval and the value are known and the value lies outside."""
        return not (self.low > value or self.high < value)

    def prediction(self) -> Interval:
        """The 95% prediction interval of one more value from the same distribution: mean ± t sd sqrt(1 + 1/n),
        sqrt(n + 1) times as wide as the CI of the mean."""
        if self.n < 2:
            return Interval(self.n, self.mean, self.std, math.nan, math.nan)
        half = _t(self.n) * self.std * math.sqrt(1 + 1 / self.n)
        return Interval(self.n, self.mean, self.std, self.mean - half, self.mean + half)


def _t(n: int) -> float:
    """Student's t quantile of a two-sided 95% interval from n values."""
    return float(stats.t.ppf(0.5 + LEVEL / 2, n - 1))


def t_interval(values) -> Interval:
    """Mean, sample std and the 95% t confidence interval of the mean of the non-NaN values."""
    x = np.asarray(pd.Series(values, dtype=float).dropna())
    n = len(x)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = _t(n) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Paired:
    diff: Interval
    t: float
    p: float
    diffs: pd.Series  # the differences themselves, by seed


def paired_test(a: pd.Series, b: pd.Series) -> Paired:
    """a - b over the index values (seeds) both have: t-interval of the differences and scipy's ttest_rel."""
    both = pd.concat({"a": a, "b": b}, axis=1).dropna()
    diffs = both["a"] - both["b"]
    diff = t_interval(diffs)
    if len(both) < 2 or diff.std == 0:  # no spread (identical runs): the t-test is undefined, not p = 0
        return Paired(diff, math.nan, math.nan, diffs)
    res = stats.ttest_rel(both["a"], both["b"])
    return Paired(diff, float(res.statistic), float(res.pvalue), diffs)


def bootstrap_interval(values) -> tuple[float, float]:
    """The 95% BCa bootstrap interval of the mean (scipy.stats.bootstrap, seeded: a report rebuilt gives the
    same numbers); (NaN, NaN) below BOOTSTRAP_MIN values or when every value is the same."""
    x = np.asarray(pd.Series(values, dtype=float).dropna())
    if len(x) < BOOTSTRAP_MIN or np.ptp(x) == 0:
        return math.nan, math.nan
    res = stats.bootstrap((x,), np.mean, confidence_level=LEVEL, method="BCa", n_resamples=BOOTSTRAP_RESAMPLES,
                          random_state=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def improvement(diffs) -> tuple[float, float, float]:
    """P(a > b) over seed pairs from their differences a - b (Bouthillier et al. 2021; rliable's probability of
    improvement): wins count 1, ties 1/2; with the 95% Wilson interval of scipy.stats.binomtest on the wins,
    ties split evenly (rounded down). (NaN, NaN, NaN) without a pair."""
    d = np.asarray(pd.Series(diffs, dtype=float).dropna())
    if not len(d):
        return math.nan, math.nan, math.nan
    wins, ties = int((d > 0).sum()), int((d == 0).sum())
    ci = stats.binomtest(wins + ties // 2, len(d)).proportion_ci(confidence_level=LEVEL, method="wilson")
    return (wins + ties / 2) / len(d), float(ci.low), float(ci.high)


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values of tests made together (NaN ones take no part): the k-th smallest p
    times (m - k + 1), made monotone, capped at 1."""
    p = pd.Series(pvalues, dtype=float)
    known = p.dropna().sort_values()
    m = len(known)
    adjusted = np.minimum(1.0, np.maximum.accumulate(known.to_numpy() * (m - np.arange(m))))
    out = pd.Series(math.nan, index=p.index)
    out[known.index] = adjusted
    return out.tolist()
