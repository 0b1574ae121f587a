"""The original report's numbers, in one place, and which of our cells they are comparable to.

Source: the student report this project reproduces (torchvision ResNet18 with its ImageNet stem on 32x32
CIFAR-10 images). It printed the best test accuracy over epochs (and the lowest test loss):
- rotation pretraining: best test accuracy 77.93 %, lowest test loss 0.529;
- fine-tuning layer4 + fc (our freeze 4) for 20 epochs: pretrained 49.44 %, random init 45.82 %;
- fine-tuning the whole network (our freeze 0) for 20 epochs: pretrained 67.94 %, random init 77.10 %.
"""

from __future__ import annotations

import math
from typing import Any

from ..trial.config import TrialConfig

REPORT_DATASET = "cifar10"
REPORT_STEM = "imagenet"
REPORT_FINETUNE_EPOCHS = 20
ROTATION_BEST_ACC = 77.93  # percent
ROTATION_LOWEST_LOSS = 0.529
FINETUNE_BEST_ACC = {  # (freeze, init) -> percent
    (4, "pretrained"): 49.44,
    (4, "random"): 45.82,
    (0, "pretrained"): 67.94,
    (0, "random"): 77.10,
}


# Trial keys that are not the report's protocol: what its tables vary (stage, init, freeze, seed), its data and
# length (departures() says when a study used other or fewer data or epochs: context, not a different cell),
# and how a run executes (where files are, device, numerics, evaluation batches).
NOT_PROTOCOL = {"stage", "init", "freeze", "seed", "dataset", "data_dir", "cache_dir", "pretrained_from",
                "train_subset", "test_subset", "val_split", "data_seed", "epochs", "device", "precision",
                "channels_last", "compile", "compile_mode", "deterministic", "eval_batch_size"}


def protocol() -> dict[str, Any]:
    """The report's protocol: every other trial key at its default (the defaults are the report's setup,
    config.py). Derived, not listed: a key added later is part of it, so a cell that changes it is never
    silently called the report's."""
    return {k: f.default for k, f in TrialConfig.fields().items() if k not in NOT_PROTOCOL}


def comparable(cell: dict[str, Any]) -> bool:
    """Every protocol key the cell's trials share, and their pretraining run's (pretrain.<key>), is at the
    report's value; a key absent (NaN: trials from before it existed) ran at its default. A cell of the report's
    tables also says whether each of its trials' whole config was ("protocol", frames.py): constant pretrain.<key>
    columns are left out of the frame, so its own keys cannot tell."""
    if cell.get("protocol") is False:
        return False
    for key, value in protocol().items():
        for column in (key, f"pretrain.{key}"):
            got = cell.get(column)
            if got is not None and not (isinstance(got, float) and math.isnan(got)) and got != value:
                return False
    return True


def departures(cfg: dict[str, Any]) -> list[str]:
    """How a trial's data and length depart from the report's (all of CIFAR-10, 20 fine-tune epochs). Its
    number is then context, not a like-for-like comparison; a changed PROTOCOL hyperparameter is a different
    cell (no report number at all)."""
    def given(key: str) -> int:  # 0 where unset, or absent (NaN) in trials from before the key existed
        value = cfg.get(key)
        return int(value) if isinstance(value, (int, float)) and not math.isnan(value) else 0

    out = []
    if cfg.get("task") != REPORT_DATASET:
        out.append(f"{cfg.get('task')} data, not {REPORT_DATASET}")
    if given("train_subset"):
        out.append(f"{given('train_subset'):,} training images (train_subset), not all")
    if given("test_subset"):
        out.append(f"{given('test_subset'):,} test images (test_subset), not all")
    if given("val_split"):
        out.append(f"{given('val_split'):,} training images held out for validation (val_split)")
    if cfg.get("stage") == "finetune" and given("epochs") != REPORT_FINETUNE_EPOCHS:
        out.append(f"{given('epochs')} fine-tune epochs, not {REPORT_FINETUNE_EPOCHS}")
    return out


def context_note(trials: list[dict[str, Any]]) -> str | None:
    """One sentence on every way these trials depart from the report's setup; None when none does."""
    found = list(dict.fromkeys(d for cfg in trials for d in departures(cfg)))
    if not found:
        return None
    return (f"The report's numbers are for all of {REPORT_DATASET} (ImageNet-stem ResNet18) and "
            f"{REPORT_FINETUNE_EPOCHS} fine-tune epochs; here: {'; '.join(found)}. So they are context, not a "
            f"like-for-like comparison.")


def rotation_best_acc(cell: dict[str, Any]) -> float:
    return ROTATION_BEST_ACC if comparable(cell) else math.nan


def rotation_lowest_loss(cell: dict[str, Any]) -> float:
    return ROTATION_LOWEST_LOSS if comparable(cell) else math.nan


def finetune_best_acc(cell: dict[str, Any]) -> float:
    """The report's best-epoch accuracy for this (freeze, init) cell, NaN where it has none."""
    return FINETUNE_BEST_ACC.get((cell.get("freeze"), cell.get("init")), math.nan) if comparable(cell) else math.nan


def finetune_gap(cell: dict[str, Any]) -> float:
    """The report's pretrained - random difference at this freeze depth, in points."""
    return round(finetune_best_acc({**cell, "init": "pretrained"}) - finetune_best_acc({**cell, "init": "random"}), 2)
