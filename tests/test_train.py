"""Training: frozen stays frozen, loss falls, resume is bit-identical, one seed gives one result."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny

from ablation.storage import provenance
from ablation.trial import rundir
from ablation.trial.checkpoint import checkpoint_dirs, load_checkpoint, resolve_pretrained
from ablation.trial.models import FREEZE_GROUPS, weights_digest
from ablation.trial.rundir import METRIC_COLUMNS
from ablation.trial.train import CRASH_AT_EPOCH, InjectedFault, build, train


def _states(cfg, data, resume=None):
    """Train on tiny()'s Fashion-MNIST subset, loaded once per test run (the `fashion` fixture)."""
    states = []
    history = train(cfg, lambda row, state: states.append(state), resume=resume, data=data)
    return history, states


@pytest.fixture(scope="module")
def rotation_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rot")
    cfg = tiny(stage="rotation", train_subset=512, epochs=3)
    history = rundir.run(cfg, out, log=lambda _: None)
    return cfg, out, history


def test_short_rotation_run_lowers_the_loss_and_writes_metrics(rotation_run):
    cfg, out, history = rotation_run
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == list(METRIC_COLUMNS) and len(lines) == 4
    # the end work of each epoch (snapshot, checkpoint), outside epoch_time_s: measured, in every row
    assert all(0 < r["epoch_overhead_s"] < r["epoch_time_s"] * 10 for r in rundir.read_rows(out))
    best = rundir.selection_epoch(history)[0]  # its best test_acc: kept beside the newest two (rolling)
    assert [d.name for d in checkpoint_dirs(out)] == [f"epoch_{e:04d}" for e in sorted({3, 2, best}, reverse=True)]


@pytest.mark.parametrize("freeze", [4, 5])
def test_frozen_weights_and_batchnorm_buffers_do_not_move(rotation_run, freeze, fashion):
    _, out, _ = rotation_run
    cfg = tiny(stage="finetune", init="pretrained", pretrained_from=str(out), freeze=freeze, epochs=1)
    before = build(cfg, fashion).model.state_dict()
    _, states = _states(cfg, fashion)
    after = states[-1]["model"]
    frozen = tuple(f"{m}." for g in FREEZE_GROUPS[:freeze] for m in g)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert not {k for k in moved if k.startswith(frozen)}, "a frozen tensor moved"
    assert "fc.weight" in moved
    if freeze == 4:
        assert "layer4.1.bn2.running_mean" in moved  # trained BN does update its statistics
        assert "layer3.1.bn2.running_mean" not in moved
    pretrained = load_checkpoint(checkpoint_dirs(out)[0])["model"]
    assert torch.equal(before["layer1.0.conv1.weight"], pretrained["layer1.0.conv1.weight"])


def test_run_json_names_the_backbone_it_started_from(rotation_run, tmp_path):
    _, out, _ = rotation_run
    cfg = tiny(stage="finetune", init="pretrained", pretrained_from=str(out), freeze=4, epochs=1)
    rundir.run(cfg, tmp_path, log=lambda _: None)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["pretrained_digest"] == weights_digest(resolve_pretrained(str(out))) != ""
    rundir.run(tiny(stage="finetune", epochs=1), tmp_path / "random", log=lambda _: None)
    assert json.loads((tmp_path / "random" / "run.json").read_text())["pretrained_digest"] == ""


def test_two_runs_with_one_seed_are_identical_and_another_seed_differs(fashion):
    cfg = tiny(stage="finetune", epochs=1)
    h1, s1 = _states(cfg, fashion)
    h2, s2 = _states(cfg, fashion)
    assert [r["train_loss"] for r in h1] == [r["train_loss"] for r in h2]
    assert all(torch.equal(s1[-1]["model"][k], s2[-1]["model"][k]) for k in s1[-1]["model"])
    h3, _ = _states(cfg.replace(seed=1), fashion)
    assert h3[0]["train_loss"] != h1[0]["train_loss"]


