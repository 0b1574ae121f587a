"""The words of report.md: the header facts of a study and one-sentence findings from the tables.

Why: a reader should learn from the first screen which data and code produced the numbers, whether the
study is complete, and what the effect of pretraining was with its uncertainty, in plain sentences.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from . import reference
from .render import MISSING, fmt, variants
from .tables import GAP_BEST, GAP_FINAL, ROTATION_METRICS, Table

FREEZE_NAMES = {0: "full fine-tuning (freeze 0)", 4: "partial fine-tuning (freeze 4)"}
VARIANT_KEYS = ["stem", "labels_per_class", "lr"]


def trial_state(row: pd.Series) -> str:
    if row["finished"]:
        return "finished"
    return "missing" if row["epochs_done"] == 0 else f"unfinished ({row['epochs_done']}/{row['epochs_planned']} epochs)"


def header(manifest: dict[str, Any], trials: pd.DataFrame, epochs: pd.DataFrame) -> list[str]:
    """Bullet lines: study, dataset and data fingerprint, code version(s), trials finished / planned."""
    prov = manifest.get("provenance", {})
    versions = [prov.get("code_version", "unknown")]
    versions += [r["code_version"] for r in manifest.get("runs", []) if r.get("code_version") not in versions]
    data = manifest.get("data", {})
    datasets = sorted(set(trials["dataset"]))
    lines = [f"- Study: **{manifest.get('study', '?')}**" + (f" — {manifest['description']}"
                                                          if manifest.get("description") else ""),
             "- Dataset: " + ", ".join(f"{d} (data fingerprint {data.get(d, 'unknown')})" for d in datasets),
             "- Code version: " + ", ".join(versions) + (" (runs used more than one)" if len(versions) > 1 else ""),
             f"- Spec digest: {manifest.get('spec_digest', '?')}; created {manifest.get('created', '?')}",
             f"- Trials finished: {int(trials['finished'].sum())} of {len(trials)} planned"]
    devices = sorted(set(epochs["device"].dropna()))
    if devices:
        lines.append("- Trained on: " + "; ".join(devices))
    lines += sweep_cost(manifest, epochs)
    seen = set(epochs["data_fingerprint"].dropna()) - set(data.values())
    if seen:
        lines.append(f"- **Warning**: result lines carry data fingerprints {sorted(seen)} that the manifest does not "
                     f"list: some trials trained on other data")
    return lines


def sweep_cost(manifest: dict[str, Any], epochs: pd.DataFrame) -> list[str]:
    """How much of the slots' wall time went into training epochs: the rest is Ray, start-up, phase waits.
    A driver killed with SIGKILL records no end time, so a study with such a run gets no figure: counting
    its epochs against the other runs' wall time alone would overstate the share (above 100%)."""
    runs = manifest.get("runs", [])
    slots = manifest.get("slots")
    if not runs or not slots or epochs.empty:
        return []
    killed = sum(1 for r in runs if not r.get("ended"))
    if killed:
        return [f"- Sweep cost: not computed: {killed} of {len(runs)} invocation(s) ended without recording an "
                f"end time (killed, or still running)"]
    wall = sum((pd.Timestamp(r["ended"]) - pd.Timestamp(r["started"])).total_seconds() for r in runs)
    train = epochs["epoch_time_s"].sum()
    return [f"- Sweep cost: {wall / 60:.1f} min of wall time over {len(runs)} invocation(s) x {slots:g} parallel "
            f"slots; training epochs took {train / 60:.1f} min of it, {100 * train / (wall * slots):.0f}% of "
            f"the slots (the rest: Ray and trial start-up, data loading, waiting for pretraining)"]


def _ci(iv_row: pd.Series, label: str) -> str:
    low, high = (fmt(f"{label} mean", iv_row[f"{label} CI {s}"]) for s in ("low", "high"))
    return "no CI (fewer than 2 seeds)" if MISSING in (low, high) else f"95% CI [{low}, {high}]"


def rotation_findings(table: Table) -> list[str]:
    m, out = ROTATION_METRICS[0], []
    for variant, (_, row) in zip(_variants(table.frame), table.frame.iterrows()):
        if row["n seeds"] == 0:
            out.append(f"Rotation pretraining{variant}: no finished trial yet.")
            continue
        text = (f"Rotation pretraining{variant} reached a best-epoch test accuracy of "
                f"{fmt(m.label + ' mean', row[m.label + ' mean'])} %, {_ci(row, m.label)}, "
                f"n = {_seeds(row['n seeds'])}")
        ref = row.get(f"{m.label} report")
        if pd.notna(ref) and pd.notna(row[f"{m.label} CI low"]):
            where = "outside" if row[f"{m.label} report outside CI"] else "inside"
            text += f"; the report's {ref} % lies {where} this interval"
        out.append(text + ".")
    return out


def effect_findings(table: Table) -> list[str]:
    out = []
    for variant, (_, row) in zip(_variants(table.frame), table.frame.iterrows()):
        name = FREEZE_NAMES.get(row["freeze"], f"fine-tuning with freeze {row['freeze']}")
        if row["n pairs"] == 0:
            out.append(f"Pretraining effect on {name}{variant}: no finished pretrained/random seed pair yet.")
            continue
        b, f = GAP_BEST.label, GAP_FINAL.label
        text = (f"Pretraining changes {name}{variant} best-epoch test accuracy by {fmt(b + ' mean', row[b + ' mean'])} "
                f"points, {_ci(row, b)}, paired p = {fmt(b + ' p', row[b + ' p']).replace(MISSING, 'n/a')}, "
                f"n = {_seeds(row['n pairs'])} "
                f"(final epoch: {fmt(f + ' mean', row[f + ' mean'])} points, {_ci(row, f)}")
        ref = row.get(f"{b} report")
        text += f"; report: {fmt(b + ' mean', ref)} points)." if pd.notna(ref) else ")."
        out.append(text)
    return out


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _variants(frame: pd.DataFrame) -> list[str]:
    return [f" [{d}]" if d else "" for d in variants(frame, VARIANT_KEYS)]


def findings(trials: pd.DataFrame, tables: list[Table]) -> list[str]:
    """Bullet sentences: data caveat, unfinished trials, rotation accuracy, pretraining effect per freeze depth."""
    out = []
    datasets = set(trials["dataset"])
    if datasets != {reference.REPORT_DATASET}:
        out.append(f"This study used {', '.join(sorted(datasets))}; the report's numbers are for "
                   f"{reference.REPORT_DATASET} (ResNet18, ImageNet stem, {reference.REPORT_FINETUNE_EPOCHS} fine-tune "
                   f"epochs), so comparisons with them are not meaningful here; they are shown for context only.")
    unfinished = trials[~trials["finished"]]
    if len(unfinished):
        out.append(f"{len(unfinished)} of {len(trials)} planned trials are unfinished: tables use finished trials only "
                   f"(cells without any show —); learning curves show every reported epoch. See Trials below.")
    by_name = {t.name: t for t in tables}
    if "rotation" in by_name:
        out += rotation_findings(by_name["rotation"])
    if "pretraining_effect" in by_name:
        out += effect_findings(by_name["pretraining_effect"])
    if not out:
        out.append("No results yet.")
    return out
