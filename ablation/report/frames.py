"""Study directory -> two tidy frames (one row per trial per epoch, one row per trial) and the cell keys.

Why: every table, figure and finding is computed from these frames. The study's files are read through
records.py (the one owner of the layout and of trial states); the cells are derived here, from the data: every
config key that varies across the current spec's trials of a stage, other than the seed, is a cell key.
A key the report was never taught about still separates cells, so trials of two cells are never pooled as
if they were seeds. A pretrained fine-tune also carries its rotation trial's config as `pretrain.<key>`, and
every trial the result of its checks (checks.py), which need its rotation trial's rows too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..study.records import FINISHED, data_sources, read_manifest, trial_records, with_ends
from ..trial.config import LOCATION_KEYS, TrialConfig, data_source
from . import reference
from .checks import trial_checks

CONFIG_KEYS = [k for k in TrialConfig.fields() if k not in LOCATION_KEYS]
NOT_CELL = {"seed", "pretrain.seed", "stage"}  # seeds are what a cell averages over
# Per-epoch values kept from each metrics row ("lr" there is the scheduled lr, renamed to keep the config's).
EPOCH_KEYS = {"epoch": "epoch", "train_loss": "train_loss", "train_acc": "train_acc", "test_loss": "test_loss",
              "test_acc": "test_acc", "lr": "epoch_lr", "epoch_time_s": "epoch_time_s",
              "train_images_per_s": "train_images_per_s", "epoch_overhead_s": "epoch_overhead_s",
              "data_fingerprint": "data_fingerprint",
              "device": "trained_on", "host": "host", "node": "node", "val_loss": "val_loss", "val_acc": "val_acc",
              # what the checks read (checks.py), so that a reader of the tables can redo them
              "pretrained_digest": "loaded_digest", "backbone_digest": "backbone_digest",
              "frozen_intact": "frozen_intact",
              "device_kind": "device_kind", "precision_used": "precision_used", "layout": "layout"}  # from auto
SUMMARY = ["task", "numerics", "protocol", "state", "damage", "current", "finished", "epochs_done", "trained",
           "retrained", "code", "final_test_acc", "best_test_acc", "best_epoch", "lowest_test_loss", "wall_time_s",
           "pretrained_digest", "ran_on", "best_val_epoch", "test_acc_at_best_val", "best_val_acc", "depends_on",
           "backbone_digest", "checks"]
ROLE = ["search", "chosen", "tuned",  # a tune block's search cell, chosen cell, searched keys ("" for none)
        "group", "variant"]  # an until block's cell and side of its effects (precision.py; "" for none)


def _config_columns(record: dict[str, Any], by_key: dict[str, dict]) -> dict[str, Any]:
    cfg = {k: record["config"].get(k) for k in CONFIG_KEYS}
    source = by_key.get(record.get("depends_on") or "")
    if source is not None:
        cfg.update({f"pretrain.{k}": source["config"].get(k) for k in CONFIG_KEYS})
    return cfg


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    rows = record["rows"]
    if not rows:
        return {"epochs_done": 0, "pretrained_digest": None, "ran_on": ""}
    accs = [r["test_acc"] for r in rows]
    best = max(range(len(rows)), key=lambda i: accs[i])
    nodes = sorted({f"{r.get('host', '?')}/{r['node'][:8]}" if r.get("node") else r.get("host", "?") for r in rows})
    at_val = {}
    if all("val_acc" in r for r in rows):  # selected on validation data: no look at the test set
        chosen = max(range(len(rows)), key=lambda i: rows[i]["val_acc"])
        at_val = {"best_val_epoch": rows[chosen]["epoch"], "test_acc_at_best_val": accs[chosen],
                  "best_val_acc": rows[chosen]["val_acc"]}
    return {**at_val, "epochs_done": rows[-1]["epoch"], "final_test_acc": accs[-1], "best_test_acc": accs[best],
            "ran_on": ", ".join(nodes),
            "best_epoch": rows[best]["epoch"], "lowest_test_loss": min(r["test_loss"] for r in rows),
            "wall_time_s": sum(r["epoch_time_s"] for r in rows), "pretrained_digest": rows[0].get("pretrained_digest")}


def _numerics(rows: list[dict[str, Any]]) -> str | None:
    """"cpu fp32 contiguous": how a trial computed (device kind, precision, layout resolved from auto), a cell
    key wherever trials differ in it, so that a table never pools them; None for rows from before it was
    recorded."""
    if not rows or "precision_used" not in rows[0]:
        return None
    return " ".join(str(rows[0].get(k)) for k in ("device_kind", "precision_used", "layout"))


def load_study(study_dir: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """(manifest, epochs frame, trials frame); the trials frame holds every trial the study ever planned,
    `current` saying which ones the newest spec asks for (only those enter tables and figures)."""
    manifest = read_manifest(study_dir)
    manifest["invocations"] = with_ends(study_dir, manifest)  # killed ones end at their log's last line
    records = trial_records(study_dir, manifest)
    by_key = {r["key"]: r for r in records}
    sources = data_sources(manifest)

    def task(cfg: dict) -> str:  # what the data copy is (cifar10 for the JPEG copy too), else its dataset key
        return sources.get(data_source(cfg["dataset"], cfg.get("data_dir", "")), {}).get("task", cfg["dataset"])

    trial_rows, epoch_rows, columns = [], [], {"trial": None, "key": None, **dict.fromkeys(CONFIG_KEYS)}
    for r in records:
        config = _config_columns(r, by_key)
        base = {"trial": r["name"], "key": r["key"], **config}
        columns.update(dict.fromkeys(base))
        trial_rows.append({**base, "task": task(r["config"]), "protocol": reference.comparable(config),
                           "state": r["state"], "damage": r["damage"],
                           "current": r["current"],
                           "finished": r["state"] == FINISHED,
                           "trained": r["trained"], "code": ", ".join(r["code"]), **_summary(r),
                           "numerics": _numerics(r["rows"]),
                           "depends_on": r.get("depends_on") or "",  # the key of its rotation trial
                           "backbone_digest": r["rows"][-1].get("backbone_digest") if r["rows"] else None,
                           "checks": trial_checks(r, by_key),
                           "search": r.get("search", ""), "chosen": r.get("chosen", ""),
                           "tuned": ",".join(r.get("tuned", [])), "group": r.get("group", ""),
                           "variant": r.get("variant", "")})
        if r["current"]:
            epoch_rows += [{**base, **{new: row.get(old) for old, new in EPOCH_KEYS.items()}} for row in r["rows"]]
    # pretrain.<key> columns that are the same for every pretrained trial say nothing: the rotation rows show them
    columns = {c: None for c in columns if not c.startswith("pretrain.")
               or len({str(r.get(c)) for r in trial_rows if c in r}) > 1}
    trials = pd.DataFrame(trial_rows, columns=[*columns, *SUMMARY, *ROLE])
    trials["epochs_done"] = trials["epochs_done"].fillna(0).astype(int)
    # epochs trained again after an interruption (or lost to one, until trained again); 0 where trained.log
    # is short (a URI run dir killed between its uploads)
    trials["retrained"] = (trials["trained"] - trials["epochs_done"]).clip(lower=0)
    epochs = pd.DataFrame(epoch_rows, columns=[*columns, *EPOCH_KEYS.values()])
    return manifest, epochs, trials


def _settings(trials: pd.DataFrame) -> dict[str, int]:
    """Each setting of these trials (config keys, pretrain.* ones, seeds and searched keys aside) -> how many
    values it takes."""
    tuned = {k for t in trials.get("tuned", pd.Series(dtype=object)).dropna() for k in str(t).split(",") if k}
    return {c: trials[c].dropna().astype(str).nunique() for c in trials.columns
            if (c in CONFIG_KEYS or c.startswith("pretrain.") or c == "numerics") and c not in NOT_CELL
            and c not in tuned}


def cell_keys(trials: pd.DataFrame) -> list[str]:
    """Keys whose values differ across these (current) trials, seed aside: what tells their cells apart. Keys a
    tune block searched are not: each cell runs at its own chosen values of them (tables.tuning_choices)."""
    return [k for k, n in _settings(trials).items() if n > 1]


def fixed_keys(trials: pd.DataFrame) -> list[str]:
    """Keys with one value across these trials: the study's fixed hyperparameters, which the playbook says to
    report (pretrain.* ones are the rotation trials' own; a key of another stage is not read by these trials)."""
    other = {k for k, stage in TrialConfig.stage_only_keys().items() if stage not in set(trials["stage"])}
    return [k for k, n in _settings(trials).items() if n == 1 and not k.startswith("pretrain.") and k not in other]


def search_only(trials: pd.DataFrame) -> pd.Series:
    """Trials that only searched a cell's nuisance values (not its choice): kept out of the cell tables."""
    return trials["search"].fillna("").ne("") & trials["chosen"].fillna("").eq("")


def groups(frame: pd.DataFrame, keys: list[str]):
    """(cell values as a dict, rows) per cell of keys, NaN a value like any other; one cell when no keys."""
    if not keys:
        yield {}, frame
        return
    for values, rows in frame.groupby(keys, sort=True, dropna=False):
        yield dict(zip(keys, values if isinstance(values, tuple) else (values,))), rows
