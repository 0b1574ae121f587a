"""The shipped shell scripts: one seed of the report's protocol without Ray, the GPU check's refusal when the
CIFAR-10 copy was not carried along, and publishing a study's report into results/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_report_protocol_runs_five_trainings_and_prints_them_beside_the_report(tmp_path):
    env = {**os.environ, "ROT_EPOCHS": "1", "FT_EPOCHS": "1", "ABLATION": f"{sys.executable} -m ablation.cli"}
    keys = ["dataset=fashion-mnist", "train_subset=128", "test_subset=64", "batch_size=64", "device=cpu"]
    result = subprocess.run(["bash", str(ROOT / "scripts/report_protocol.sh"), str(tmp_path / "p"), *keys],
                            capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = ["rotation", "finetune-f4-pretrained", "finetune-f4-random", "finetune-f0-pretrained", "finetune-f0-random"]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(runs)
    table = result.stdout.split("one seed of the report's protocol: fashion-mnist", 1)[1].splitlines()
    assert table[2].startswith("rotation") and table[2].rstrip().endswith("77.93% / 0.529")
    rows = {" ".join(line.split()[:4]): line.split() for line in table[3:7]}
    assert rows["finetune freeze 4 pretrained"][-1] == "49.44%" and rows["finetune freeze 0 random"][-1] == "77.10%"
    ours = float(rows["finetune freeze 0 random"][4])
    last = (tmp_path / "p/finetune-f0-random/metrics.csv").read_text().splitlines()[-1].split(",")
    assert ours == pytest.approx(100 * float(last[4]), abs=0.006)  # best of one epoch = its test_acc


def test_gpu_check_refuses_without_the_cifar_copy(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh")], capture_output=True, text=True,
                            env={**os.environ, "DATA_DIR": str(tmp_path / "none"), "OUT": str(tmp_path / "out")})
    assert result.returncode == 2 and "no CIFAR-10 copy" in result.stderr


def test_gpu_check_dry_run_prints_the_plan_and_checks_what_it_needs_without_a_gpu(tmp_path):
    """The prepared device check must be known to start before a device's minutes are spent on it."""
    folder = tmp_path / "cifar"
    (folder / "train").mkdir(parents=True)
    env = {**os.environ, "DATA_DIR": str(folder), "OUT": str(tmp_path / "out")}
    ready = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--dry-run"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert "gpu_check plan" in ready.stdout and "expected minutes" in ready.stdout
    assert f"ok: CIFAR-10 copy in {folder}" in ready.stdout and "ok: torch" in ready.stdout
    assert not (tmp_path / "out").exists()  # nothing run, nothing written
    missing = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh")], capture_output=True, text=True,
                             env={**env, "DATA_DIR": str(tmp_path / "none"), "DRY_RUN": "1"}, timeout=120)
    assert missing.returncode == 2 and "MISSING: CIFAR-10 copy" in missing.stdout


@pytest.mark.slow  # two reports in subprocesses
def test_publish_report_copies_the_report_manifest_and_logs_but_no_checkpoint(tmp_path):
    study = tmp_path / "tiny"
    shutil.copytree(Path(__file__).parent / "fixtures" / "study_tiny", study)
    (study / "logs").mkdir()
    (study / "logs" / "run001.log").write_text("[0:01] started  rot-s0\n")
    checkpoint = next((study / "trials").iterdir()) / "checkpoints" / "epoch_0001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.pt").write_bytes(b"weights")
    out = tmp_path / "results" / "tiny"
    env = {**os.environ, "ABLATION": f"{sys.executable} -m ablation.cli"}
    publish = ["bash", str(ROOT / "scripts/publish_report.sh"), str(study), str(out)]
    for _ in range(2):  # a second run replaces the folder
        result = subprocess.run(publish, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["figures", "logs", "manifest.json", "report.md", "tables"]
    assert (out / "tables" / "rotation.csv").exists() and (out / "figures" / "learning_curves.png").exists()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("checkpoints"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no half-copied folder left beside it
    bad = subprocess.run(["bash", str(ROOT / "scripts/publish_report.sh"), str(tmp_path / "none"), str(tmp_path / "x")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "not a study directory" in bad.stderr and not (tmp_path / "x").exists()
