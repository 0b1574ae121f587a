"""`ablation status`: one line per trial of a study, read from its files (no Ray, no torch).

Why: a user coming back to an interrupted or grown grid wants to see at a glance what is done, what is not,
what failed, and which trials an earlier spec ran that the current one no longer asks for.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .precision import WAITING, assess, collect, score
from .records import current_spec, read_manifest, trial_records

COLUMNS = ("trial", "key", "state", "epochs", "test_acc", "last on")


def print_status(study_dir: Path) -> int:
    manifest = read_manifest(study_dir)
    records = trial_records(study_dir, manifest)
    rows = []
    for r in records:
        last = r["rows"][-1] if r["rows"] else {}
        state = r["state"] + (f" ({r['reason']})" if r["reason"] else "")
        rows.append({"trial": r["name"], "key": r["key"][:10], "state": state,
                     "epochs": f"{last.get('epoch', 0)}/{r['config']['epochs']}",
                     "test_acc": "-" if not last else f"{last['test_acc']:.4f}", "current": r["current"],
                     "last on": "-" if not last else "/".join(filter(None, (last.get("host"), last.get("node", "")[:8])))
                     or "?"})
    for r in records:
        if r["damage"]:
            print(f"ablation: warning: trial {r['name']}: {r['damage']} (under {r['location']})", file=sys.stderr)
    current = [r for r in rows if r["current"]]
    outside = [r for r in rows if not r["current"]]
    _print_table(current)
    counts: dict[str, int] = {}
    for r in records:
        if r["current"]:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials")
    searched = {r.get("search") for r in records if r["current"]}
    for cell, choice in (manifest.get("choices") or {}).items():  # the current tune block's choices (tuning.py)
        if cell not in searched:
            continue
        values = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in (choice.get("values") or {}).items()) or "none (no search trial finished)"
        score = f" ({choice['metric']} {choice['score']:.4f})" if choice.get("score") is not None else ""
        print(f"chosen for {cell}: {values}{score}, {choice.get('tried')} configurations tried, "
              f"{choice.get('stopped')} search trials stopped early")
    for line in precision_lines(manifest, records):
        print(line)
    if outside:
        print(f"\n{len(outside)} trial(s) outside the current spec (kept on disk, not in the report):")
        _print_table(outside)
    return 0


def precision_lines(manifest: dict, records: list[dict]) -> list[str]:
    """Per effect of an until cell: pairs finished of the seeds planned, the half-width now, and where it
    stands (waiting for seeds, target met, ...)."""
    spec = current_spec(manifest)
    if spec is None:
        return []
    values = collect((r["group"], r["variant"], r["config"]["seed"], r["state"],
                      score(r["rows"], spec.until.metric) if r["rows"] else None)
                     for r in records if r["current"] and r.get("group"))
    out = []
    for e in assess(spec.until, spec.seeds, values, dict.fromkeys(values, spec.baseline)):
        now = "—" if e.halfwidth != e.halfwidth else f"±{e.halfwidth:.2f}"
        out.append(f"until {e.group}: {e.variant} - {e.baseline}: n {e.n} of {e.seeds} seeds planned, {now} "
                   f"(target ±{spec.until.halfwidth:g}), {e.reason}"
                   + (" (rerun the sweep to train them)" if e.reason == WAITING and not any(
                       r["state"] == "running" for r in records) else ""))
    return out


def _print_table(rows: list[dict]) -> None:
    table = [dict(zip(COLUMNS, COLUMNS))] + rows
    widths = {c: max(len(str(r[c])) for r in table) for c in COLUMNS}
    for r in table:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS).rstrip())
