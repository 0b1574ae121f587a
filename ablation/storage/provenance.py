"""Where a result came from: code version, package versions, host, time.

Why: an ablation number is only as good as its provenance; every run dir and study manifest carries this.
"""

from __future__ import annotations

import datetime as _dt
import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .. import __version__

PACKAGES = ("torch", "torchvision", "ray", "numpy", "pandas")


@functools.cache
def code_version() -> str:
    """`<package version>+g<git sha>[.dirty]` when run from a git checkout, else the package version. Once per
    process: the code a process imported does not change under it, and every epoch records it."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def since(started: str) -> float:
    """Seconds from a now() time to now."""
    return (_dt.datetime.now(_dt.timezone.utc) - _dt.datetime.fromisoformat(started)).total_seconds()


def record() -> dict:
    return {"code_version": code_version(), "packages": package_versions(), "python": platform.python_version(),
            "host": platform.node(), "time": now()}
