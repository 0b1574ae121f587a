"""`ablation export STUDY TRIAL --out FILE`: a trial's weights as a plain torchvision resnet18 state dict.

Why: the number a report states comes from one epoch of one trial; whoever reads it should be able to load
those weights without this package: `torchvision.models.resnet18(num_classes=N).load_state_dict(...)` (with
the CIFAR stem's conv1 and max-pool swapped first, as models.build_model does). By default the epoch is the
trial's selection epoch (rundir.selection_epoch: best val_acc, else best test_acc), whose checkpoint every
run keeps.
"""

from __future__ import annotations

import io
from pathlib import Path

from ..errors import UserError
from ..trial.rundir import CHECKPOINTS, checkpoint_name, selection_epoch
from .records import read_manifest, trial_records


def export(study_dir: Path, trial: str, out: Path, epoch: str = "best") -> str:
    """Write the state dict; returns the line that says what was written and how to load it."""
    import torch

    from ..storage.atomic import write_atomic
    from ..trial.checkpoint import CheckpointError, load_checkpoint

    records = {r["name"]: r for r in trial_records(study_dir, read_manifest(study_dir))}
    if trial not in records:
        raise UserError(f"{study_dir} has no trial {trial!r}; `ablation status {study_dir}` lists them")
    record = records[trial]
    rows = record["rows"]
    if not rows:
        raise UserError(f"trial {trial} has not finished an epoch yet; nothing to export")
    if epoch == "best":
        chosen, metric = selection_epoch(rows)
        why = f"its best {metric}" + (" (selected on the test set)" if metric == "test_acc" else "")
    elif epoch == "last":
        chosen, why = rows[-1]["epoch"], "its last epoch"
    elif epoch.isdigit() and int(epoch) in {r["epoch"] for r in rows}:
        chosen, why = int(epoch), f"epoch {epoch}"
    else:
        raise UserError(f"--epoch {epoch}: give best, last or one of the epochs trial {trial} trained "
                        f"(1-{rows[-1]['epoch']})")
    folder = Path(record["location"]) / checkpoint_name(chosen)
    try:
        state = load_checkpoint(folder)
    except CheckpointError as exc:
        kept = sorted(p.name for p in (Path(record["location"]) / CHECKPOINTS).glob("epoch_*"))
        raise UserError(f"trial {trial}: no valid checkpoint of epoch {chosen} ({exc}); it keeps "
                        f"{', '.join(kept) or 'none'} (runs before 0.2.0 kept only the newest two); "
                        f"give --epoch last or one of those") from None
    weights = {k: v.cpu() for k, v in state["model"].items()}
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    write_atomic(out, buffer.getvalue())
    row = next(r for r in rows if r["epoch"] == chosen)
    cfg = record["config"]
    load = f"resnet18(num_classes={weights['fc.weight'].shape[0]})"
    if cfg.get("stem") == "cifar":
        load += " with conv1 = Conv2d(3, 64, 3, 1, 1, bias=False) and maxpool = Identity() (stem=cifar)"
    return (f"wrote {out}: trial {trial}, epoch {chosen} ({why}), test_acc {row['test_acc']:.4f}; load it into "
            f"torchvision.models.{load}")
