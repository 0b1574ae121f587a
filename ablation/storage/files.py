"""Local files a command reads or will write: a YAML mapping, whether a folder could be written, and the
temp folders a process leaves behind.

Why: output locations are checked before any data loading, training or Ray start, and a spec or config
file is read the one way (safe_load), so either is one line when it is wrong, not a traceback later. A
process killed with SIGKILL (Tune stops a trial's actor so) cleans nothing up: its temp folders hold a lock
that the kernel drops with the process, and the next process to make one on that machine removes them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UserError


def unwritable(path: str | os.PathLike) -> str | None:
    """Why a directory could not be created at `path` or written in, or None when it can (nothing is created:
    the nearest existing ancestor must be a writable directory). Output locations are checked with this
    before any data loading or training, so a bad one costs a line, not a run."""
    try:
        probe = Path(path).expanduser().absolute()
        while not probe.exists():
            probe = probe.parent
    except (OSError, ValueError) as exc:
        return f"cannot be reached ({getattr(exc, 'strerror', None) or exc})"
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable (read-only file system or no permission)"
    return None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file (safe_load only); a malformed file is one line with its line number."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}; check the path") from None
    except (UnicodeDecodeError, ValueError):  # binary or not UTF-8; a NUL byte in the path
        raise ConfigError(f"{path}: not a UTF-8 text file; give a YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where} ({problem}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level")
    return data


class OwnedTempDir(tempfile.TemporaryDirectory):
    """A temp folder `<prefix>*` holding an flock on its OWNER_LOCK for as long as its process lives (the kernel
    drops it at exit, SIGKILL included: no process id to trust, none reused, the same across containers that
    share /tmp). Made, it first removes the folders of this prefix whose lock nobody holds; a folder without
    the lock file (being made right now, or of an older release) is left alone."""

    OWNER_LOCK = ".owner.lock"

    def __init__(self, prefix: str):
        for old in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
            _remove_if_abandoned(old, self.OWNER_LOCK)
        super().__init__(prefix=prefix)
        self._lock = os.open(Path(self.name, self.OWNER_LOCK), os.O_CREAT | os.O_WRONLY, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def cleanup(self) -> None:
        super().cleanup()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _remove_if_abandoned(folder: Path, lock_name: str) -> None:
    try:
        lock = os.open(folder / lock_name, os.O_WRONLY)
    except OSError:  # no lock file, or another user's folder
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its process is alive
        os.close(lock)
        return
    shutil.rmtree(folder, ignore_errors=True)
    os.close(lock)
