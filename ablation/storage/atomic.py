"""Atomic file writes without heavy imports.

Why: readers (a user opening report.md, a CI step collecting tables) must see the old file or the new
one, never half of one, and the analysis code must not import torch just to get this helper.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temp file in the same directory, fsync, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
