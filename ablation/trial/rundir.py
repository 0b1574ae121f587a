"""A run directory, the one layout of every training run: `ablation train --out DIR` and each study trial.

Why: a run killed at any moment must resume from its last epoch when it is started again, with nothing lost
and nothing mixed: the directory is the run's whole record, whatever started it (a shell, a Tune trial on
any node). It may live at a URI (s3://, gs://, file://): it is then staged in a local temp folder (removed
after the run, or by the next run on that machine if this one was killed) and each epoch's files are pushed
after the epoch: run.json (the first time), then the checkpoint, then the metrics. Layout:
    run.json                      config, provenance, data copy, digest of a pretrained backbone
    metrics.jsonl                 one JSON row per epoch of the state the run continues from (device,
                                  data fingerprint, pretrained digest beside the metrics)
    metrics.csv                   the same rows, train.METRIC_COLUMNS only, for a spreadsheet
    trained.log                   append-only: one line per epoch ever trained (retrained epochs again),
                                  with the code version that trained it (a run may be resumed by newer code)
    stopped.json                  written by the study's driver when Tune's ASHA stopped the run early
                                  (tuning.py): a rerun does not resume it
    checkpoints/epoch_NNNN/       the newest KEEP checkpoints (state.pt + meta.json), and the one of the
                                  selection epoch (selection_epoch): the weights behind the trial's number
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..storage import provenance, store
from ..storage.atomic import write_atomic
from ..storage.files import OwnedTempDir
from ..storage.store import Location
from .config import TrialConfig

# What a spreadsheet gets per epoch (metrics.jsonl has every field of the row).
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
                  "train_images_per_s", "val_loss", "val_acc",  # val_*: empty without val_split
                  "epoch_overhead_s")
KEEP = 2  # the newest checkpoint plus one to fall back on if it is found corrupt
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TRAINED_LOG = "trained.log"
CHECKPOINTS = "checkpoints"
STOPPED_FILE = "stopped.json"

Report = Callable[[dict[str, Any]], None]


def metrics_csv(history: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def metrics_rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The state's history with what each row came from (data copy, pretrained backbone) beside it."""
    extra = {"epochs": state["epochs"], "data_fingerprint": state["data_fingerprint"],
             "pretrained_digest": state["pretrained_digest"]}
    return [{**row, **extra} for row in state["history"]]


