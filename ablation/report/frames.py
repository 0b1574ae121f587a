"""Study directory -> two tidy frames: one row per trial per epoch, one row per planned trial.

Why: every table, figure and finding is computed from these frames, so this is the one place that knows
the study layout: the manifest's planned trials, and Tune's `<phase>/<trial>/result.json` lines, where an
epoch retrained after a resume appears twice (the last line wins) and the last line may be torn by a kill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..results import read_results
from ..sweep import StudyError, read_manifest

# What identifies a trial's cell (all seeds of one configuration); dataset and epochs are constant in a study.
CELL_KEYS = ["dataset", "epochs_planned", "stage", "stem", "labels_per_class", "lr", "freeze", "init"]
CONFIG_KEYS = CELL_KEYS + ["seed"]
# Per-epoch values kept from each result line ("lr" there is the scheduled lr, renamed to keep the config's).
EPOCH_KEYS = {"epoch": "epoch", "train_loss": "train_loss", "train_acc": "train_acc", "test_loss": "test_loss",
              "test_acc": "test_acc", "lr": "epoch_lr", "epoch_time_s": "epoch_time_s",
              "train_images_per_s": "train_images_per_s", "time_total_s": "time_total_s",
              "data_fingerprint": "data_fingerprint", "device": "device"}


def load_manifest(study_dir: Path) -> dict[str, Any]:
    """The study's manifest; anything else is the sweep's one-line StudyError."""
    manifest = read_manifest(study_dir)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("trials"), list):
        raise StudyError(f"{study_dir}/manifest.json lists no trials; is it a study directory?")
    return manifest


def read_result_lines(trial_dir: Path) -> list[dict[str, Any]]:
    """One row per epoch, in epoch order: an epoch logged twice (retrained after a kill) keeps its last row."""
    by_epoch = {row["epoch"]: row for row in read_results(trial_dir) if isinstance(row.get("epoch"), int)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _config(trial: dict[str, Any]) -> dict[str, Any]:
    cfg = {**trial["config"], "epochs_planned": trial["config"].get("epochs")}
    return {"trial": trial["id"], "phase": trial["phase"], **{k: cfg.get(k) for k in CONFIG_KEYS}}


def epochs_frame(study_dir: Path, manifest: dict[str, Any]) -> pd.DataFrame:
    """One row per trial per reported epoch, with the trial's config keys."""
    rows = []
    for trial in manifest["trials"]:
        base = _config(trial)
        for line in read_result_lines(Path(study_dir) / trial["phase"] / trial["id"]):
            rows.append({**base, **{new: line.get(old) for old, new in EPOCH_KEYS.items()}})
    return pd.DataFrame(rows, columns=["trial", "phase", *CONFIG_KEYS, *EPOCH_KEYS.values()])


def trials_frame(manifest: dict[str, Any], epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per planned trial: config, epochs done, finished flag and its summary numbers (NaN if none)."""
    planned = pd.DataFrame([_config(t) for t in manifest["trials"]], columns=["trial", "phase", *CONFIG_KEYS])
    epochs = epochs.sort_values(["trial", "epoch"], ignore_index=True)
    by_trial = epochs.groupby("trial")
    summary = pd.DataFrame({
        "epochs_done": by_trial["epoch"].max(),
        "final_test_acc": by_trial["test_acc"].last(),
        "best_test_acc": by_trial["test_acc"].max(),
        "best_epoch": by_trial["test_acc"].idxmax().map(epochs["epoch"]),
        "lowest_test_loss": by_trial["test_loss"].min(),
        "wall_time_s": by_trial["epoch_time_s"].sum(),
    })
    out = planned.merge(summary, left_on="trial", right_index=True, how="left")
    out["epochs_done"] = out["epochs_done"].fillna(0).astype(int)
    out["finished"] = out["epochs_done"] >= out["epochs_planned"]
    return out


def load_study(study_dir: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """(manifest, epochs frame, trials frame) of a study directory."""
    manifest = load_manifest(study_dir)
    epochs = epochs_frame(study_dir, manifest)
    return manifest, epochs, trials_frame(manifest, epochs)
