"""Is training reproducible on this device? One config trained three ways with `ablation train`:

  A  straight through;
  B  the same config and seed again, in its own run dir (a same-seed rerun);
  C  killed mid-way through epoch KILL_AT (the test switch, as a SIGKILL would leave it: the last checkpoint
     is epoch KILL_AT - 1), then resumed by rerunning the same command.

B and C are compared with A bit for bit: every epoch's losses and accuracies, and the final weights.
The README claims bit-identity on a CPU; on a GPU it needs deterministic=true (cuDNN's autotuner picks
kernels per process). Exit 0 when both match, 1 when one differs (the table says where), 2 on bad input.

    python scripts/repro_check.py OUT [key=value ...]     e.g. device=cuda deterministic=true epochs=3
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ablation.trial.checkpoint import checkpoint_dirs, load_checkpoint  # noqa: E402
from ablation.trial.rundir import METRICS_FILE  # noqa: E402
from ablation.trial.train import CRASH_AT_EPOCH  # noqa: E402

COMPARED = ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc")  # not timings


def train(out: Path, keys: list[str], crash_at: int = 0) -> int:
    """`ablation train` in a process of its own; with crash_at, its output is kept to the planned stop."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_AT_EPOCH}
    if crash_at:
        env[CRASH_AT_EPOCH] = str(crash_at)
    cmd = [sys.executable, "-m", "ablation.cli", "train", *keys, "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=bool(crash_at), text=True)
    if crash_at:
        print(f"{out.name}: stopped mid-way through epoch {crash_at} (exit {done.returncode}); rerunning resumes it")
    return done.returncode


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines() if line.strip()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint_dirs(run)[0])["model"]


def differs(a: Path, b: Path) -> str:
    """'' when b's epochs and final weights equal a's bit for bit, else where they first part."""
    ra, rb = rows(a), rows(b)
    if len(ra) != len(rb):
        return f"{len(rb)} epochs vs {len(ra)}"
    for x, y in zip(ra, rb):
        for k in COMPARED:
            if x.get(k) != y.get(k):
                return f"epoch {x['epoch']} {k}: {y.get(k)!r} vs {x.get(k)!r}"
    wa, wb = weights(a), weights(b)
    apart = {k: (wa[k].double() - wb[k].double()).abs().max().item() for k in wa if not torch.equal(wa[k], wb[k])}
    if apart:
        worst = max(apart, key=apart.get)
        return f"final weights: {len(apart)} tensors differ (largest {worst}, by {apart[worst]:.3g})"
    return ""


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    out, keys = Path(argv[0]), argv[1:]
    kill_at = int(os.environ.get("KILL_AT", "2"))
    if train(out / "A", keys):
        return 2  # `ablation train` said why in one line
    if train(out / "B", keys):
        print("repro_check: the rerun (B) failed where the first run did not; see its output above", file=sys.stderr)
        return 1
    died = train(out / "C", keys, crash_at=kill_at)
    if died == 0:
        print(f"repro_check: the run did not stop in epoch {kill_at}; give it epochs={kill_at} or more",
              file=sys.stderr)
        return 2
    if train(out / "C", keys):  # the rerun resumes from the last checkpoint
        print("repro_check: resuming C failed; see its output above", file=sys.stderr)
        return 1
    verdicts = {"same-seed rerun": differs(out / "A", out / "B"),
                f"killed in epoch {kill_at}, resumed": differs(out / "A", out / "C")}
    device = json.loads((out / "A" / "run.json").read_text()).get("device", "?")
    print(f"reproducibility on {device} ({' '.join(keys) or 'defaults'}), against run A:")
    for what, why in verdicts.items():
        print(f"  {what:<28} {'bit-identical' if not why else 'DIFFERS: ' + why}")
    return 1 if any(verdicts.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
