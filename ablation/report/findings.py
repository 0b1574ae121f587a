"""The words of report.md: the header facts of a study and one-sentence findings from the tables.

Why: a reader should learn from the first screen which data and code produced the numbers, whether the
study is complete, and what the effect of pretraining was with its uncertainty, in plain sentences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..storage import provenance
from ..study import records
from ..study.trial_states import STOPPED
from ..trial.config import dataset_of
from . import reference
from .frames import fixed_keys, search_only
from .render import MISSING, describe, fmt, variants
from .tables import GAP_AT_VAL, GAP_BEST, GAP_FINAL, ROTATION_METRICS, Metric, Table

FREEZE_NAMES = {0: "full fine-tuning (freeze 0)", 4: "partial fine-tuning (freeze 4)"}


def trial_state(row: pd.Series) -> str:
    """The study's state of a trial, its progress when unfinished, and whether the current spec asks for it."""
    text = row["state"] if row["finished"] else f"{row['state']} ({row['epochs_done']}/{row['epochs']} epochs)"
    return text if row["current"] else f"{text}, outside the current spec"


def _data_copy(source: str, d: dict[str, Any]) -> str:
    """e.g. "imagefolder cifar10-jpeg = cifar10: 50,000 train / 10,000 test images, 10 classes, 3x32x32
    (data fingerprint eec90e10bd2f5438)": the copy by its folder's name and its fingerprint, which identifies
    it wherever it lives (its path on one machine says nothing on another; the manifest keeps it);
    studies from before the descriptions were recorded: fingerprint only."""
    dataset, _, where = source.partition(":")
    text = f"{dataset} {Path(where).name if where else ''}".strip()
    if "train_images" in d:
        task = f" = {d['task']}" if d["task"] != dataset else ""
        text += (f"{task}: {d['train_images']:,} train / {d['test_images']:,} test images, {len(d['classes'])} "
                 f"classes, {'x'.join(map(str, d['image_shape']))}")
    return f"{text} (data fingerprint {d['fingerprint']})"


def header(manifest: dict[str, Any], trials: pd.DataFrame, epochs: pd.DataFrame) -> list[str]:
    """Bullet lines: study, dataset and data fingerprint, code version(s), trials finished / planned, the fixed
    settings of each stage, devices and the sweep's cost."""
    runs = manifest.get("invocations", [])
    versions = list(dict.fromkeys(r.get("code_version", "unknown") for r in runs)) or ["unknown"]
    sources = records.data_sources(manifest)
    current = trials[trials["current"]]
    stopped = int((current["state"] == STOPPED).sum())
    datasets = sorted(set(current["dataset"]))
    last = runs[-1] if runs else {}
    lines = [f"- Study: **{manifest.get('study', '?')}**" + (f" — {manifest['description']}"
                                                          if manifest.get("description") else ""),
             "- Data: " + "; ".join([_data_copy(source, d) for source, d in sources.items()
                                     if dataset_of(source) in datasets]
                                    + [f"{d} (data fingerprint unknown)" for d in datasets
                                       if not any(dataset_of(source) == d for source in sources)]),
             "- Code version: " + ", ".join(versions) + (" (runs used more than one)" if len(versions) > 1 else "")
             + f"; this report written by {provenance.code_version()}",
             f"- Spec digest: {last.get('spec_digest', '?')} (invocation {len(runs)} of the study); created "
             f"{manifest.get('created', '?')}",
             f"- Trials finished: {int(current['finished'].sum())} of {len(current)} planned"
             + (f" ({stopped} search trial(s) stopped early by ASHA: done, not unfinished)" if stopped else ""),
             "- Epoch selection: every *best* number (best acc, best diff, and the report's, which it printed so) "
             "picks its epoch on the test set, an optimistic estimate; *final* (the last epoch) selects nothing"
             + ("; *at best val* picks its epoch on the validation split, held out of the training images"
                if current["best_val_epoch"].notna().any() else "; no trial held out a validation split "
                "(val_split) to select on")]
    for stage, title in (("rotation", "rotation pretraining"), ("finetune", "fine-tuning")):
        cells = current[(current["stage"] == stage) & ~search_only(current)]
        keys = fixed_keys(cells)
        if keys:  # what a reader must know to rerun it, beside the axes the tables show
            lines.append(f"- Fixed, {title}: {describe(cells.head(1), keys)[0]}")
    outside = len(trials) - len(current)
    if outside:
        lines.append(f"- {outside} trial(s) of earlier specs lie outside the current spec: kept on disk, listed "
                     f"under Trials, left out of every table and figure")
    devices = sorted(set(epochs["trained_on"].dropna()))
    if devices:
        lines.append("- Trained on: " + "; ".join(devices))
    lines += sweep_cost(runs, trials)
    seen = set(epochs["data_fingerprint"].dropna()) - {d["fingerprint"] for d in sources.values()}
    if seen:
        lines.append(f"- **Warning**: result lines carry data fingerprints {sorted(seen)} that the manifest does not "
                     f"list: some trials trained on other data")
    return lines


