"""`--callback wandb` for real, offline (wandb is a test extra; nothing is sent): each trial is a W&B run in
`<storage>/wandb/`, named as the trial, its history every epoch of the trial's own rows, the last trial's run
complete too (Tune's default place, its staging folder, copied that run to the study before W&B had written it).

W&B 0.2x+ reads an offline run only in its Go core; this test reads the run file with W&B's own record schema
(`wandb.proto.wandb_internal_pb2.Record`) from the LevelDB log format W&B writes it in."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import write_spec
from helpers import rows_by_trial, sweep

wandb = pytest.importorskip("wandb")

pytestmark = pytest.mark.slow  # a sweep of three trials

BLOCK, HEADER = 32768, 7  # LevelDB log blocks; ":W&B", a 2-byte magic and a version byte start the file
FULL, LAST = 1, 4  # a record in one piece, the last piece of one


def run_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    out, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a record header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def offline_runs(folder: Path) -> dict[str, list[dict]]:
    """Run name -> its history rows, from every offline run under `folder`."""
    runs = {}
    for path in sorted(folder.glob("offline-run-*/run-*.wandb")):
        records = run_records(path)
        names = [r.run.display_name for r in records if r.WhichOneof("record_type") == "run"]
        assert len(names) == 1, (path, names)
        runs[names[0]] = [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
                           for item in r.history.item}
                          for r in records if r.WhichOneof("record_type") == "history"]
    return runs


def test_wandb_offline_gets_a_complete_run_per_trial_beside_the_studies(tmp_path):
    spec = write_spec(tmp_path / "w.yaml", name="w", seeds=[0], freeze=[4], finetune={"epochs": 2})
    done = sweep(spec, tmp_path, "--callback", "wandb", env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-3000:]

    runs, trials = offline_runs(tmp_path / "wandb"), rows_by_trial(tmp_path / "w")
    assert sorted(runs) == sorted(trials) == ["ft-pretrained-f4-s0", "ft-random-f4-s0", "rot-s0"]
    for name, rows in trials.items():
        for metric in ("train_loss", "test_acc", "test_loss"):
            logged = {h["epoch"]: h[metric] for h in runs[name] if "epoch" in h}  # not Tune's own last result
            assert logged == {r["epoch"]: r[metric] for r in rows}, name
    assert not list((tmp_path / "w").rglob("*.wandb"))  # not in Tune's per-invocation folders too
