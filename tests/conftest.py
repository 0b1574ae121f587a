"""Shared fixtures: real Fashion-MNIST subsets (Debian's dataset-fashion-mnist) and one Ray per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")

# Tests run on real data: a missing dataset is an installation error, not a reason to skip.
if not (FASHION / "train-images-idx3-ubyte.gz").exists():
    raise RuntimeError("tests need Fashion-MNIST: apt-get install -y dataset-fashion-mnist (bash .ci/run does)")

os.environ.setdefault("OMP_NUM_THREADS", "2")


def tiny(**over):
    """A trial config small enough for a test (ImageNet stem: ~150 images/s on a 2-core CPU)."""
    from ablation.config import TrialConfig

    base = dict(dataset="fashion-mnist", train_subset=256, test_subset=128, batch_size=64, epochs=2,
                device="cpu", eval_batch_size=256)
    base.update(over)
    return TrialConfig.from_dict(base)


@pytest.fixture(scope="session")
def fashion():
    from ablation import data

    return data.load_data(tiny())


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every in-process sweep test (ray.init costs ~5-8 s here)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def write_spec(path, **over):
    """A study spec small enough for tests: 128 Fashion-MNIST images, batch 64, CPU."""
    import yaml

    spec = {"name": "t", "dataset": "fashion-mnist", "train_subset": 128, "test_subset": 64, "batch_size": 64,
            "eval_batch_size": 256, "device": "cpu", "pretrain": {"epochs": 2}, "finetune": {"epochs": 2},
            "seeds": [0, 1], "init": ["pretrained", "random"], "freeze": [4, 0], "resources": {"cpu": 1, "gpu": 0}}
    spec.update(over)
    path.write_text(yaml.safe_dump(spec))
    return path
