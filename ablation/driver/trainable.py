"""The Ray Tune trainable: the only training-side module that touches Ray.

Why: Tune gives scheduling, placement, retries and logging; the training and the trial's record stay in
train.py and rundir.py. Config in (one planned trial), one `tune.report(metrics)` per epoch out. The trial's
checkpoints live in its own run dir in the study (rundir.py), not in Tune's experiment: a study outlives any
one Tune run, so a trial resumes from its own dir whichever invocation, node or retry starts it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from ray import tune

from ..storage import store
from ..trial.config import TrialConfig
from ..trial.rundir import run
from .launch import trial_param


def trial_device(device: str, gpu_share: float) -> str:
    """The device a trial may train on, from its config's device and the GPU share Ray granted it. Ray 2.60
    no longer hides the GPUs from a worker that asked for none (ray-project/ray#54868): with device=auto a
    trial without a share would train on GPU 0, uncounted by Ray and uncapped in memory. It gets the CPU."""
    return device if gpu_share else "cpu"


def run_trial(param: dict[str, Any]) -> None:
    """param: what the driver's searcher suggested (launch.TrialParam under "trial")."""
    trial = trial_param(param)
    cfg = TrialConfig.from_dict(trial["config"])
    if trial.get("cpu"):  # as many threads as CPUs granted: an OMP_NUM_THREADS inherited from the driver's shell
        import torch  # (Ray keeps it) would make the trials on a node oversubscribe its cores (4x slower here)

        torch.set_num_threads(max(1, int(trial["cpu"])))
    device = trial_device(cfg.device, trial.get("gpu") or 0.0)
    if device != "cpu":
        import torch

        if torch.cuda.is_available():  # a fractional GPU also caps this trial's share of its memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, float(trial["gpu"])))
    location = trial["dir"] if store.is_uri(trial["dir"]) else Path(trial["dir"])
    run(cfg, location, log=lambda msg: print(f"[{trial['name']}] {msg}", flush=True),
        report=lambda row: tune.report({**row, "trial": trial["name"], "key": trial["key"]}),
        node=ray.get_runtime_context().get_node_id(), device=device)
