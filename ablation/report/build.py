"""`ablation report STUDY`: frames, tables, figures and report.md under STUDY/report/, swapped in whole.

Why: one command turns a study directory (finished or not) into everything a write-up needs, in seconds,
without torch or Ray, and can be rerun at any time while the sweep goes on.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from ..storage.atomic import write_atomic
from ..study.records import current_spec
from . import render
from .checks import NOTE, warnings
from .figures import write_figures
from .findings import findings, header, trial_state
from .frames import load_study, search_only
from .tables import Table, build_tables

TRIAL_COLUMNS = ["trial", "key", "state", "best acc (%)", "final acc (%)", "wall time (s)", "retrained",
                 "ran on (host/node)", "code", "checks"]


def write_frame(frame: pd.DataFrame, outdir: Path, name: str) -> None:
    write_atomic(outdir / f"{name}.csv", frame.to_csv(index=False))
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    write_atomic(outdir / f"{name}.parquet", buf.getvalue())


def write_table(table: Table, outdir: Path) -> None:
    write_atomic(outdir / f"{table.name}.csv", table.frame.to_csv(index=False))
    write_atomic(outdir / f"{table.name}.md", render.markdown(table))
    write_atomic(outdir / f"{table.name}.tex", render.latex(table))


def trials_table(trials: pd.DataFrame) -> Table:
    """Every trial the study planned, current spec first, with its state; the name says its cell, the key
    (a digest of its config) names its directory under trials/."""
    frame = trials.assign(**{"key": trials["key"].str[:10], "state": trials.apply(trial_state, axis=1),
                             "best acc (%)": trials["best_test_acc"] * 100,
                             "final acc (%)": trials["final_test_acc"] * 100, "wall time (s)": trials["wall_time_s"],
                             "ran on (host/node)": trials["ran_on"].fillna(""), "checks": trials["checks"].fillna("")})
    return Table("trial_states", "Trials", frame[TRIAL_COLUMNS], ["best / final = test accuracy at the best / last "
                                                                  "reported epoch; wall time = sum of epoch times; "
                                                                  "retrained = epochs trained again after an "
                                                                  "interruption (or lost to one, until trained "
                                                                  "again); code = the versions that trained it.",
                                                                  NOTE],
                 keys=["trial", "key", "state"])


def report_text(manifest: dict, epochs: pd.DataFrame, trials: pd.DataFrame, tables: list[Table],
                figures: list[tuple[str, str]]) -> str:
    lines = [f"# Ablation report: {manifest.get('study', '?')}", "", *(f"{w}\n" for w in warnings(trials)),
             *header(manifest, trials, epochs), "",
             "## Findings", "", *(f"- {s}" for s in findings(trials, tables)), "", "## Tables", "",
             "Each table is also in `tables/` as Markdown, LaTeX (`.tex`) and CSV; the tidy per-epoch and per-trial "
             "data are `tables/epochs.{csv,parquet}` and `tables/trials.{csv,parquet}`.", ""]
    for table in tables:
        lines += [render.markdown(table), ""]
    lines += ["## Figures", ""]
    for name, title in figures:
        lines += [f"### {title}", "", f"![{title}](figures/{name}.png)", "", f"SVG: `figures/{name}.svg`", ""]
    if not figures:
        lines += ["No figures: no trial has reported an epoch yet.", ""]
    lines += [render.markdown(trials_table(trials), level=2)]
    return "\n".join(lines)


def write_report(study_dir: Path, out: Path | None = None) -> Path:
    """Write {report.md, tables/, figures/} into out (default STUDY/report); returns the path of report.md.
    Built beside the old report and swapped in whole: no table or figure of an older spec (an axis since
    dropped) stays behind looking current, and a build that fails leaves the old report as it was. Its
    warnings (failed checks, damaged files) are said on stderr too."""
    study_dir = Path(study_dir)
    manifest, epochs, trials = load_study(study_dir)
    for line in warnings(trials):
        print("ablation: warning: " + line.removeprefix("> **Warning**: "), file=sys.stderr)
    report = Path(out) if out else study_dir / "report"
    report.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=".report.new-", dir=report.parent))
    old = new.with_name(new.name.replace(".new-", ".old-"))
    try:
        _build(manifest, epochs, trials, new)
        if report.exists():
            os.rename(report, old)
        try:
            os.rename(new, report)
        except OSError:
            if old.exists():
                os.rename(old, report)  # the old report back, not none
            raise
    finally:
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return report / "report.md"


def report_study(location: str, study: Path, out: Path | None = None) -> str:
    """`ablation report`: write the report of the study at `location` (a path or a URI; `study` is its local
    folder, for a URI a copy) into out, or into the study: for a URI the old report/ there is removed and the
    new one uploaded (if that fails, rerun it). Returns the line saying where it went."""
    from ..errors import UserError
    from ..storage.files import unwritable
    from ..storage.store import child, is_uri, remove_tree, upload

    if (out or not is_uri(location)) and (problem := unwritable((out or study / "report").parent)):
        raise UserError(f"cannot write the report {f'to {out}' if out else 'into the study'}: {problem}; "
                        f"give --out DIR, a folder you can write")
    written = write_report(study, out)
    if not is_uri(location) or out:
        return f"wrote {written}"
    remove_tree(child(location, "report"))
    upload(written.parent, str(child(location, "report")))
    return f"wrote {child(location, 'report', written.name)} (local copy: {written})"


def _build(manifest: dict, epochs: pd.DataFrame, trials: pd.DataFrame, out: Path) -> None:
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    write_frame(epochs, out / "tables", "epochs")
    write_frame(trials, out / "tables", "trials")
    tables = build_tables(trials, manifest.get("choices", {}), current_spec(manifest))
    for table in tables:
        write_table(table, out / "tables")
    effect = next((t.frame for t in tables if t.name == "pretraining_effect"), pd.DataFrame())
    current = trials[trials["current"]]
    cells = current[~search_only(current)]
    figures = write_figures(epochs[epochs["key"].isin(cells["key"])], cells, effect, out / "figures",
                            current[current["search"].fillna("").ne("")])
    write_atomic(out / "report.md", report_text(manifest, epochs, trials, tables, figures))
