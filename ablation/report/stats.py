"""Mean, spread and 95% t-intervals over seeds, and the paired pretrained-vs-random test.

Why: a study has few seeds (2-5), so intervals use Student's t, not a normal approximation or a
bootstrap; with fewer than two values there is no interval and the result says so (NaN). The report's
numbers are single runs: the CI of our mean says where the mean is, the prediction interval where one more
run (or seed pair) would fall, which is what a single run is to be compared with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95


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


def paired_test(a: pd.Series, b: pd.Series) -> Paired:
    """a - b over the index values (seeds) both have: t-interval of the differences and scipy's ttest_rel."""
    both = pd.concat({"a": a, "b": b}, axis=1).dropna()
    diff = t_interval(both["a"] - both["b"])
    if len(both) < 2 or diff.std == 0:  # no spread (identical runs): the t-test is undefined, not p = 0
        return Paired(diff, math.nan, math.nan)
    res = stats.ttest_rel(both["a"], both["b"])
    return Paired(diff, float(res.statistic), float(res.pvalue))
