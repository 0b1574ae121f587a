"""Numeric summary tables of a study: one row per cell (all seeds of one configuration), percent units.

Why: the questions the study answers are fixed (does rotation pretraining reach the report's accuracy,
does it help partial or full fine-tuning, how do freeze depth and label count change that); each is
one table here, computed from the trials frame, with the report's number beside ours where comparable.
Only finished trials enter a cell (a half-trained trial's "final" accuracy is not final); `n seeds`
and `planned` say how many did. Rendering to Markdown / LaTeX lives in render.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from . import reference
from .stats import Interval, paired_test, t_interval

SETUP = ["dataset", "epochs_planned", "stem", "labels_per_class", "lr"]
ROTATION_KEYS = SETUP
FINETUNE_KEYS = SETUP + ["freeze", "init"]
PAIR_KEYS = SETUP + ["freeze"]
LABEL_KEYS = ["dataset", "epochs_planned", "stem", "lr", "freeze", "labels_per_class", "init"]
INITS = ("pretrained", "random")
SUMMARY_NOTE = ("best = highest test accuracy over epochs (what the report printed); final = last epoch. "
                "Mean ± sample sd over seeds; 95% CI = Student t-interval over seeds (none with n < 2). "
                "Only finished trials count: n seeds of planned.")
EFFECT_NOTE = ("diff = pretrained - random accuracy of the same seed, in points (best or final epoch); mean ± sd "
               "and 95% t-interval over seed pairs; t, p = paired t-test (scipy.stats.ttest_rel); "
               "none with fewer than 2 finished pairs. report = the report's pretrained - random.")


@dataclass(frozen=True)
class Metric:
    label: str  # column prefix in the table
    column: str  # column of the trials frame
    scale: float = 100.0  # fractions -> percent
    reference: Callable[[dict], float] | None = None  # the report's number for a cell, NaN where none


BEST = Metric("best acc (%)", "best_test_acc", reference=reference.finetune_best_acc)
FINAL = Metric("final acc (%)", "final_test_acc")
ROTATION_METRICS = [Metric("best acc (%)", "best_test_acc", reference=reference.rotation_best_acc),
                    Metric("final acc (%)", "final_test_acc"),
                    Metric("lowest loss", "lowest_test_loss", 1.0, reference.rotation_lowest_loss)]
GAP_BEST = Metric("best diff (pts)", "best_test_acc", reference=reference.finetune_gap)
GAP_FINAL = Metric("final diff (pts)", "final_test_acc")


@dataclass
class Table:
    name: str  # file stem under report/tables/
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=lambda: [SUMMARY_NOTE])


def metric_columns(metric: Metric, iv: Interval, cell: dict) -> dict:
    """mean / std / CI columns of one metric, and the report's number with an outside-our-CI flag."""
    out = {f"{metric.label} mean": iv.mean, f"{metric.label} std": iv.std,
           f"{metric.label} CI low": iv.low, f"{metric.label} CI high": iv.high}
    if metric.reference:
        ref = metric.reference(cell)
        out[f"{metric.label} report"] = ref
        out[f"{metric.label} report outside CI"] = not iv.contains(ref)
    return out


def summarize(trials: pd.DataFrame, keys: list[str], metrics: list[Metric]) -> pd.DataFrame:
    """One row per cell of `keys`: n finished seeds, planned trials, and each metric's interval over seeds."""
    rows = []
    for values, cell in trials.groupby(keys, sort=True):
        key = dict(zip(keys, values))
        done = cell[cell["finished"]]
        row = {**key, "n seeds": len(done), "planned": len(cell)}
        for m in metrics:
            row.update(metric_columns(m, t_interval(done[m.column] * m.scale), key))
        rows.append(row)
    return pd.DataFrame(rows)


def pretraining_effect(finetune: pd.DataFrame) -> pd.DataFrame:
    """Pretrained - random per (setup, freeze), paired by seed: mean difference, 95% CI, paired t-test."""
    rows = []
    for values, cell in finetune.groupby(PAIR_KEYS, sort=True):
        if not set(INITS) <= set(cell["init"]):
            continue
        key = dict(zip(PAIR_KEYS, values))
        done = cell[cell["finished"]]
        side = {init: done[done["init"] == init].set_index("seed") for init in INITS}
        row = dict(key)
        for m in (GAP_BEST, GAP_FINAL):
            res = paired_test(side["pretrained"][m.column] * m.scale, side["random"][m.column] * m.scale)
            row["n pairs"] = res.diff.n
            row.update(metric_columns(m, res.diff, key))
            row.update({f"{m.label} t": res.t, f"{m.label} p": res.p})
        rows.append(row)
    return pd.DataFrame(rows)


def build_tables(trials: pd.DataFrame) -> list[Table]:
    """Every table the study's trials support, in report order (absent data: table left out)."""
    rotation = trials[trials["stage"] == "rotation"]
    finetune = trials[trials["stage"] == "finetune"]
    tables = []
    if len(rotation):
        tables.append(Table("rotation", "Rotation pretraining (predict 0/90/180/270 degrees)",
                            summarize(rotation, ROTATION_KEYS, ROTATION_METRICS)))
    for freeze, name, title in ((4, "finetune_partial", "Partial fine-tuning (freeze 4: layer4 + fc trained)"),
                                (0, "finetune_full", "Full fine-tuning (freeze 0: every layer trained)")):
        part = finetune[finetune["freeze"] == freeze]
        if len(part):
            tables.append(Table(name, title, summarize(part, FINETUNE_KEYS, [BEST, FINAL])))
    effect = pretraining_effect(finetune)
    if len(effect):
        tables.append(Table("pretraining_effect", "Effect of rotation pretraining: pretrained - random, "
                            "paired by seed (points of test accuracy)", effect, [EFFECT_NOTE]))
    if not set(finetune["freeze"]) <= {0, 4}:
        tables.append(Table("by_freeze", "Test accuracy by freeze depth and init",
                            summarize(finetune, FINETUNE_KEYS, [BEST, FINAL])))
    if finetune["labels_per_class"].nunique() > 1:
        tables.append(Table("by_labels", "Test accuracy by labels per class and init",
                            summarize(finetune, LABEL_KEYS, [BEST, FINAL])))
    return tables
