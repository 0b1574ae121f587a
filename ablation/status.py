"""`ablation status`: one line per planned trial of a study, read from its files (no Ray, no torch).

Why: a user coming back to an interrupted grid wants to see at a glance what is done, what is not,
and what failed, without starting anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .results import read_results
from .sweep import live_driver, read_manifest


def trial_states(study_dir: Path) -> list[dict[str, Any]]:
    study_dir = Path(study_dir)
    manifest = read_manifest(study_dir)
    live = live_driver(study_dir) is not None
    out = []
    for trial in manifest["trials"]:
        cfg, tdir = trial["config"], study_dir / trial["phase"] / trial["id"]
        rows = read_results(tdir)
        done = max((r.get("epoch", 0) for r in rows), default=0)
        last = next((r for r in reversed(rows) if r.get("epoch") == done), {})
        if done >= cfg["epochs"]:
            state = "finished"
        elif live:
            state = "running" if done else "pending"
        elif (tdir / "error.txt").exists():
            state = "errored"
        else:
            state = "interrupted" if done else "not started"
        out.append({"id": trial["id"], "stage": cfg["stage"], "seed": cfg["seed"],
                    "init": cfg["init"] if cfg["stage"] == "finetune" else "-",
                    "freeze": cfg["freeze"] if cfg["stage"] == "finetune" else "-", "state": state,
                    "epochs": f"{done}/{cfg['epochs']}", "test_acc": last.get("test_acc")})
    return out


def print_status(study_dir: Path) -> int:
    rows = trial_states(study_dir)
    cols = ("id", "stage", "seed", "init", "freeze", "state", "epochs", "test_acc")
    fmt = lambda r: {**r, "test_acc": "-" if r["test_acc"] is None else f"{r['test_acc']:.4f}"}  # noqa: E731
    table = [dict(zip(cols, cols))] + [fmt(r) for r in rows]
    widths = {c: max(len(str(r[c])) for r in table) for c in cols}
    for r in table:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0
