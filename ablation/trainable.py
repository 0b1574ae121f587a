"""The Ray Tune trainable: the only training-side module that touches Ray.

Why: Tune gives scheduling, retries and checkpoint bookkeeping; the training itself stays in train.py.
Config in (one planned trial), one `tune.report(metrics, checkpoint=...)` per epoch out. On (re)start the
trial resumes from the newest checkpoint that verifies, looking both at what Tune hands back and at its
own trial directory, because Tune's experiment snapshot can lag the last reported epoch after a SIGKILL.
For the same reason the trial keeps its own record next to Tune's: metrics.jsonl (the history of the
state it continues from, rewritten atomically) and trained.log (append-only, one line per epoch trained).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from . import provenance, store
from .checkpoint import checkpoint_dirs, load_latest, newest_first, save_checkpoint
from .config import TrialConfig
from .results import METRICS_FILE, TRAINED_LOG
from .store import Location
from .train import train


def run_trial(param: dict[str, Any]) -> None:
    """param["trial"] = {"id", "config" (TrialConfig dict), "dir" (the trial's storage dir), "gpu" (fraction)}."""
    config = param["trial"]
    cfg = TrialConfig.from_dict(config["config"])
    if config.get("gpu") and cfg.device != "cpu":
        import torch

        if torch.cuda.is_available():  # a fractional GPU also caps this trial's share of its memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, float(config["gpu"])))
    trial_dir: Location | None = (config["dir"] if store.is_uri(config["dir"]) else Path(config["dir"])) \
        if config.get("dir") else None
    resume = _resume_state(trial_dir)

    def metrics(row: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        return {**row, "trial": config["id"], "epochs": cfg.epochs, "data_fingerprint": state["data_fingerprint"],
                "pretrained_digest": state["pretrained_digest"]}

    def write_history(state: dict[str, Any]) -> None:
        if trial_dir is not None:
            store.write_file(store.child(trial_dir, METRICS_FILE),
                             "".join(json.dumps(metrics(r, state)) + "\n" for r in state["history"]))

    def on_epoch(row: dict[str, Any], state: dict[str, Any]) -> None:
        if trial_dir is not None:  # append-only audit: every epoch this trial ever trained, retrained ones too
            store.append_line(store.child(trial_dir, TRAINED_LOG),
                              json.dumps({"epoch": row["epoch"], "pid": os.getpid(), "time": provenance.now()}))
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp), state)
            tune.report(metrics(row, state), checkpoint=tune.Checkpoint.from_directory(tmp))
        write_history(state)

    if resume is not None:
        # The history file is the checkpoint's: a kill between the two (or Tune restarting its own
        # result.json) can leave the file behind or ahead of the state that training continues from.
        write_history(resume)
    train(cfg, on_epoch, resume=resume, log=lambda msg: print(f"[{config['id']}] {msg}", flush=True))


def _resume_state(trial_dir: Location | None) -> dict[str, Any] | None:
    """Newest verified state among the trial dir's checkpoints and the one Tune restored (if any). On URI
    storage Tune's checkpoints live in the trial dir too: it is copied to a temp folder and scanned there."""
    if trial_dir is not None and store.is_uri(trial_dir):
        with tempfile.TemporaryDirectory() as tmp:
            return load_latest(checkpoint_dirs(store.download(trial_dir, Path(tmp))))
    local = checkpoint_dirs(trial_dir) if trial_dir and trial_dir.exists() else []
    given = tune.get_checkpoint()
    return load_latest(newest_first(local + ([Path(given.path)] if given else [])))