def sweep_cost(runs: list[dict[str, Any]], trials: pd.DataFrame) -> list[str]:
    """How much of the slots' wall time went into epochs: the rest is Ray, start-up, dependency waits, work
    lost to kills. A driver killed with SIGKILL records no end: its run ends at its log's last line
    (records.with_ends), or counts 0 s without one; while one still runs there is no figure, since counting the
    epochs against the other runs' wall time alone would overstate the share (above 100%)."""
    epochs = float(trials["wall_time_s"].fillna(0).sum())
    if not runs or not epochs:
        return []
    cost = records.sweep_cost(runs, epochs, len(trials))
    if cost is None:
        return ["- Sweep cost: not computed: still running"]
    slots = sorted({r.get("slots", 1) for r in runs})
    undated = sum(1 for r in runs if not r.get("ended") and not r.get("last_logged"))
    killed = sum(1 for r in runs if not r.get("ended")) - undated
    return [f"- Sweep cost: {cost['wall_s'] / 60:.1f} min of wall time over {len(runs)} invocation(s) x "
            f"{'/'.join(f'{s:g}' for s in slots)} parallel slots"
            + (f" ({killed} killed: each ends at its log's last line: at most {records.LOG_EVERY:.0f} s early, or "
               f"{(records.LOG_UPLOAD_EVERY + records.LOG_EVERY) / 60:.1f} min for a log on object storage)"
               if killed else "")
            + (f" ({undated} killed before a log line dated its end: counted as 0 s, so the wall time is a lower "
               f"bound and the share in epochs an upper one)" if undated else "")
            + f"; epochs (training + evaluation) took "
            f"{cost['epochs_s'] / 60:.1f} min of it, {100 * cost['share']:.0f}% of the slots, "
            f"{cost['wall_over_ideal']:.2f}x the ideal wall time (the rest: Ray and trial start-up, data loading, "
            f"checkpoints, waiting for pretraining, work lost to kills: {cost['fixed_per_trial_s']:.1f} s per "
            f"trial)"]


def _ci(iv_row: pd.Series, label: str) -> str:
    low, high = (fmt(f"{label} mean", iv_row[f"{label} CI {s}"]) for s in ("low", "high"))
    return "no CI (fewer than 2 seeds)" if MISSING in (low, high) else f"95% CI [{low}, {high}]"


def rotation_findings(table: Table) -> list[str]:
    m, out = ROTATION_METRICS[0], []
    for variant, (_, row) in zip(_variants(table), table.frame.iterrows()):
        if row["n seeds"] == 0:
            out.append(f"Rotation pretraining{variant}: no finished trial yet.")
            continue
        text = (f"Rotation pretraining{variant} reached a best-epoch test accuracy of "
                f"{fmt(m.label + ' mean', row[m.label + ' mean'])} %, {_ci(row, m.label)}, "
                f"n = {_seeds(row['n seeds'])}")
        ref = row.get(f"{m.label} report")
        if pd.notna(ref) and pd.notna(row[f"{m.label} CI low"]):
            text += f"; the report's {ref} % (one {m.sample}) lies {_against(row, m)}"
        out.append(text + ".")
    return out


def effect_findings(table: Table) -> list[str]:
    out = []
    for variant, (_, row) in zip(_variants(table), table.frame.iterrows()):
        name = FREEZE_NAMES.get(row["freeze"], f"fine-tuning with freeze {row['freeze']}")
        if row["n pairs"] == 0:
            out.append(f"Pretraining effect on {name}{variant}: no finished pretrained/random seed pair yet.")
            continue
        b, f, v = GAP_BEST.label, GAP_FINAL.label, GAP_AT_VAL.label
        text = (f"Pretraining changes {name}{variant} best-epoch test accuracy by {_gap(row, b)}, "
                f"n = {_seeds(row['n pairs'])} (final epoch: {_gap(row, f, _fewer(row, f))}).")
        ref = row.get(f"{b} report")
        if pd.notna(ref) and pd.notna(row[f"{b} CI low"]):  # the report's one pair against ours: the claim's answer
            text += (f" The report's best-epoch difference, {fmt(b + ' mean', ref)} points, lies "
                     f"{_against(row, GAP_BEST)}.")
        elif pd.notna(ref):
            text += f" The report's best-epoch difference: {fmt(b + ' mean', ref)} points."
        if f"{v} mean" in row and pd.notna(row[f"{v} mean"]):  # the unbiased number, chosen without the test set
            text += f" At the epoch chosen on validation data: {_gap(row, v, _fewer(row, v))}."
        out.append(text)
    return out