def test_resume_from_an_epoch_ends_bit_identical_to_an_uninterrupted_run(fashion):
    cfg = tiny(stage="finetune", epochs=3, schedule="cosine")
    full_history, full = _states(cfg, fashion)
    resumed_history, resumed = _states(cfg, fashion, resume=full[0])
    assert [r["test_loss"] for r in resumed_history] == [r["test_loss"] for r in full_history]
    for key, value in full[-1]["model"].items():
        assert torch.equal(value, resumed[-1]["model"][key]), key
    assert torch.equal(full[-1]["rng"]["data"], resumed[-1]["rng"]["data"])


def test_run_dir_resumes_after_a_crash_and_refuses_another_config(tmp_path, monkeypatch):
    cfg = tiny(stage="finetune", epochs=2)
    monkeypatch.setenv(CRASH_AT_EPOCH, "2")
    with pytest.raises(InjectedFault):
        rundir.run(cfg, tmp_path, log=lambda _: None)
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["epoch_0001"]
    logs = []
    history = rundir.run(cfg, tmp_path, log=logs.append)
    assert logs[0] == "resumed from epoch 1 of 2" and [r["epoch"] for r in history] == [1, 2]
    from ablation.errors import ConfigError

    with pytest.raises(ConfigError, match="another config"):
        rundir.run(cfg.replace(lr=0.1), tmp_path, log=lambda _: None)
    # a key at its default there is named by its value (identity leaves defaults out: it printed None)
    with pytest.raises(ConfigError, match=r"another config \(label_smoothing: 0.0 there, 0.1 now\)"):
        rundir.run(cfg.replace(label_smoothing=0.1), tmp_path, log=lambda _: None)


def test_a_uri_run_cut_off_while_uploading_its_first_checkpoint_starts_again_on_rerun(tmp_path, monkeypatch):
    """run.json reaches the store before the checkpoint: a run dir that holds only part of its first upload
    (the weights, not yet their meta.json) is still recognised as this config's (not refused as a stranger's
    folder) and trains from the start."""
    from ablation.storage import store

    upload = store.upload

    def cut_off(local, uri):
        if "checkpoints" in str(uri):
            upload(Path(local) / "state.pt", f"{uri}/state.pt")
            raise ConnectionError("node lost")
        upload(local, uri)

    monkeypatch.setattr(store, "upload", cut_off)
    location, cfg = f"file://{tmp_path}/bucket/run", tiny(stage="finetune", epochs=1)
    with pytest.raises(ConnectionError):
        rundir.run(cfg, location, log=lambda _: None)
    assert (tmp_path / "bucket" / "run" / "run.json").exists()
    monkeypatch.setattr(store, "upload", upload)
    history = rundir.run(cfg, location, log=lambda _: None)
    assert [r["epoch"] for r in history] == [1] and checkpoint_dirs(tmp_path / "bucket" / "run")


def test_ablation_train_writes_a_uri_out_to_the_store_not_to_a_local_folder(tmp_path, monkeypatch, capsys):
    from ablation.cli import main

    monkeypatch.chdir(tmp_path)
    overrides = ["dataset=fashion-mnist", "train_subset=256", "test_subset=128", "epochs=1", "device=cpu"]
    assert main(["train", *overrides, "--out", f"file://{tmp_path}/bucket/run"]) == 0
    assert (tmp_path / "bucket" / "run" / "metrics.csv").exists() and not (tmp_path / "file:").exists()
    assert f"wrote file://{tmp_path}/bucket/run/metrics.csv" in capsys.readouterr().out


