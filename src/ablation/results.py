"""Reading Tune's per-trial result.json (no torch, no ray): shared by status, the trainable and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """One dict per logged row, in order (resumed trials may repeat an epoch); a torn last line is skipped."""
    rows = []
    path = Path(trial_dir) / "result.json"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows
