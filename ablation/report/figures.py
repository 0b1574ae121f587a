"""Figures of a study (PNG and SVG): learning curves, rotation curve, accuracy against each fine-tuning axis
that varies (freeze depth, labels per class, weight decay, any key), and the pretrained - random gap.

Why: the tables give the numbers, the figures show the shape (is training converged, does the gap grow
with freeze depth). Bands and error bars are the same 95% t-intervals over seeds as the tables. Figures
are drawn on matplotlib's Agg canvas without pyplot (no global state, no display needed); a figure whose
data is absent (no rotation trials, one label count) is skipped.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..storage.atomic import write_atomic
from . import render
from .frames import cell_keys
from .stats import Interval, t_interval
from .tables import BEST, FINAL, GAP_BEST, GAP_FINAL, INITS

COLORS = dict(zip(INITS, sns.color_palette("colorblind", len(INITS))))
METRIC_STYLE = {BEST.column: ("best epoch", "-"), FINAL.column: ("final epoch", "--")}
ALL_LABELS_LS = {"-": ":", "--": "-."}
ACC = "test accuracy (%)"


def variants(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Panel or line label of each row (render.variants as a Series on the frame's index)."""
    return pd.Series(render.variants(frame, keys), index=frame.index, dtype=object)


def _grid(nrows: int, ncols: int, title: str):
    width = max(4.4 * ncols + 0.8, 7.5)
    fig = Figure(figsize=(width, 3.6 * nrows + 0.8), layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    fig.suptitle(textwrap.fill(title, int(width * 9)))
    return fig, axes


def _band(ax, frame: pd.DataFrame, x: str, y: str, **style) -> None:
    """Mean of y (fraction -> %) per x with its 95% t-band over seeds."""
    xs, ivs = zip(*((xv, t_interval(g[y] * 100)) for xv, g in frame.groupby(x)))
    ax.plot(xs, [iv.mean for iv in ivs], marker="o", **style)
    ax.fill_between(xs, [iv.low for iv in ivs], [iv.high for iv in ivs], alpha=0.2, color=style.get("color"), lw=0)


def _errorbars(ax, xs, ivs: list[Interval], **style) -> None:
    """Means with 95% CI bars (a mean without an interval is drawn without a bar)."""
    means = np.array([iv.mean for iv in ivs])
    err = np.nan_to_num([means - [iv.low for iv in ivs], [iv.high for iv in ivs] - means])
    ax.errorbar(xs, means, yerr=err, marker="o", capsize=4, **style)


def _label(ax, title: str, xlabel: str, ylabel: str, legend_title: str | None = None) -> None:
    """Titles, axis labels and legend."""
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title=legend_title, fontsize="small")


def _clip_y(fig: Figure, limit: float = 100) -> None:
    """Clip each panel's y range to [0 (accuracy) or -limit, limit]: few seeds give wide t-intervals. Run once
    every panel is drawn: panels share y, and a range fixed earlier would cut off the panels drawn after it."""
    for ax in fig.axes:
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 0 if "accuracy (%)" in ax.get_ylabel() else -limit), min(high, limit))


def _ft_variant_keys(trials: pd.DataFrame, drop: tuple[str, ...]) -> list[str]:
    return [k for k in cell_keys(trials[trials["stage"] == "finetune"]) if k not in drop]


def learning_curves(epochs, trials, effect):
    ft = epochs[epochs["stage"] == "finetune"]
    if ft.empty:
        return None
    ft = ft.assign(variant=variants(ft, _ft_variant_keys(trials, ("freeze", "init"))))
    freezes, rows = sorted(ft["freeze"].unique(), reverse=True), sorted(ft["variant"].unique())
    fig, axes = _grid(len(rows), len(freezes), "Fine-tuning test accuracy per epoch (mean and 95% CI over seeds)")
    for i, variant in enumerate(rows):
        for j, freeze in enumerate(freezes):
            ax, cell = axes[i][j], ft[(ft["variant"] == variant) & (ft["freeze"] == freeze)]
            for init, g in cell.groupby("init"):
                _band(ax, g, "epoch", "test_acc", label=init, color=COLORS.get(init))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _label(ax, ", ".join(filter(None, [f"freeze {freeze}", variant])), "epoch", ACC, "init")
    return fig


def rotation_curve(epochs, trials, effect):
    rot = epochs[epochs["stage"] == "rotation"]
    if rot.empty:
        return None
    rot = rot.assign(variant=variants(rot, cell_keys(trials[trials["stage"] == "rotation"])))
    fig, axes = _grid(1, 1, "Rotation pretraining test accuracy per epoch (mean and 95% CI over seeds)")
    ax = axes[0][0]
    for variant, g in rot.groupby("variant"):
        _band(ax, g, "epoch", "test_acc", label=variant or "rotation")
    ax.axhline(25, color="grey", ls=":", label="chance (4 rotations)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _label(ax, "", "epoch", "rotation " + ACC)
    return fig


def _positions(values: list) -> tuple[dict, bool]:
    """x position of each axis value, and whether the axis is logarithmic: numbers whose positive values span
    10x or more go on a log axis (0, e.g. "all labels", is then drawn as a horizontal line); words are placed
    in order at 0, 1, 2, ..."""
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)
    if not numeric:
        return {v: i for i, v in enumerate(sorted(values, key=str))}, False
    positive = [v for v in values if v > 0]
    log = len(positive) >= 2 and max(positive) / min(positive) >= 10
    return {v: v for v in values}, log


def accuracy_by(x: str):
    """Figure maker: best- and final-epoch accuracy (mean, 95% CI) against axis x, a line per init and metric,
    a panel per combination of the other varying keys."""

    def make(epochs, trials, effect):
        done = trials[(trials["stage"] == "finetune") & trials["finished"]].dropna(subset=[x])
        if done.empty or done[x].astype(str).nunique() < 2:
            return None
        position, log = _positions(list(done[x].unique()))
        done = done.assign(variant=variants(done, _ft_variant_keys(trials, ("init", x))))
        panels = sorted(done["variant"].unique())
        fig, axes = _grid(1, len(panels), f"Test accuracy by {render.label(x)} (mean and 95% CI over seeds)")
        for ax, variant in zip(axes[0], panels):
            for init, g in done[done["variant"] == variant].groupby("init"):
                points = g[g[x] > 0] if log else g
                cells = sorted(points[x].unique(), key=lambda v: position[v])
                for k, (column, (name, ls)) in zip((-1, 1), METRIC_STYLE.items()):  # best / final side by side
                    xs = [position[c] * (1 + 0.04 * k) if log else position[c] + 0.06 * k for c in cells]
                    _errorbars(ax, xs, [t_interval(points.loc[points[x] == c, column] * 100) for c in cells],
                               color=COLORS.get(init), ls=ls, label=f"{init}, {name}")
                    if log and (g[x] == 0).any():
                        ax.axhline(g.loc[g[x] == 0, column].mean() * 100, color=COLORS.get(init), lw=1,
                                   ls=ALL_LABELS_LS[ls], label=f"{init}, {name}, {render.fmt(x, 0)}")
            if log:
                ax.set_xscale("log")
            ticks = sorted((v for v in position if not log or v > 0), key=lambda v: position[v])  # words: no log
            ax.set_xticks([position[v] for v in ticks], [render.fmt(x, v) for v in ticks])
            ax.minorticks_off()
            _label(ax, variant, render.label(x) + (" (log scale)" if log else ""), ACC, "init, epoch")
        return fig

    return make


def _interval(row: pd.Series, label: str) -> Interval:
    return Interval(int(row[f"{label} n"]), *(row[f"{label} {s}"] for s in ("mean", "std", "CI low", "CI high")))


