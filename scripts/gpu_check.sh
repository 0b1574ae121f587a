#!/usr/bin/env bash
# The prepared GPU check, one command on a machine that has torch but maybe not Ray or this package installed
# (e.g. an H100 or H200 box): the benchmark (Speed goals), K=4 sharing, and the report's protocol for 3 seeds at
# once on the CIFAR-10 JPEG copy with `ablation train`. Everything it prints is also saved under $OUT (or
# /tmp/gpu_check), with each run's metrics.csv and run.json (not its checkpoints).
#
#   cp <cifar10-jpeg>/{train,test}.zip data/cifar10-jpeg/    # data/ is git-ignored: copy it along with the repository
#   bash scripts/gpu_check.sh                     # PROTOCOL=0 skips the training runs, BENCH=0 the benchmark
#   bash scripts/gpu_check.sh --dry-run           # (or DRY_RUN=1) the plan, its expected minutes, and whether
#                                                 # everything it needs is here; runs nothing on a GPU
#
# Sized for an H200: the bench at batch 128, eager and compiled (~3 min), then 30 rotation + 4 x 20 fine-tune epochs per seed, 3 seeds
# at once (unmeasured). The runs live in RUNS (default results/studies/gpu-check, git-ignored, so kept between
# calls on the same machine): a call cut off by its time limit is resumed by the same command again,
# with BENCH=0. Set ROT_EPOCHS/FT_EPOCHS or SEEDS lower only if the machine's time is short (then say so).
set -uo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
data=${DATA_DIR:-data/cifar10-jpeg}
if [ "${DRY_RUN:-0}" = 1 ]; then
  # The plan with its expected device minutes (estimates, to be replaced by the first measured run), and a check
  # of what it needs. Exit 0 when everything is present (a GPU aside), 2 otherwise.
  cat <<PLAN
gpu_check plan (expected minutes on one H100 or H200; estimates until the first run measures them):
  device facts (GPU, driver, torch, CUDA, cuDNN, bf16, /dev/shm); nvidia-smi sampled every 5 s   ~0.2
  BENCH=${BENCH:-1}: bench at batch 128, eager and compiled, then 4 processes sharing the GPU   ~4
  PROTOCOL=${PROTOCOL:-1}: report protocol, seeds "${SEEDS:-0 1 2}" at once, ${ROT_EPOCHS:-30} rotation + 4 x ${FT_EPOCHS:-20} fine-tune epochs   unmeasured
  outputs under ${OUT:-/tmp/gpu_check}; the runs in ${RUNS:-results/studies/gpu-check} (a cut-off call resumes)
PLAN
  missing=0
  if [ -f "$data/train.zip" ] || [ -d "$data/train" ]; then echo "ok: CIFAR-10 copy in $data"
  else echo "MISSING: CIFAR-10 copy in $data (DATA_DIR=..., see the header)"; missing=1; fi
  # one interpreter for both checks (each import of torch costs seconds)
  python3 - <<'CHECK' || missing=1
import sys
try:
    import torch, torchvision
    print("ok: torch", torch.__version__, "torchvision", torchvision.__version__)
except ImportError as exc:
    sys.exit(f"MISSING: torch and torchvision for python3 ({exc})")
try:
    import ablation.cli, ablation.trial.train
    print("ok: this package imports")
except ImportError as exc:
    sys.exit(f"MISSING: the package's imports ({exc}); run from the repository")
CHECK
  if command -v nvidia-smi >/dev/null; then echo "ok: nvidia-smi"; else echo "note: no nvidia-smi here (needed on the GPU box only)"; fi
  exit $((missing * 2))
fi
out=${OUT:-/tmp/gpu_check}; mkdir -p "$out"
[ -f "$data/train.zip" ] || [ -d "$data/train" ] || { echo "gpu_check: no CIFAR-10 copy in $data (see the header)" >&2; exit 2; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version(), 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
  df -h /dev/shm | tail -n 1 | awk '{print "/dev/shm", $2}'; } 2>&1 | tee "$out/device.txt"
# utilisation and memory every 5 s while it runs (each epoch row also records its peak_memory_mb)
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$out/nvidia-smi.csv" 2>&1 &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT
if [ "${BENCH:-1}" = 1 ]; then
  # at the grid's batch (128), eager and compiled; then 4 processes sharing the GPU at that batch
  python3 -m ablation.cli bench --device cuda --data imagefolder --data-dir "$data" --batch-size 128 --compile \
    --json "$out/bench-cuda.json" 2>&1 | tee "$out/bench.txt"
  python3 -m ablation.cli bench --device cuda --data imagefolder --data-dir "$data" --batch-size 128 \
    --cases rotation-random1 --concurrent 4 --json "$out/bench-cuda-k4.json" 2>&1 | tee "$out/bench-k4.txt"
fi
if [ "${PROTOCOL:-1}" = 1 ]; then
  # SEEDS (default "0 1 2") run at once, sharing the GPU; ROT_EPOCHS / FT_EPOCHS shorten them if time is short.
  runs=${RUNS:-results/studies/gpu-check}
  for seed in ${SEEDS:-0 1 2}; do
    ABLATION="python3 -m ablation.cli" bash scripts/report_protocol.sh "$runs/protocol-s$seed" dataset=imagefolder \
      data_dir="$data" device=cuda seed="$seed" > "$out/protocol-s$seed.txt" 2>&1 &
  done
  wait
  tail -n 12 "$out"/protocol-s*.txt
  for run in "$runs"/protocol-s*/*/; do  # what results/ keeps of a run: its epochs and its record
    dest=$out/$(basename "$(dirname "$run")")/$(basename "$run"); mkdir -p "$dest"
    cp "$run"metrics.csv "$run"run.json "$dest"/ 2>/dev/null || true  # a run cut off before its first epoch has neither
  done
fi