def test_a_uri_run_removes_the_staging_folders_of_killed_runs_and_its_own(tmp_path, monkeypatch):
    """A trial killed with SIGKILL (Tune stops actors so) leaves its staged run dir, checkpoints and all, in the
    temp folder; the next URI run on the machine removes it, and keeps the folder of a process still alive and
    one it cannot tell (no lock file: an older release's)."""
    import signal
    import subprocess
    import sys

    temp = tmp_path / "tmp"
    temp.mkdir()
    hold = ("import sys, tempfile, time; tempfile.tempdir = sys.argv[1]; from ablation.storage.files import "
            "OwnedTempDir; d = OwnedTempDir(sys.argv[2]); print(d.name, flush=True); time.sleep(600)")
    holders = [subprocess.Popen([sys.executable, "-c", hold, str(temp), rundir.STAGING_PREFIX],
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        killed, alive = (Path(h.stdout.readline().strip()) for h in holders)
        holders[0].send_signal(signal.SIGKILL)
        holders[0].wait()
        older = temp / f"{rundir.STAGING_PREFIX}x9ryuhe3"
        for folder in (killed, older):
            (folder / "run" / "checkpoints").mkdir(parents=True)
        monkeypatch.setattr(tempfile, "tempdir", str(temp))
        rundir.run(tiny(stage="finetune", epochs=1), f"file://{tmp_path}/bucket/run", log=lambda _: None)
        assert sorted(p.name for p in temp.iterdir()) == sorted([alive.name, older.name])
        assert checkpoint_dirs(tmp_path / "bucket" / "run")
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    cfg = tiny(stage="finetune", epochs=2)
    rundir.run(cfg, tmp_path, log=lambda _: None)
    newest = checkpoint_dirs(tmp_path)[0] / "state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    logs = []
    history = rundir.run(cfg.replace(epochs=2), tmp_path, log=logs.append)
    assert any("skipping checkpoint" in m and "sha256" in m for m in logs)
    assert "resumed from epoch 1 of 2" in logs and [r["epoch"] for r in history] == [1, 2]


def test_a_validation_split_is_scored_every_epoch_and_kept_out_of_training():
    from ablation.trial.data import load_data

    cfg = tiny(stage="finetune", epochs=2, val_split=200)
    data = load_data(cfg)
    history, _ = _states(cfg, data)
    assert all(0 <= r["val_acc"] <= 1 and r["val_loss"] > 0 for r in history)
    assert len(data.train.y) == 256 and len(data.val.y) == 200  # train_subset is cut from what is left
    plain, _ = _states(tiny(stage="finetune", epochs=2), load_data(tiny(stage="finetune", epochs=2)))
    assert "val_acc" not in plain[0]


def test_a_flipped_byte_that_torch_load_would_accept_fails_the_checkpoints_sha256(tmp_path):
    """torch.save's own per-record CRC32 is off while we save (torch.load never checks it): the sha256 in
    meta.json is the check, and torch's setting is left as it was."""
    import torch

    from ablation.trial.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    before = torch.serialization.get_crc32_options()
    state = {"epoch": 1, "epochs": 2, "config": {"stage": "rotation"}, "w": torch.arange(1 << 16, dtype=torch.float32)}
    save_checkpoint(tmp_path / "c", state)
    assert torch.serialization.get_crc32_options() == before
    assert torch.equal(load_checkpoint(tmp_path / "c")["w"], state["w"])
    path = tmp_path / "c" / "state.pt"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # inside the tensor's bytes
    path.write_bytes(bytes(blob))
    assert not torch.equal(torch.load(path, weights_only=True)["w"], state["w"])  # torch.load takes it as is
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "c")


def test_a_finished_run_whose_metrics_fell_behind_reports_its_last_epoch_and_repairs_them(tmp_path):
    """A kill between the last checkpoint and the metrics write leaves metrics.jsonl an epoch behind; the rerun
    trains nothing, rewrites the metrics from the checkpoint and reports the last epoch (Tune waits on it)."""
    cfg = tiny(stage="finetune", epochs=2)
    rundir.run(cfg, tmp_path, log=lambda _: None)
    metrics = tmp_path / rundir.METRICS_FILE
    metrics.write_text(metrics.read_text().splitlines(keepends=True)[0])
    reported = []
    rundir.run(cfg, tmp_path, log=lambda _: None, report=reported.append)
    assert [r["epoch"] for r in reported] == [2] and [r["epoch"] for r in rundir.read_rows(tmp_path)] == [1, 2]
    assert len(rundir.trained_log(tmp_path)) == 2  # nothing trained again
    assert {line["code"] for line in rundir.trained_log(tmp_path)} == {provenance.code_version()}


def test_a_backbone_of_another_stem_is_one_line_naming_pretrained_from(rotation_run, fashion):
    """A ValueError traceback before: the rotation run used the ImageNet stem, this fine-tune the CIFAR one."""
    from ablation.errors import UserError

    _, out, _ = rotation_run
    cfg = tiny(stage="finetune", init="pretrained", pretrained_from=str(out), stem="cifar", epochs=1)
    with pytest.raises(UserError, match=f"pretrained_from={out}: pretrained backbone does not fit this model .* "
                                        f"was it trained with another stem="):
        train(cfg, lambda row, state: None, data=fashion)


def test_a_checkpoint_resumes_only_as_it_was_computed(tmp_path, monkeypatch, fashion):
    """A checkpoint's data-generator state is device-specific (a CPU state is 5,056 bytes, a CUDA one 16): a
    study started on a CPU and resumed on a GPU box crashed on every retry. Now a resume whose device kind,
    precision or layout (resolved from auto) differs from the checkpoint's is one line saying so, and every
    epoch row records them."""
    from ablation.errors import UserError
    from ablation.trial.train import check_resumable

    cfg = tiny(stage="finetune", epochs=2)
    monkeypatch.setenv(CRASH_AT_EPOCH, "2")
    with pytest.raises(InjectedFault):
        rundir.run(cfg, tmp_path, log=lambda _: None, data=fashion)
    state = load_checkpoint(checkpoint_dirs(tmp_path)[0])
    on_cpu = {"device_kind": "cpu", "precision_used": "fp32", "layout": "contiguous"}
    assert state["numerics"] == on_cpu and {k: state["history"][0][k] for k in on_cpu} == on_cpu
    s = build(cfg, fashion)
    check_resumable(s, state)  # as it was computed: continues
    from_gpu = {**state, "numerics": None, "rng": {**state["rng"], "cuda": torch.zeros(16, dtype=torch.uint8)}}
    for other, said in (({**state, "numerics": {**on_cpu, "precision_used": "bf16"}}, "precision_used bf16"),
                        (from_gpu, "device_kind cuda")):  # a checkpoint from before numerics were recorded
        with pytest.raises(UserError, match=f"the checkpoint of epoch 1 was computed with .*{said}.*; this process "
                                            f"would continue with device_kind cpu"):
            check_resumable(s, other)


def test_with_compile_every_step_and_every_eval_chunk_has_one_shape(fashion):
    """A ragged last batch or eval chunk made torch.compile build (and on a GPU capture) a second graph. With
    compile the training batches are all whole and the last eval chunk is padded, changing no result."""
    from ablation.trial.train import evaluate, train_batches

    eager = build(tiny(stage="finetune", batch_size=60, eval_batch_size=48), fashion)  # 256 train, 64 test images
    assert [len(b) for b in train_batches(eager)] == [60, 60, 60, 60, 16]  # eager: the ragged batch trains
    expected = evaluate(eager, eager.test_x, eager.test_y)
    eager.cfg = eager.cfg.replace(compile=True)  # the compile path's shapes, on the eager model (no inductor here)
    shapes, model = [], eager.model
    eager.forward = lambda x: (shapes.append(len(x)), model(x))[1]
    assert [len(b) for b in train_batches(eager)] == [60, 60, 60, 60]
    assert evaluate(eager, eager.test_x, eager.test_y) == pytest.approx(expected, abs=1e-6) and shapes == [48, 48]
