"""Per-trial checks of the classic bugs of this study, judged from the epoch rows each trial recorded (no torch).

Why: a "frozen" fine-tune whose frozen groups moved, a "pretrained" trial that loaded another backbone than its
rotation trial ended with, or a "random" trial that loaded one, all give plausible numbers; only the digests
train.py records tell. Each trial gets one short text for the trial table ("" when nothing applies), each
check in it "pass", "FAIL (why)" or "unchecked (why)"; every trial with a FAIL is a warning atop report.md.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

PASS, FAIL, UNCHECKED = "pass", "FAIL", "unchecked"
NOTE = ("checks: backbone = a pretrained trial loaded the weights its rotation trial ended with; loaded nothing = "
        "a random-init trial loaded no backbone; frozen = the frozen groups (weights, BatchNorm buffers) were "
        "bit-equal to what the trial started from after every epoch.")


def _check(name: str, outcome: str, why: str = "") -> str:
    return f"{name} {outcome}" + (f" ({why})" if why else "")


def trial_checks(record: dict[str, Any], by_key: dict[str, dict[str, Any]]) -> str:
    """The checks of one study.trial_records record (by_key: every record by its key, to find its rotation trial)."""
    rows, cfg = record["rows"], record["config"]
    if not rows:
        return ""
    if cfg["stage"] == "rotation":  # nothing to check: its backbone_digest is what its fine-tunes are checked by
        return "backbone recorded" if rows[-1].get("backbone_digest") else ""
    loaded = sorted({r.get("pretrained_digest") or "" for r in rows})
    if cfg.get("init") == "pretrained":
        source = by_key.get(record.get("depends_on") or "")
        name = source["name"] if source else "its rotation trial"
        expected = source["rows"][-1].get("backbone_digest") if source and source["rows"] else None
        if not expected:
            checks = [_check("backbone", UNCHECKED, f"{name} recorded no backbone digest")]
        elif loaded == [expected]:
            checks = [_check("backbone", PASS)]
        else:
            checks = [_check("backbone", FAIL, f"loaded {', '.join(d or 'nothing' for d in loaded)}, "
                                               f"{name} ended with {expected}")]
    else:
        checks = [_check("loaded nothing", PASS) if loaded == [""] else
                  _check("loaded nothing", FAIL, f"random init loaded {', '.join(d for d in loaded if d)}")]
    if (cfg.get("freeze") or 0) > 0:
        moved = [str(r["epoch"]) for r in rows if r.get("frozen_intact") is False]
        if moved:
            checks.append(_check("frozen", FAIL, f"frozen groups moved in epoch {', '.join(moved)}"))
        elif all(r.get("frozen_intact") is True for r in rows):
            checks.append(_check("frozen", PASS))
        else:
            checks.append(_check("frozen", UNCHECKED, "not recorded"))
    return "; ".join(checks)


def failures(text: str) -> list[str]:
    """The failed checks in a trial's checks text."""
    return [c for c in (text if isinstance(text, str) else "").split("; ") if c.split(" (")[0].endswith(f" {FAIL}")]


def warnings(trials: pd.DataFrame) -> list[str]:
    """One Markdown warning line per trial that failed a check or has a damaged file (report.md puts them
    under its title; `ablation report` says them on stderr too)."""
    return [f"> **Warning**: trial {row['trial']} failed a check: {'; '.join(failures(row['checks']))}"
            for _, row in trials.iterrows() if failures(row["checks"])] + \
        [f"> **Warning**: trial {row['trial']}: {row['damage']}" for _, row in trials.iterrows() if row.get("damage")]
