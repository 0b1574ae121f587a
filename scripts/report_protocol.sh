#!/usr/bin/env bash
# One seed of the report's protocol without Ray: `ablation train` five times (rotation pretraining; then
# layer4+fc = freeze 4 and full = freeze 0 fine-tuning, each from that rotation run and from random init),
# then the five numbers beside the report's. Rerunning resumes every run (ablation train resumes its dir).
#
#   scripts/report_protocol.sh OUT [key=value ...]      keys apply to every run and win over the defaults
#   e.g. offline CIFAR-10 copy on a GPU box:
#   scripts/report_protocol.sh runs/proto dataset=imagefolder data_dir=<cifar10-jpeg> seed=0
#
# ROT_EPOCHS (30, the report does not state it) and FT_EPOCHS (20, the report's) set the schedules;
# ABLATION (default `ablation`) is the command, e.g. "python3 -m ablation.cli" where the package is on PYTHONPATH.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT [key=value ...]" >&2; exit 2; }
out=$1; shift
ablation=(${ABLATION:-ablation})
"${ablation[@]}" train stage=rotation epochs="${ROT_EPOCHS:-30}" "$@" --out "$out/rotation"
for freeze in 4 0; do
  for init in pretrained random; do
    from=(); [ "$init" = pretrained ] && from=(pretrained_from="$out/rotation")
    "${ablation[@]}" train stage=finetune init="$init" freeze="$freeze" epochs="${FT_EPOCHS:-20}" "${from[@]}" "$@" \
      --out "$out/finetune-f$freeze-$init"
  done
done
python3 - "$out" <<'PY'
import csv, json, sys
from pathlib import Path

from ablation.report.reference import FINETUNE_BEST_ACC, ROTATION_BEST_ACC, ROTATION_LOWEST_LOSS

out = Path(sys.argv[1])
rows = lambda run: list(csv.DictReader(open(out / run / "metrics.csv")))  # noqa: E731
run = json.loads((out / "rotation" / "run.json").read_text())
print(f"\none seed of the report's protocol: {run['config']['dataset']} (data {run['data_fingerprint'][:12]}), "
      f"seed {run['config']['seed']}, {run.get('device', '?')}, code {run['provenance']['code_version']}")
print(f"{'run':28} {'best acc %':>10} {'final acc %':>11} {'lowest loss':>11} {'report':>8}")
rot = rows("rotation")
print(f"{'rotation':28} {100 * max(float(r['test_acc']) for r in rot):10.2f} {100 * float(rot[-1]['test_acc']):11.2f} "
      f"{min(float(r['test_loss']) for r in rot):11.3f} {ROTATION_BEST_ACC:7.2f}% / {ROTATION_LOWEST_LOSS}")
for (freeze, init), theirs in FINETUNE_BEST_ACC.items():
    ft = rows(f"finetune-f{freeze}-{init}")
    print(f"{f'finetune freeze {freeze} {init}':28} {100 * max(float(r['test_acc']) for r in ft):10.2f} "
          f"{100 * float(ft[-1]['test_acc']):11.2f} {min(float(r['test_loss']) for r in ft):11.3f} {theirs:7.2f}%")
PY
