"""Where a result came from: code version, package versions, host, time.

Why: an ablation number is only as good as its provenance; every run dir and study manifest carries this.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .. import __version__

PACKAGES = ("torch", "torchvision", "ray", "numpy", "pandas")


@functools.cache
def code_version() -> str:
    """`<package version>+g<git sha>[.dirty]` when run from a git checkout; else (a copy without .git, an
    installed wheel) `<package version>+src.<digest of the package's source files>`, so that two different
    copies never record the same version. Once per process: the code a process imported does not change
    under it, and every epoch records it."""
    package = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(package), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--untracked-files=no", "--",
                                "."], capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"{__version__}+src.{source_digest(package)}"


def source_digest(package: Path) -> str:
    """sha256 over the package's .py files (their paths and bytes), 12 hex digits."""
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


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
