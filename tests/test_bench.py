"""`ablation bench` on a tiny setting: the JSON it writes is complete and self-consistent (no timing thresholds)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

# Ray is made unimportable: the GPU machine that runs the benchmark has torch only.
NO_RAY = "import sys; sys.modules['ray'] = None; from ablation.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.slow  # three processes of the bench, each importing torch
def test_bench_writes_consistent_figures_without_ray(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-c", NO_RAY, "bench", "--device", "cpu", "--batch-size", "8",
                           "--warmup", "1", "--steps", "2", "--cases", "rotation-random1", "--concurrent", "2",
                           "--precision", "bf16", "--channels-last", "on", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "harness/naive" in proc.stdout and "2 processes" in proc.stdout
    assert "(bf16, channels_last True, compile False)" in proc.stdout
    case, concurrent = json.loads(out.read_text())
    assert case["case"] == "rotation-random1" and case["stage"] == "rotation" and case["rotation_mode"] == "random1"
    assert {"device", "torch", "batch_size", "steps", "threads"} <= case.keys()
    assert (case["batch_size"], case["steps"]) == (8, 2)
    for row in case, concurrent:  # what was asked for is what was measured, and the JSON says so
        assert (row["precision"], row["channels_last"]) == ("bf16", True)
    rates = case["images_per_s"]
    assert set(rates) == {"harness", "naive", "limit"}
    assert all(math.isfinite(v) and v > 0 for v in rates.values())
    assert case["vs_naive"] == pytest.approx(rates["harness"] / rates["naive"])
    assert case["vs_limit"] == pytest.approx(rates["harness"] / rates["limit"])
    assert concurrent["case"] == "concurrent" and concurrent["processes"] == 2
    assert concurrent["threads_per_process"] == max(1, len(os.sched_getaffinity(0)) // 2)
    both = concurrent["images_per_s"]
    assert all(math.isfinite(v) and v > 0 for v in both.values())
    assert concurrent["vs_single"] == pytest.approx(both["concurrent"] / both["single"])


def test_bench_on_missing_gpu_is_one_line_exit_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from ablation.cli import main

    assert main(["bench", "--device", "cuda"]) == 2


@pytest.mark.slow  # torch.compile on a CPU: about a minute of inductor per process
def test_bench_compile_times_each_case_eager_and_compiled(tmp_path):
    """`compile=true` ran first on a GPU box; now `ablation bench --compile` runs it here and reports
    compiled/eager for each case."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-c", NO_RAY, "bench", "--device", "cpu", "--batch-size", "16", "--warmup",
                           "2", "--steps", "2", "--cases", "finetune-freeze0", "--compile", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eager, compiled = json.loads(out.read_text())
    assert (eager["compile"], compiled["compile"]) == (False, True) and compiled["case"] == "finetune-freeze0"
    assert compiled["vs_eager"] == pytest.approx(compiled["images_per_s"]["harness"] / eager["images_per_s"]["harness"])
    assert f"finetune-freeze0   compiled/eager harness {compiled['vs_eager']:.2f}x" in proc.stdout


@pytest.mark.slow  # torch.compile on a CPU
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])  # the second: CUDA graphs on a GPU, none here
def test_a_compiled_model_computes_what_the_eager_one_does_on_cpu(mode):
    import torch
    from conftest import tiny

    from ablation.trial import data as D
    from ablation.trial.train import build, make_inputs, train_step

    data = D.load_data(tiny())
    eager = build(tiny(stage="finetune"), data)
    compiled = build(tiny(stage="finetune", compile=True, compile_mode=mode), data)
    compiled.model.load_state_dict(eager.model.state_dict())
    x, _ = make_inputs(eager, eager.test_x[:32], eager.test_y[:32], train=False)
    eager.model.eval()
    compiled.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled.forward(x), eager.forward(x), rtol=1e-4, atol=1e-4)
    eager.model.train()
    compiled.model.train()
    y = eager.test_y[:32]
    before = torch.cat([p.detach().flatten() for p in eager.model.parameters()])
    for _ in range(2):  # two SGD steps (backward through the compiled graph), then the same update of the weights
        torch.testing.assert_close(train_step(compiled, x, y)[0], train_step(eager, x, y)[0], rtol=1e-4, atol=1e-4)
    moved = [torch.cat([p.detach().flatten() for p in s.model.parameters()]) - before for s in (compiled, eager)]
    # summation order aside: measured 0.0065 of the update's norm (Xeon, torch 2.14); a step lost would be 1.0
    assert (moved[0] - moved[1]).norm() < 0.05 * moved[1].norm()
