"""A single run's directory for `ablation train`: config + provenance, metrics.csv, rolling checkpoints.

Why: a run killed at any moment must resume from its last epoch when its command is run again, and a
directory must never silently mix two configs. Layout:
    DIR/run.json                  config, provenance, data copy, digest of a pretrained backbone
    DIR/metrics.csv               one row per epoch (train.METRIC_COLUMNS)
    DIR/checkpoints/epoch_NNNN/   the newest KEEP checkpoints (state.pt + meta.json)
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from . import provenance
from .atomic import write_atomic
from .checkpoint import checkpoint_dirs, load_latest, save_checkpoint
from .config import ConfigError, TrialConfig
from .train import METRIC_COLUMNS, train

KEEP = 2  # the newest checkpoint plus one to fall back on if it is found corrupt


def metrics_csv(history: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def _check_same_config(out: Path, cfg: TrialConfig) -> None:
    try:
        old = json.loads((out / "run.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"{out} is not empty and holds no readable run.json; choose another --out") from None
    changed = sorted(k for k in set(old) | set(cfg.to_dict()) if old.get(k) != cfg.to_dict().get(k))
    if changed:
        k = changed[0]
        raise ConfigError(f"{out} holds a run with another config ({k}: {old.get(k)!r} there, "
                          f"{cfg.to_dict().get(k)!r} now); choose another --out")


def run(cfg: TrialConfig, out: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train cfg into out, resuming from its newest valid checkpoint if the same config was started there."""
    out = Path(out).resolve()
    resume = None
    if out.exists() and any(out.iterdir()):
        _check_same_config(out, cfg)
        resume = load_latest(checkpoint_dirs(out), warn=log)
        if resume is not None and resume["epoch"] >= cfg.epochs:
            log(f"{out}: already finished ({cfg.epochs} epochs); nothing to do")
            return resume["history"]

    def on_epoch(row: dict[str, Any], state: dict[str, Any]) -> None:
        # The dir appears with the first finished epoch: bad input (no data, no GPU) leaves nothing behind.
        if not (out / "run.json").exists():
            out.mkdir(parents=True, exist_ok=True)
            record = {"config": cfg.to_dict(), "data_fingerprint": state["data_fingerprint"],
                      "pretrained_digest": state["pretrained_digest"], "device": row["device"],
                      "provenance": provenance.record()}
            write_atomic(out / "run.json", json.dumps(record, indent=1))
        save_checkpoint(out / "checkpoints" / f"epoch_{row['epoch']:04d}", state)
        write_atomic(out / "metrics.csv", metrics_csv(state["history"]))
        for stale in checkpoint_dirs(out)[KEEP:]:
            shutil.rmtree(stale, ignore_errors=True)

    return train(cfg, on_epoch, resume=resume, log=log)