def _gap(row: pd.Series, label: str, n: str = "") -> str:
    """e.g. "+1.88 points, 95% CI [-3.33, +7.09], paired p = 0.137" (or "p < 0.001") of one difference column."""
    p = fmt(label + " p", row[label + " p"]).replace(MISSING, "n/a").replace("<", "< ")
    return (f"{fmt(label + ' mean', row[label + ' mean'])} points, {_ci(row, label)}, "
            f"paired p {p if p.startswith('<') else '= ' + p}{n}")


def _fewer(row: pd.Series, label: str) -> str:
    """", n = 2 seeds" when this difference has fewer pairs than the best-epoch one (a metric some trials lack)."""
    n = row.get(f"{label} n", row["n pairs"])
    return "" if pd.isna(n) or n == row["n pairs"] else f", n = {_seeds(int(n))}"


def _against(row: pd.Series, metric: Metric) -> str:
    """Where the report's single number lies: against the CI of our mean, and against the prediction interval
    of one more run (or seed pair) of ours, the range one run would fall in 95% of the time."""
    label, one = metric.label, metric.sample
    low, high = (fmt(f"{label} mean", row[f"{label} PI {end}"]) for end in ("low", "high"))
    interval = f"the 95% prediction interval of one {one} of ours [{low}, {high}]"
    if row[f"{label} report outside PI"]:
        return f"outside the 95% CI of our mean and outside {interval}"
    if row[f"{label} report outside CI"]:
        return f"outside the 95% CI of our mean but inside {interval}"
    return f"inside the 95% CI of our mean (and so inside {interval})"


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _variants(table: Table) -> list[str]:
    """Each row's cell, named by its varying keys other than freeze (which the sentence names itself)."""
    return [f" [{d}]" if d else "" for d in variants(table.frame, [k for k in table.keys if k != "freeze"])]


def precision_findings(table: Table) -> list[str]:
    """One sentence per effect of an until cell: where it stopped, at what n and half-width, and why."""
    out = []
    for _, r in table.frame.iterrows():
        mean, low, high = (r[f"effect (pts) {k}"] for k in ("mean", "CI low", "CI high"))
        half = r["half-width (pts)"]
        where = "" if low != low else f" {mean:+.2f} points, 95% CI [{low:+.2f}, {high:+.2f}] (±{half:.2f}),"
        out.append(f"{r['cell']}, {r['effect']}:{where} n = {int(r['n pairs'])} of {int(r['seeds planned'])} seeds "
                   f"planned; {r['stop']} (target ±{r['target (pts)']:g}; Stein's rule asked for "
                   f"{'—' if pd.isna(r['Stein pairs']) else int(r['Stein pairs'])} pairs).")
    return out


def findings(trials: pd.DataFrame, tables: list[Table]) -> list[str]:
    """Bullet sentences: data caveat, unfinished trials, rotation accuracy, pretraining effect per freeze depth."""
    out = []
    trials = trials[trials["current"]]
    context = reference.context_note(trials.to_dict("records"))
    if context:
        out.append(context)
    copies = sorted(set(trials.loc[trials["task"] == reference.REPORT_DATASET, "dataset"]) - {reference.REPORT_DATASET})
    if copies:
        out.append(f"The {reference.REPORT_DATASET} images came from a copy ({', '.join(copies)}; see Data above), "
                   f"not torchvision's original batches: accuracy on a copy may differ (on the lossy CIFAR-10 JPEG "
                   f"copy, by about a point, its README says), so a report number just outside our intervals may reflect "
                   f"the copy, not the method.")
    unfinished = trials[~trials["finished"] & (trials["state"] != STOPPED)]
    if len(unfinished):
        out.append(f"{len(unfinished)} of {len(trials)} planned trials are unfinished: tables use finished trials only "
                   f"(cells without any show —); learning curves show every reported epoch. See Trials below.")
    by_name = {t.name: t for t in tables}
    if "rotation" in by_name:
        out += rotation_findings(by_name["rotation"])
    if "pretraining_effect" in by_name:
        out += effect_findings(by_name["pretraining_effect"])
    if "precision" in by_name:
        out += precision_findings(by_name["precision"])
    if "tuning_choices" in by_name:
        chosen = by_name["tuning_choices"].frame["chosen on"].isin(["val_acc", "val_loss"])
        out.append("Each fine-tuning cell ran at its own chosen configuration (see the choices table): the "
                   "comparisons above are the tuning playbook's, each side at its best nuisance values on validation "
                   "data; read them at the epoch chosen on validation data too ('at best val'), since 'best' picks "
                   "the epoch on the test set." if chosen.all() else
                   f"{int((~chosen).sum())} searched cell(s) have no choice yet (see the choices table): their "
                   f"cells are missing from the comparisons above.")
    if not out:
        out.append("No results yet.")
    return out
