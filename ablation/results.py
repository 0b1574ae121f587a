"""Reading a sweep trial's metrics (no torch, no ray): shared by status, the report and the tests.

Each trial dir holds metrics.jsonl, written by the trainable from its checkpoint's history (exactly one row
per epoch of the state the trial continues from), and trained.log, one line per epoch ever trained.
Tune's own result.json is only a fallback: after a SIGKILL of the driver Tune may restart it and lose rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


METRICS_FILE = "metrics.jsonl"
TRAINED_LOG = "trained.log"


def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """One dict per epoch row, in order; a torn last line is skipped."""
    trial_dir = Path(trial_dir)
    path = trial_dir / METRICS_FILE
    return _json_lines(path if path.exists() else trial_dir / "result.json")


def epochs_trained(trial_dir: Path) -> int:
    """How many epochs this trial trained in all, retrained ones counted again."""
    return len(_json_lines(Path(trial_dir) / TRAINED_LOG))


def _json_lines(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows
