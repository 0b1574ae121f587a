"""The report's statistics beyond the t-interval: bootstrap intervals, P(better), Holm's adjustment, the
variance sources, and how the tables show them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ablation.report.render import markdown
from ablation.report.stats import bootstrap_interval, holm, improvement
from ablation.report.tables import GAP_BEST, GAP_FINAL, Table, pretraining_effect, variance_sources


def test_bootstrap_is_given_from_8_values_on_and_agrees_with_scipy():
    assert all(math.isnan(v) for v in bootstrap_interval(range(7)))
    assert all(math.isnan(v) for v in bootstrap_interval([3.0] * 9))  # no spread: nothing to resample
    x = np.random.default_rng(1).normal(2.0, 1.0, 12)
    low, high = bootstrap_interval(x)
    ref = stats.bootstrap((x,), np.mean, method="BCa", n_resamples=9999, random_state=np.random.default_rng(0))
    assert (low, high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert low < x.mean() < high and bootstrap_interval(x) == (low, high)  # seeded: a rebuilt report agrees


def test_probability_of_improvement_counts_ties_half_with_a_wilson_interval():
    p, low, high = improvement([1.0, 2.0, -1.0, 0.0, 3.0])
    assert p == pytest.approx(3.5 / 5)
    ci = stats.binomtest(3, 5).proportion_ci(method="wilson")  # 3 wins + half of 1 tie, rounded down
    assert (low, high) == pytest.approx((ci.low, ci.high))
    assert all(math.isnan(v) for v in improvement([]))


def test_holm_adjusts_step_down_and_leaves_missing_p_values_out():
    assert holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx([0.03, 0.06, float("nan"), 0.06], nan_ok=True)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == [0.02]


def _trials(value, data_seeds=3, seeds=4):
    return pd.DataFrame([{"freeze": 4, "init": "random", "data_seed": d, "seed": s, "finished": True,
                          "final_test_acc": value(d, s) / 100} for d in range(data_seeds) for s in range(seeds)])


def test_variance_sources_recover_known_components():
    """No interaction: the data_seed component is exactly the sample variance of the data offsets, the seed
    component that of the seed offsets, the interaction 0."""
    data, seed = [0.0, 5.0, 9.0], [0.0, 1.0, -1.0, 0.5]
    (row,) = variance_sources(_trials(lambda d, s: 50 + data[d] + seed[s]), ["freeze", "init"]).to_dict("records")
    assert row["data_seed sd (pts)"] == pytest.approx(np.std(data, ddof=1))
    assert row["seed sd (pts)"] == pytest.approx(np.std(seed, ddof=1))
    assert row["interaction + noise sd (pts)"] == pytest.approx(0.0, abs=1e-9)
    assert row["data_seed share"] > 0.9 and row["data seeds"] == 3 and row["seeds"] == 4
    unfinished = _trials(lambda d, s: 50 + data[d] + seed[s]).assign(finished=lambda f: f["seed"] != 3)
    (row,) = variance_sources(unfinished, ["freeze", "init"]).to_dict("records")
    assert row["seeds"] == 3  # the complete grid only


def test_the_effect_table_adds_holm_p_better_and_seeds_needed_and_says_why_no_bootstrap():
    rows = []
    for freeze, gap in ((4, [2.0, 2.5, 1.5]), (0, [0.5, -1.0, 3.0])):
        for seed, g in enumerate(gap):
            for init, acc in (("pretrained", 60 + g), ("random", 60.0)):
                rows.append({"freeze": freeze, "init": init, "seed": seed, "finished": True,
                             "best_test_acc": acc / 100, "final_test_acc": acc / 100})
    effect = pretraining_effect(pd.DataFrame(rows), ["freeze", "init"], (GAP_BEST, GAP_FINAL), halfwidth=1.0)
    by = effect.set_index("freeze")
    assert list(effect[f"{GAP_BEST.label} Holm p"]) == pytest.approx(holm(effect[f"{GAP_BEST.label} p"]))
    assert by.at[4, f"{GAP_BEST.label} P(better)"] == 1.0
    sd = np.std([2.0, 2.5, 1.5], ddof=1)
    n = by.at[4, f"{GAP_BEST.label} seeds for ±1"]
    assert stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= 1.0 < stats.t.ppf(0.975, n - 2) * sd / math.sqrt(n - 1)
    text = markdown(Table("pretraining_effect", "t", effect, keys=["freeze"], metrics=(GAP_BEST, GAP_FINAL)))
    assert "| Holm p |" in text and "P(better)" in text and "seeds for ±1" in text
    assert "no cell here has 8, so none is given" in text and "boot 95%" not in text
