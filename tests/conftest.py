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
