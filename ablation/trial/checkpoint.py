"""Checkpoint directories: written atomically, verified by checksum on load, found newest-valid-first.

Why: nothing already trained may be lost, and a torn or corrupt file must never be silently used. A
checkpoint is a directory holding `state.pt` (loaded with weights_only=True) and `meta.json` (epoch,
sha256 of state.pt). The same layout serves `ablation train` run dirs and Ray Tune trial checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..storage.atomic import write_atomic
from ..storage.files import OwnedTempDir
from ..storage.store import download, is_uri
from .models import HEAD_KEYS
from .rundir import CHECKPOINT_GLOB

STATE_FILE = "state.pt"
META_FILE = "meta.json"


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated or fails its checksum."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Hashing:
    """A file that hashes what is written to it: torch.save streams into the file and the hash in one pass
    (no in-memory copy of a 90 MB state)."""

    def __init__(self, fh):
        self.fh, self.sha256 = fh, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


@contextlib.contextmanager
def _without_zip_crc32():
    """torch.save's per-record CRC32 doubles its time (0.04 -> 0.12 s for 90 MB here) and torch.load never
    checks it; the sha256 in meta.json is the check that is read. Off while we save, as it was after."""
    get, put = (getattr(torch.serialization, f"{v}_crc32_options", None) for v in ("get", "set"))
    before = get() if get else None
    if put:
        put(False)
    try:
        yield
    finally:
        if put and before is not None:
            put(before)


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write state into directory (created); meta.json goes last, so a checkpoint without it is incomplete.
    state.pt is written as write_atomic does (temp file, fsync, rename), hashed while it is written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATE_FILE}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh, _without_zip_crc32():
        out = _Hashing(fh)
        torch.save(state, out)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / STATE_FILE)
    meta = {"epoch": state["epoch"], "epochs": state["epochs"], "stage": state["config"]["stage"],
            "sha256": out.sha256.hexdigest()}
    write_atomic(directory / META_FILE, json.dumps(meta, indent=1))
    return directory


def read_meta(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(directory) / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: no readable {META_FILE} ({exc})") from None


def load_checkpoint(directory: Path) -> dict[str, Any]:
    """Load and verify one checkpoint directory; raises CheckpointError if anything is off."""
    directory = Path(directory)
    meta = read_meta(directory)
    path = directory / STATE_FILE
    if not path.exists() or sha256_file(path) != meta.get("sha256"):
        raise CheckpointError(f"{path}: missing or fails its sha256 check (truncated or corrupt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run dir (rundir.CHECKPOINT_GLOB), newest first."""
    return newest_first([d for d in Path(run_dir).glob(CHECKPOINT_GLOB) if d.is_dir()])


def newest_first(dirs: list[Path]) -> list[Path]:
    """Order by the epoch in meta.json (a directory without a readable one last): epoch_NNNN names alone would
    put a torn directory first."""

    def key(d: Path) -> tuple[int, str]:
        try:
            return int(read_meta(d)["epoch"]), d.name
        except (CheckpointError, KeyError, ValueError):
            return -1, d.name

    return sorted(set(dirs), key=key, reverse=True)


def load_latest(candidates: list[Path], warn=None) -> dict[str, Any] | None:
    """The newest checkpoint that verifies; each bad one is skipped with one warning line."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    for directory in candidates:
        try:
            return load_checkpoint(directory)
        except CheckpointError as exc:
            warn(f"warning: skipping checkpoint {exc}; falling back to an older one")
    return None


def resolve_pretrained(source: str) -> dict[str, torch.Tensor]:
    """The backbone of a finished rotation run, from its run dir (newest valid checkpoint) or a checkpoint,
    local or at a URI (copied to a temp folder first)."""
    if is_uri(source):
        with OwnedTempDir("ablation-pretrained-") as tmp:  # removed after, or by the next one if killed
            local = download(source, Path(tmp) / "run")
            found = list(local.iterdir())
            if not found:
                raise CheckpointError(f"pretrained_from={source}: nothing there; point it at a rotation run dir")
            return resolve_pretrained(str(found[0] if len(found) == 1 and found[0].is_file() else local))
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"pretrained_from={source}: no such file or directory; point it at a rotation run dir")
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # not a torch file, or one that holds code (weights_only refuses it)
            raise CheckpointError(f"pretrained_from={source}: not a checkpoint torch can read as weights "
                                  f"({type(exc).__name__}); point it at a rotation run dir or a resnet18 "
                                  f"state dict") from None
        weights = state.get("model", state) if isinstance(state, dict) else None
        if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise CheckpointError(f"pretrained_from={source}: holds no state dict of weights; point it at a "
                                  f"rotation run dir or a resnet18 state dict")
    else:
        dirs = [path] if (path / META_FILE).exists() else checkpoint_dirs(path)
        state = load_latest(dirs)
        if state is None:
            raise CheckpointError(f"pretrained_from={source}: no valid checkpoint in it; train the rotation run first")
    if state.get("config", {}).get("stage") not in (None, "rotation"):
        raise CheckpointError(f"pretrained_from={source}: is a {state['config']['stage']} run, not a rotation run")
    if "epoch" in state and state["epoch"] < state["epochs"]:
        raise CheckpointError(f"pretrained_from={source}: rotation run stopped at epoch {state['epoch']} of "
                              f"{state['epochs']}; finish it first (rerun its command)")
    weights = state.get("model", state)  # a run's checkpoint, or a bare resnet18 state dict
    return {k: v for k, v in weights.items() if k not in HEAD_KEYS}