def _check_same_config(record: str | None, where: Location, cfg: TrialConfig) -> None:
    """A directory holds one run: same config (locations aside: data may move), or refuse."""
    try:
        old = json.loads(record or "")["config"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{where} is not empty and holds no readable {RUN_FILE}; choose another --out") from None
    old = TrialConfig.identity_of(old)
    now = cfg.identity()
    changed = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
    if changed:
        k = changed[0]
        default = getattr(TrialConfig.fields().get(k), "default", None)  # identity leaves defaults out
        raise ConfigError(f"{where} holds a run with another config ({k}: {old.get(k, default)!r} there, "
                          f"{now.get(k, default)!r} now); choose another --out")


STAGING_PREFIX = "ablation-run-"  # a staged URI run dir: its checkpoints, ~90 MB each


class RunDir:
    """The run's files as a local folder: the directory itself, or a staged copy of a URI run dir."""

    def __init__(self, location: Location):
        self.location = location
        self._tmp = None
        if store.is_uri(location):
            self._tmp = OwnedTempDir(STAGING_PREFIX)
            self.path = store.download(str(location), Path(self._tmp.name) / "run")
        else:
            self.path = Path(location).resolve()

    def started(self) -> bool:
        return self.path.exists() and any(self.path.iterdir())

    def push(self, *names: str) -> None:
        """Copy these files or folders of the staged run to its URI (a no-op for a local run)."""
        if self._tmp is not None:
            for name in names:
                store.upload(self.path / name, str(store.child(self.location, name)))

    def drop(self, name: str) -> None:
        shutil.rmtree(self.path / name, ignore_errors=True)
        if self._tmp is not None:
            store.remove_tree(store.child(self.location, name))

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _json_lines(location: Location) -> tuple[list[dict[str, Any]], list[int]]:
    """The lines that parse, and the (1-based) numbers of those that do not."""
    rows, torn = [], []
    for number, line in enumerate((store.read_file(location) or "").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            torn.append(number)
    return rows, torn


def checkpoint_name(epoch: int) -> str:
    """Where in a run dir the checkpoint of this epoch lives (CHECKPOINT_GLOB matches every one)."""
    return f"{CHECKPOINTS}/epoch_{epoch:04d}"


CHECKPOINT_GLOB = f"{CHECKPOINTS}/epoch_*"


def selection_epoch(rows: list[dict[str, Any]]) -> tuple[int, str]:
    """The epoch a trial's number comes from, and the metric that chose it: the best val_acc when the run holds
    out a validation split, else the best test_acc (a selection on the test set, to be said as such). The
    first of equal epochs, as the report picks it."""
    metric = "val_acc" if any(r.get("val_acc") is not None for r in rows) else "test_acc"
    best = max(rows, key=lambda r: r[metric] if r.get(metric) is not None else float("-inf"))
    return best["epoch"], metric


def read_rows(location: Location) -> list[dict[str, Any]]:
    """One dict per epoch of the state the run continues from, in order (no torch: status and report read it).
    An epoch that appears twice keeps its last row."""
    return read_rows_checked(location)[0]


def read_rows_checked(location: Location) -> tuple[list[dict[str, Any]], str]:
    """read_rows, and what is damaged in the file ("" when nothing). The file is written whole (never
    appended), so a line that does not parse is damage (a disk, a copy, a hand), not a kill mid-write."""
    lines, torn = _json_lines(store.child(location, METRICS_FILE))
    by_epoch = {r["epoch"]: r for r in lines if isinstance(r, dict) and isinstance(r.get("epoch"), int)}
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    return rows, f"{METRICS_FILE} line {torn[0]} is not JSON" + (f" (and {len(torn) - 1} more)" if torn[1:] else "") \
        if torn else ""


def mark_stopped(location: Location, epoch: int, why: str) -> None:
    store.write_file(store.child(location, STOPPED_FILE), json.dumps({"epoch": epoch, "why": why,
                                                                       "time": provenance.now()}))


def stopped(location: Location) -> dict[str, Any] | None:
    """The early stop of this run ({"epoch", "why", "time"}), or None when it was never stopped early."""
    try:
        return json.loads(store.read_file(store.child(location, STOPPED_FILE)) or "null")
    except ValueError:  # torn by a kill while it was written: the stop stands
        return {"epoch": None, "why": "stopped early", "time": None}


def trained_log(location: Location) -> list[dict[str, Any]]:
    """One dict per epoch this run ever trained ({"epoch", "pid", "time", "code"}), retrained ones again;
    "code" is absent from lines written before it was recorded."""
    return _json_lines(store.child(location, TRAINED_LOG))[0]  # appended: a kill can tear its last line


def run(cfg: TrialConfig, location: Location, log: Callable[[str], None] = print, report: Report | None = None,
        data=None, node: str = "", device: str | None = None) -> list[dict[str, Any]]:
    """Train cfg into the run dir, resuming from its newest valid checkpoint if the same config began there.
    report(row) is called after each epoch's files are safe (a Tune trial reports to Tune there)."""
    from .checkpoint import checkpoint_dirs, load_latest, save_checkpoint  # torch: only to train
    from .train import train

    rd = RunDir(location)
    try:
        resume = None
        if rd.started():
            _check_same_config(store.read_file(rd.path / RUN_FILE), location, cfg)
            resume = load_latest(checkpoint_dirs(rd.path), warn=log)
            if resume is not None:  # metrics.jsonl follows the state training continues from (a kill between
                write_atomic(rd.path / METRICS_FILE,  # the two can leave it an epoch behind or ahead)
                             "".join(json.dumps(r) + "\n" for r in metrics_rows(resume)))
                rd.push(METRICS_FILE)
            if resume is not None and resume["epoch"] >= cfg.epochs:
                log(f"{location}: already finished ({cfg.epochs} epochs); nothing to do")
                if report is not None:  # its last epoch again: whoever waits on it (Tune) learns it finished
                    report(metrics_rows(resume)[-1])
                return resume["history"]

        def on_epoch(row: dict[str, Any], state: dict[str, Any]) -> None:
            # The dir appears with the first finished epoch: bad input (no data, no GPU) leaves nothing behind.
            began = time.perf_counter() - state.pop("copy_s", 0.0)  # the end work began with train's snapshot
            rd.path.mkdir(parents=True, exist_ok=True)
            checkpoint = checkpoint_name(row["epoch"])
            written = [checkpoint, METRICS_FILE, METRICS_CSV, TRAINED_LOG]
            if not (rd.path / RUN_FILE).exists():
                record = {"config": cfg.to_dict(), "data_fingerprint": state["data_fingerprint"],
                          "pretrained_digest": state["pretrained_digest"], "device": row["device"],
                          "provenance": provenance.record()}
                write_atomic(rd.path / RUN_FILE, json.dumps(record, indent=1))
                written.insert(0, RUN_FILE)  # pushed first: a run dir cut off mid-upload still says what it is
            with open(rd.path / TRAINED_LOG, "a") as fh:  # every epoch ever trained, retrained ones too
                fh.write(json.dumps({"epoch": row["epoch"], "pid": os.getpid(), "time": provenance.now(),
                                     "code": provenance.code_version()}) + "\n")
            save_checkpoint(rd.path / checkpoint, state)
            # the epoch's end work (snapshot, checkpoint with its sha256 and fsync): outside epoch_time_s, and on a
            # GPU a share of a short epoch worth seeing; in this epoch's row, and from the next checkpoint on
            row["epoch_overhead_s"] = state["history"][-1]["epoch_overhead_s"] = round(time.perf_counter() - began, 4)
            write_atomic(rd.path / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in metrics_rows(state)))
            write_atomic(rd.path / METRICS_CSV, metrics_csv(state["history"]))
            rd.push(*written)  # the checkpoint before the metrics: they never run ahead of the weights they describe
            chosen = checkpoint_name(selection_epoch(metrics_rows(state))[0])  # kept: the weights behind the number
            for stale in checkpoint_dirs(rd.path)[KEEP:]:
                if f"{CHECKPOINTS}/{stale.name}" != chosen:
                    rd.drop(f"{CHECKPOINTS}/{stale.name}")
            if report is not None:
                report(metrics_rows(state)[-1])

        return train(cfg, on_epoch, resume=resume, log=log, data=data, node=node, device=device)
    finally:
        rd.close()
