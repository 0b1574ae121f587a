"""Shared fixtures: real Fashion-MNIST subsets (Debian's dataset-fashion-mnist) and one Ray per test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")

# Tests run on real data: a missing dataset is an installation error, not a reason to skip.
if not (FASHION / "train-images-idx3-ubyte.gz").exists():
    raise RuntimeError("tests need Fashion-MNIST: apt-get install -y dataset-fashion-mnist (bash .ci/run does)")

# `make test` runs two pytest-xdist workers on the 2 cores: one torch thread each, so that neither waits on
# the other's spinning threads (two 2-thread workers took 2x as long as one).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"


# Modules whose module-scoped fixture trains: each runs whole on one worker, so the fixture trains once.
TRAINING_FIXTURES = {"test_train", "test_checks"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """The tests on Ray share one worker's Ray and run one after another there (each sweep fills both cores);
    the modules in TRAINING_FIXTURES run whole on one worker; every other test goes where a worker is free."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif item.module.__name__ in TRAINING_FIXTURES:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def tiny(**over):
    """A trial config small enough for a test (ImageNet stem: ~150 images/s on a 2-core CPU)."""
    from ablation.trial.config import TrialConfig

    base = dict(dataset="fashion-mnist", train_subset=256, test_subset=64, batch_size=64, epochs=2,
                device="cpu", eval_batch_size=256)
    base.update(over)
    return TrialConfig.from_dict(base)


@pytest.fixture(scope="session")
def fashion():
    from ablation.trial import data

    return data.load_data(tiny())


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every in-process sweep test (ray.init costs ~5-8 s here). Its workers get an
    OMP_NUM_THREADS of 2, as from a user's shell: a trial must still use only the CPUs Ray granted it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "2"}})
    yield ray
    ray.shutdown()


# The reference study: seeds x init x freeze (10 trials), 3 epochs each, on 256 Fashion-MNIST images. Trained
# once per test run (`reference_study`), uninterrupted; the fault and cluster tests run it again with kills and
# must end with its metrics and bit-identical weights, the sweep tests read its records.
EPOCHS = 3
REFERENCE = dict(seeds=[0, 1], init=["pretrained", "random"], freeze=[4, 0], train_subset=256,
                 pretrain={"epochs": EPOCHS}, finetune={"epochs": EPOCHS})


@pytest.fixture(scope="session")
def reference_study(tmp_path_factory, ray_session):
    from ablation.driver.sweep import run_study

    root = tmp_path_factory.mktemp("reference")
    assert run_study(str(write_spec(root / "ref.yaml", name="ref", **REFERENCE)), storage=str(root)) == 0
    return root / "ref"


def copy_study(study: Path, to: Path) -> Path:
    """A copy of a finished study that a test may rerun or damage: checkpoints hard-linked (never written
    in place), every other file copied."""
    import shutil

    def link_or_copy(src, dst):
        return os.link(src, dst) if src.endswith(".pt") else shutil.copy2(src, dst)

    shutil.copytree(study, to, copy_function=link_or_copy)
    return to


def write_spec(path, **over):
    """A study spec small enough for tests: 128 Fashion-MNIST images, batch 64, CPU."""
    import yaml

    spec = {"name": "t", "dataset": "fashion-mnist", "train_subset": 128, "test_subset": 64, "batch_size": 64,
            "eval_batch_size": 256, "device": "cpu", "pretrain": {"epochs": 2}, "finetune": {"epochs": 2},
            "seeds": [0, 1], "init": ["pretrained", "random"], "freeze": [4, 0], "resources": {"cpu": 1, "gpu": 0}}
    spec.update(over)
    path.write_text(yaml.safe_dump(spec))
    return path
