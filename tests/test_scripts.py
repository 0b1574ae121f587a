"""The shipped shell scripts: one seed of the report's protocol without Ray, the GPU check's refusal when the
CIFAR-10 copy was not carried along, and publishing a study's report into results/."""

from __future__ import annotations

import json
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


@pytest.mark.slow  # eight short trainings and two small Ray sweeps
def test_gpu_check_steps_run_on_a_cpu_and_find_a_difference_where_there_is_one(tmp_path, fashion):
    """The reproducibility and Ray steps of the GPU check, run here first (DEVICE=cpu): both comparisons
    bit-identical, and a gpu: 0 study whose every epoch says device_kind cpu. The comparison itself must fail on
    two runs that differ."""
    from PIL import Image

    for split, (x, y) in {"train": (fashion.train.x[:200], fashion.train.y[:200]),
                          "test": (fashion.test.x[:100], fashion.test.y[:100])}.items():
        for i, (img, label) in enumerate(zip(x, y)):
            path = tmp_path / "tree" / split / f"c{int(label)}" / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
    env = {**os.environ, "DATA_DIR": str(tmp_path / "tree"), "OUT": str(tmp_path / "out"),
           "RUNS": str(tmp_path / "runs"), "DEVICE": "cpu", "BENCH": "0", "PROTOCOL": "0", "RAY_GPU": "0",
           "SUBSETS": f"train_subset=100 test_subset=50 cache_dir={tmp_path / 'cache'}"}
    result = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh")], capture_output=True, text=True, env=env,
                            timeout=1200)
    summary = result.stdout.split("== gpu_check summary", 1)[1]
    assert summary.count("same-seed rerun              bit-identical") == 2, result.stdout[-3000:]
    assert summary.count("killed in epoch 2, resumed   bit-identical") == 2
    assert "ray gpu-quarter: 30 epochs over 10 trials, device_kind {'cpu': 30}" in summary
    assert "ray gpu-none: 3 epochs over 3 trials, device_kind {'cpu': 3}" in summary

    sys.path.insert(0, str(ROOT / "scripts"))
    from repro_check import differs

    run = tmp_path / "runs" / "repro-det-true"
    shutil.copytree(run / "A", tmp_path / "X")
    rows = (tmp_path / "X" / "metrics.jsonl").read_text().splitlines()
    row = json.loads(rows[1])
    row["test_acc"] += 1e-9  # the least a kernel's low bits would change
    rows[1] = json.dumps(row)
    (tmp_path / "X" / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    assert differs(run / "A", tmp_path / "X").startswith("epoch 2 test_acc")
    assert differs(run / "A", run / "C") == ""
