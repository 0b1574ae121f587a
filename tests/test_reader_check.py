"""A reader's check of the committed reports: with only a report's `tables/` (pandas and scipy, none of this
package's code), recompute every cell, paired effect and check verdict that its report.md states, and fail if
one differs. What a reviewer of the results can do without running anything."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

RESULTS = Path(__file__).parents[1] / "results"
# report-cifar10's study was reported before the tables carried the digests and frozen-group flags per epoch,
# and its trial dirs are not kept: its numbers are checked, its check verdicts cannot be redone from tables/.
REPORTS = {"demo": True, "report-cifar10": False}  # folder -> whether tables/ carry what the checks read


def summary(values: pd.Series) -> tuple[int, float, float, float, float]:
    """n, mean, sample sd, 95% t-interval: the textbook computation."""
    x = values.dropna().astype(float)
    n, mean, sd = len(x), x.mean(), x.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return n, mean, sd, mean - half, mean + half


def cell(values: pd.Series, spec: str = ".2f") -> str:
    """`mean ± sd | [low, high]` as report.md writes a cell."""
    _, mean, sd, low, high = summary(values)
    return f"{mean:{spec}} ± {sd:{spec.lstrip('+')}} | [{low:{spec}}, {high:{spec}}]"


def section(report: str, title: str) -> str:
    start = report.index(f"### {title}")
    return report[start:report.index("\n### ", start + 4)]


@pytest.fixture(params=list(REPORTS), scope="module")
def committed(request):
    folder = RESULTS / request.param
    trials = pd.read_csv(folder / "tables" / "trials.csv")
    trials = trials[trials["current"] & trials["finished"]]
    epochs = pd.read_csv(folder / "tables" / "epochs.csv", dtype={"loaded_digest": str, "backbone_digest": str})
    return request.param, trials, epochs, (folder / "report.md").read_text()


def test_every_cell_is_the_mean_and_t_interval_of_its_trials(committed):
    _, trials, _, report = committed
    rotation = trials[trials["stage"] == "rotation"]
    text = section(report, "Rotation pretraining (")
    n = len(rotation)
    assert f"| {n} | {n} | {cell(rotation['best_test_acc'] * 100)} |" in text
    assert f"| {cell(rotation['final_test_acc'] * 100)} | {cell(rotation['lowest_test_loss'], '.3f')} |" in text
    checked = 0
    for freeze, title in ((4, "Partial fine-tuning ("), (0, "Full fine-tuning (")):
        text = section(report, title)
        for init in ("pretrained", "random"):
            runs = trials[(trials["stage"] == "finetune") & (trials["freeze"] == freeze) & (trials["init"] == init)]
            assert f"| {init} | {len(runs)} | {len(runs)} | {cell(runs['best_test_acc'] * 100)} |" in text, \
                (freeze, init)
            assert f"| {cell(runs['final_test_acc'] * 100)} |" in text, (freeze, init)
            checked += 1
    assert checked == 4


def test_every_paired_effect_is_the_paired_t_test_of_its_seeds(committed):
    _, trials, _, report = committed
    text = section(report, "Effect of rotation pretraining")
    finetunes = trials[trials["stage"] == "finetune"]
    for freeze in (0, 4):
        by_init = {init: finetunes[(finetunes["freeze"] == freeze) & (finetunes["init"] == init)].set_index("seed")
                   for init in ("pretrained", "random")}
        row = next(line for line in text.splitlines() if line.startswith(f"| {freeze} | "))
        for column in ("best_test_acc", "final_test_acc"):
            a, b = (by_init[init][column] * 100 for init in ("pretrained", "random"))
            a, b = a.align(b, join="inner")
            test = stats.ttest_rel(a, b)
            assert f"| {cell(a - b, '+.2f')} |" in row, (freeze, column, row)
            p = "<0.001" if test.pvalue < 0.001 else f"{test.pvalue:.3f}"
            assert f"| {test.statistic:+.2f} | {p} |" in row, (freeze, column, row)
        assert row.startswith(f"| {freeze} | {len(a)} | ")


def test_every_check_verdict_follows_from_the_digests_and_frozen_flags(committed):
    name, trials, epochs, report = committed
    if not REPORTS[name]:
        assert "loaded_digest" not in epochs  # when the tables carry them, this report is checked too
        pytest.skip(f"{name}: its tables/ predate the digest columns and its study is not kept")
    final = trials.set_index("key")["backbone_digest"]
    verdicts = 0
    for _, trial in trials.iterrows():
        rows = epochs[epochs["key"] == trial["key"]]
        if trial["stage"] == "rotation":
            expected = ["backbone recorded"]
        elif trial["init"] == "pretrained":
            loaded = set(rows["loaded_digest"].fillna(""))
            expected = ["backbone pass" if loaded == {final[trial["depends_on"]]} else "backbone FAIL"]
        else:
            expected = ["loaded nothing pass" if set(rows["loaded_digest"].fillna("")) == {""} else
                        "loaded nothing FAIL"]
        if trial["stage"] == "finetune" and trial["freeze"] > 0:
            expected.append("frozen pass" if rows["frozen_intact"].astype(bool).all() else "frozen FAIL")
        line = next(line for line in report.splitlines() if line.startswith(f"| {trial['trial']} | "))
        assert line.rstrip(" |").endswith("; ".join(expected)), (trial["trial"], line)
        verdicts += 1
    assert verdicts == len(trials) > 0
