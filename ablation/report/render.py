"""Numeric tables -> Markdown and LaTeX text (the CSV is the numeric frame itself).

Why: a reader wants "49.21 ± 1.30", "[37.5, 60.9]" and a mark where the report's number falls outside
our intervals, not eight float columns; and the setup keys that are the same in every row (dataset,
epochs, stem, ...) belong in the caption, where they tell which study the numbers come from.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .tables import Table, boot_note

LABELS = {"labels_per_class": "labels/class"}  # shorter headers; any other key is shown by its name
ALL_LABELS = {"labels_per_class", "pretrain.labels_per_class"}  # 0 means every label: shown as "all"
HIDDEN = (" std", " CI low", " CI high", " report", " report outside CI", " PI low", " PI high", " report outside PI",
          " n", " boot low", " boot high", " P(better) low", " P(better) high")  # in the CSV, not the Markdown
# (the Findings quote the prediction intervals; boot and P(better) intervals are shown beside their value)
DAGGER, DOUBLE_DAGGER = "†", "‡"  # outside the CI of our mean; outside the prediction interval of one run too
MISSING = "—"


def fmt(column: str, value) -> str:
    """One cell as text: NaN as a dash, labels_per_class 0 as "all", p-values and losses with 3 decimals."""
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return MISSING
    if column in ALL_LABELS:
        return "all" if value == 0 else str(int(value))
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if " " not in column:  # a config key (metric columns have spaces): its value as written, 0.0005 not 0.00
            return f"{value:g}"
        if column.endswith(" p"):
            return "<0.001" if value < 0.001 else f"{value:.3f}"
        if "P(better)" in column:
            return f"{value:.2f}"
        return f"{value:.3f}" if "loss" in column else f"{value:+.2f}" if "diff" in column else f"{value:.2f}"
    return str(value)


def label(key: str) -> str:
    return LABELS.get(key, key)


def constant_keys(frame: pd.DataFrame, keys) -> list[str]:
    return [k for k in keys if k in frame and frame[k].astype(str).nunique() == 1]


def describe(frame: pd.DataFrame, keys) -> list[str]:
    """"key value" per row for the given keys, e.g. "stem imagenet, labels/class all" ("" when no keys)."""
    return [", ".join(f"{label(k)} {fmt(k, row[k])}" for k in keys) for _, row in frame.iterrows()]


def variants(frame: pd.DataFrame, keys) -> list[str]:
    """Each row described by those of the keys that vary across the frame ("" when none do)."""
    return describe(frame, [k for k in keys if k in frame and frame[k].astype(str).nunique() > 1])


def _mean_sd(mean: str, sd: str) -> str:
    return mean if MISSING in (mean, sd) else f"{mean} ± {sd.lstrip('+')}"


def display(table: Table) -> tuple[str, list[tuple[str, list[str]]], set[str]]:
    """(caption of the constant keys, [(header, cells)], the marks that some report cell carries)."""
    df = table.frame
    constant = constant_keys(df, table.keys)
    caption = describe(df.head(1), constant)[0]
    columns = [(label(k), [fmt(k, v) for v in df[k]]) for k in table.keys if k in df and k not in constant]
    used: set[str] = set()
    for col in df.columns:
        if col in table.keys or col.endswith(HIDDEN):
            continue
        if col.endswith(" P(better)"):
            lows, highs = ([fmt(col, v) for v in df[f"{col} {end}"]] for end in ("low", "high"))
            columns.append(("P(better)", [MISSING if v == MISSING else f"{v} [{a}, {b}]"
                                          for v, a, b in zip((fmt(col, v) for v in df[col]), lows, highs)]))
            continue
        if not col.endswith(" mean"):
            head = "Holm p" if col.endswith(" Holm p") else col.split(" ")[-1] if col.endswith((" t", " p")) else \
                "seeds for ±" + col.rpartition("±")[2] if " seeds for ±" in col else col
            columns.append((head, [fmt(col, v) for v in df[col]]))
            continue
        p = col[: -len(" mean")]
        columns.append((p, [_mean_sd(fmt(col, m), fmt(col, s)) for m, s in zip(df[col], df[f"{p} std"])]))
        lows, highs = ([fmt(col, v) for v in df[f"{p} CI {end}"]] for end in ("low", "high"))
        columns.append(("95% CI", [MISSING if MISSING in (a, b) else f"[{a}, {b}]" for a, b in zip(lows, highs)]))
        if f"{p} boot low" in df and df[f"{p} boot low"].notna().any():
            lows, highs = ([fmt(col, v) for v in df[f"{p} boot {end}"]] for end in ("low", "high"))
            columns.append(("boot 95%", [MISSING if MISSING in (a, b) else f"[{a}, {b}]" for a, b in zip(lows, highs)]))
        if f"{p} report" in df:
            marks = [DOUBLE_DAGGER if pi else DAGGER if ci else "" for ci, pi in
                     zip(df[f"{p} report outside CI"].astype(bool), df[f"{p} report outside PI"].astype(bool))]
            used |= set(marks)
            columns.append(("report", [fmt(col, v) + mark for v, mark in zip(df[f"{p} report"], marks)]))
    return caption, columns, used - {""}


def notes(table: Table, marks: set[str]) -> list[str]:
    out = list(table.notes)
    boots = [c for c in table.frame.columns if c.endswith(" boot low")]
    if boots:  # said once per table: given where a cell has enough seeds, and why absent where none has
        out.append(boot_note(any(table.frame[c].notna().any() for c in boots),
                             any(table.frame[c].isna().any() for c in boots)))
    one = " / ".join(sorted({m.sample for m in table.metrics if m.reference}))  # what the report's number is
    if DAGGER in marks:
        out.append(f"{DAGGER} the report's number (one {one}) lies outside the 95% CI of our mean, but inside the "
                   f"95% prediction interval of one {one} of ours (mean ± t sd sqrt(1 + 1/n)): a single {one} of ours "
                   f"could have given it.")
    if DOUBLE_DAGGER in marks:
        out.append(f"{DOUBLE_DAGGER} the report's number (one {one}) lies outside the 95% CI of our mean and outside "
                   f"the 95% prediction interval of one {one} of ours (mean ± t sd sqrt(1 + 1/n)).")
    return out


def markdown(table: Table, level: int = 3) -> str:
    caption, columns, marks = display(table)
    lines = [f"{'#' * level} {table.title}", "", *([f"Setup: {caption}.", ""] if caption else [])]
    lines.append("| " + " | ".join(h for h, _ in columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    lines += ["| " + " | ".join(cells) + " |" for cells in zip(*(c for _, c in columns))]
    lines += [""] + [f"{n}  " for n in notes(table, marks)]
    return "\n".join(lines).rstrip() + "\n"


def _tex(text: str) -> str:
    for a, b in (("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_")):
        text = text.replace(a, b)
    for a, b in (("±", r"$\pm$"), (DAGGER, r"$^\dagger$"), (DOUBLE_DAGGER, r"$^\ddagger$"), (MISSING, "--"),
                 ("<", r"$<$")):
        text = text.replace(a, b)
    return text


def latex(table: Table) -> str:
    """A booktabs table environment with the setup in the caption and the notes under the tabular."""
    caption, columns, marks = display(table)
    title = table.title + (f" ({caption})" if caption else "")
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(title)}}}", rf"\label{{tab:{table.name}}}",
             r"\begin{tabular}{" + "l" * len(columns) + "}", r"\toprule",
             " & ".join(_tex(h) for h, _ in columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in cells) + r" \\" for cells in zip(*(c for _, c in columns))]
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\footnotesize " + " ".join(_tex(n) for n in notes(table, marks)),
              r"\end{table}"]
    return "\n".join(lines) + "\n"