def pretraining_gap(epochs, trials, effect):
    if effect.empty or not effect["n pairs"].any():
        return None
    effect = effect.assign(variant=variants(effect, [k for k in _ft_variant_keys(trials, ("freeze", "init"))
                                                     if k in effect]))
    fig, axes = _grid(1, 1, "Effect of rotation pretraining: pretrained - random (mean and 95% CI, paired by seed)")
    ax = axes[0][0]
    palette = sns.color_palette("dark", effect["variant"].nunique())
    for color, (variant, g) in zip(palette, effect.groupby("variant")):
        for offset, m, ls in ((-0.06, GAP_BEST, "-"), (0.06, GAP_FINAL, "--")):
            _errorbars(ax, g["freeze"] + offset, [_interval(r, m.label) for _, r in g.iterrows()], color=color, ls=ls,
                       label=", ".join(filter(None, [variant, METRIC_STYLE[m.column][0]])))
        for _, r in g.iterrows():  # cells may have different n (a precision target gives each its own)
            top = max(r[f"{m.label} CI high"] for m in (GAP_BEST, GAP_FINAL))
            ax.annotate(f"n={int(r['n pairs'])}", (r["freeze"], top if top == top else r[f"{GAP_BEST.label} mean"]),
                        xytext=(0, 6), textcoords="offset points", fontsize=8, color=color, ha="center")
    ref = effect.dropna(subset=[f"{GAP_BEST.label} report"])
    if len(ref):
        ax.scatter(ref["freeze"], ref[f"{GAP_BEST.label} report"], marker="x", s=60, color="black",
                   label="report (CIFAR-10, best epoch)", zorder=3)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xticks(sorted(effect["freeze"].unique()))
    _label(ax, "", "freeze depth (0 = full fine-tuning, 4 = layer4 + fc)", "pretrained - random test accuracy (points)")
    return fig


def validation_by(x: str):
    """Figure maker over a cell's search trials: the best validation accuracy of each against searched key x,
    a line per init through the finished ones, a cross where ASHA stopped one, a star at each cell's choice
    (the tuning playbook's view of a scientific comparison at its best nuisance values)."""

    def make(epochs, search, effect):
        s = search.dropna(subset=[x, "best_val_acc"])
        if s.empty or s[x].astype(str).nunique() < 2:
            return None
        position, log = _positions(list(s[x].unique()))
        s = s.assign(variant=variants(s, [k for k in cell_keys(s) if k != "init"]))
        panels = sorted(s["variant"].unique())
        fig, axes = _grid(1, len(panels), f"Validation accuracy of each search trial by {render.label(x)} "
                                          f"(best epoch; x = stopped early by ASHA, * = the cell's choice)")
        for ax, variant in zip(axes[0], panels):
            for init, g in s[s["variant"] == variant].groupby("init"):
                color = COLORS.get(init)
                done = g[g["finished"]].sort_values(x)
                ax.plot(done[x], done["best_val_acc"] * 100, marker="o", color=color, label=init)
                cut = g[g["state"] == "stopped early"]
                ax.scatter(cut[x], cut["best_val_acc"] * 100, marker="x", color=color)
                chosen = g[g["chosen"].fillna("").ne("")]
                ax.scatter(chosen[x], chosen["best_val_acc"] * 100, marker="*", s=180, color=color, zorder=3)
            if log:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.minorticks_off()
            _label(ax, variant, render.label(x) + (" (log scale)" if log else ""), "validation accuracy (%)", "init")
        return fig

    return make


def search_makers(search: pd.DataFrame) -> dict:
    tuned = sorted({k for t in search["tuned"].dropna() for k in str(t).split(",") if k})
    return {f"validation_by_{k}": validation_by(k) for k in tuned}


def figure_makers(trials: pd.DataFrame) -> dict:
    """The figures of this study: the fixed ones, and accuracy against each fine-tuning axis that varies."""
    by_axis = {f"accuracy_by_{k.replace('.', '_')}": accuracy_by(k) for k in _ft_variant_keys(trials, ("init",))}
    return {"rotation_curve": rotation_curve, "learning_curves": learning_curves, **by_axis,
            "pretraining_gap": pretraining_gap}


def save(fig: Figure, outdir: Path, name: str) -> None:
    FigureCanvasAgg(fig)
    for ext, extra in (("png", {"dpi": 150}), ("svg", {"metadata": {"Date": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, **extra)
        write_atomic(outdir / f"{name}.{ext}", buf.getvalue())


def write_figures(epochs: pd.DataFrame, trials: pd.DataFrame, effect: pd.DataFrame, outdir: Path,
                  search: pd.DataFrame | None = None) -> list[tuple]:
    """Draw every figure the data supports; [(file stem, title)] of those written. trials: the study's cells
    (search-only trials left out); search: the tune block's search trials, when there are any."""
    written = []
    makers = {name: (make, trials) for name, make in figure_makers(trials).items()}
    if search is not None and len(search):
        makers.update({name: (make, search) for name, make in search_makers(search).items()})
    for name, (make, frame) in makers.items():
        fig = make(epochs, frame, effect)
        if fig is not None:
            _clip_y(fig)
            save(fig, outdir, name)
            written.append((name, fig.get_suptitle().replace("\n", " ")))
    return written
