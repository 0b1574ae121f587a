#!/usr/bin/env python3
"""Where a sweep's time goes: run a study spec in a fresh storage dir and print its wall time, the ideal
(summed epoch time / slots), their ratio, the share of slot time in epochs and the fixed cost per trial.

    python scripts/sweep_bench.py experiments/demo.yaml [key=value ...] [--json FILE] [--keep DIR]

Epoch time is each epoch's own training + evaluation time (metrics.jsonl); everything else a slot spends
(worker start, imports, data loading, checkpoints, Ray, waiting for a dependency) is the fixed cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ablation.storage.provenance import code_version
from ablation.study import records as study
from ablation.study.spec import load_spec


def cpu_name() -> str:
    import torch

    from ablation.trial.train import device_name

    return device_name(torch.device("cpu"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", default=[])
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", help="storage dir to use and keep (default: a temp dir, removed)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(args.keep or tmp)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "ablation.cli", "sweep", args.spec, "--storage", str(storage),
                               *args.overrides], capture_output=True, text=True)
        command_s = time.monotonic() - started
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        from ablation.trial.config import parse_overrides

        study_dir = storage / load_spec(args.spec, parse_overrides(args.overrides)).name
        manifest = study.read_manifest(study_dir)
        records = study.trial_records(study_dir, manifest)
        epochs = sum(row["epoch_time_s"] for r in records for row in r["rows"])
        cost = study.sweep_cost(manifest["invocations"], epochs, len(records))
    lines = (proc.stdout + proc.stderr).count("\n")
    figures = {"spec": args.spec, "overrides": args.overrides, "trials": len(records), **cost,
               "command_s": command_s, "console_lines": lines, "code_version": code_version(),
               "machine": cpu_name(), "host": platform.node()}
    print(f"{args.spec} {' '.join(args.overrides)}: {len(records)} trials on {cost['slots']:g} slots")
    print(f"  wall {cost['wall_s']:.1f} s (the whole command {command_s:.1f} s, Ray start included), ideal "
          f"{cost['ideal_s']:.1f} s (epochs {cost['epochs_s']:.1f} s / slots): {cost['wall_over_ideal']:.2f}x")
    print(f"  {100 * cost['share']:.0f}% of slot time in epochs; fixed cost {cost['fixed_per_trial_s']:.2f} s per "
          f"trial; {lines} console lines")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
