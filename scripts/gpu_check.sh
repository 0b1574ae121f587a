#!/usr/bin/env bash
# The prepared GPU check, one command on a machine that has torch but maybe not Ray or this package installed
# (e.g. an H100 or H200 box): the benchmark (Speed goals), K=4 sharing, reproducibility (a same-seed rerun and
# a kill/resume compared bit for bit, with and without deterministic=true), a fractional-GPU Ray sweep beside
# a gpu: 0 one (when Ray imports), and the report's protocol for 3 seeds at once on the CIFAR-10 JPEG copy.
# Everything it prints is also saved under $OUT (or /tmp/gpu_check), with each run's metrics.csv and run.json
# (not its checkpoints).
#
#   cp <cifar10-jpeg>/{train,test}.zip data/cifar10-jpeg/   # data/ is git-ignored: copy it along with the repo
#   bash scripts/gpu_check.sh                     # BENCH=0, REPRO=0, RAY=0 or PROTOCOL=0 skips that step
#   bash scripts/gpu_check.sh --dry-run           # (or DRY_RUN=1) the plan, its expected minutes, and whether
#                                                 # everything it needs is here; runs nothing on a GPU
#
# Ray on a box without a package index: put its wheels (ray without ray/jars, pyarrow and what they need) in
# data/wheels/ and they are installed from there; without `import ray.tune` the Ray step is skipped.
#
# DEVICE=cpu SUBSETS="train_subset=100 test_subset=50" RAY_GPU=0 runs the REPRO and RAY steps on a CPU (the
# tests do, so that their code has run before a GPU's minutes are spent on it).
#
# Sized for an H200: the bench at batch 128, eager and compiled with CUDA graphs (~3 min), the checks above
# (~5 min), then 30 rotation + 4 x 20 fine-tune epochs per seed, 3 seeds at once (unmeasured). The runs live
# in RUNS (default results/studies/gpu-check, git-ignored, so kept between calls on the same machine): a call
# cut off by its time limit is resumed by the same command again, with BENCH=0 REPRO=0 RAY=0. Set
# ROT_EPOCHS/FT_EPOCHS or SEEDS lower only if the machine's time is short (then say so).
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
  BENCH=${BENCH:-1}: bench at batch 128, eager and compiled (CUDA graphs), then 4 processes sharing the GPU   ~4
  REPRO=${REPRO:-1}: same-seed rerun and kill/resume, bit for bit, deterministic true and false   ~2
  RAY=${RAY:-1}: a sweep at gpu 0.25 (10 trials, 4 at once), then one at gpu 0 that must not touch CUDA   ~3
  PROTOCOL=${PROTOCOL:-1}: report protocol, seeds "${SEEDS:-0 1 2}" at once, ${ROT_EPOCHS:-30} rotation + \
4 x ${FT_EPOCHS:-20} fine-tune epochs   unmeasured
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
  if python3 -c "import ray.tune" 2>/dev/null; then echo "ok: ray"
  elif [ -d data/wheels ]; then echo "ok: ray will be installed from data/wheels"
  else echo "note: no Ray and no data/wheels: the Ray step will be skipped"; fi
  if command -v nvidia-smi >/dev/null; then echo "ok: nvidia-smi"
  else echo "note: no nvidia-smi here (needed on the GPU box only)"; fi
  exit $((missing * 2))
fi
out=${OUT:-/tmp/gpu_check}; mkdir -p "$out"
device=${DEVICE:-cuda}
[ -f "$data/train.zip" ] || [ -d "$data/train" ] || {
  echo "gpu_check: no CIFAR-10 copy in $data (see the header)" >&2; exit 2; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version(), 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
  df -h /dev/shm | tail -n 1 | awk '{print "/dev/shm", $2}'; } 2>&1 | tee "$out/device.txt"
# utilisation and memory every 5 s while it runs (each epoch row also records its peak_memory_mb)
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$out/nvidia-smi.csv" 2>&1 &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT
if [ "${BENCH:-1}" = 1 ]; then
  # at the grid's batch (128), eager and compiled (CUDA graphs: reduce-overhead); then 4 processes sharing the
  # GPU at that batch
  python3 -m ablation.cli bench --device "$device" --data imagefolder --data-dir "$data" --batch-size 128 \
    --compile reduce-overhead \
    --json "$out/bench-$device.json" 2>&1 | tee "$out/bench.txt"
  python3 -m ablation.cli bench --device "$device" --data imagefolder --data-dir "$data" --batch-size 128 \
    --cases rotation-random1 --concurrent 4 --json "$out/bench-$device-k4.json" 2>&1 | tee "$out/bench-k4.txt"
fi
runs=${RUNS:-results/studies/gpu-check}
small=(dataset=imagefolder data_dir="$data" ${SUBSETS:-train_subset=10000 test_subset=2000})
if [ "${REPRO:-1}" = 1 ]; then
  # one config trained straight, again, and killed in epoch 2 then resumed: on a GPU bit-identity needs
  # deterministic=true (cuDNN's autotuner chooses kernels per process); false shows what autotuning costs it
  for det in true false; do
    rm -rf "$runs/repro-det-$det"  # a fresh comparison each call
    python3 scripts/repro_check.py "$runs/repro-det-$det" "${small[@]}" epochs=3 device="$device" deterministic=$det \
      > "$out/repro-det-$det.txt" 2>&1
    tail -n 3 "$out/repro-det-$det.txt"
  done
fi
if [ "${RAY:-1}" = 1 ]; then
  [ -d data/wheels ] && ! python3 -c "import ray.tune" 2>/dev/null && \
    python3 -m pip install -q --no-index --find-links data/wheels "ray[tune]" 2>&1 | tail -n 2
  if python3 -c "import ray.tune" 2>/dev/null; then
    # 10 trials at gpu 0.25 (4 share the GPU), then a study at gpu 0 on the same box: device=auto must give cpu
    python3 -m ablation.cli sweep experiments/demo.yaml --storage "$runs/ray" name=gpu-quarter device=auto \
      "${small[@]}" seeds=[0,1] pretrain.epochs=3 finetune.epochs=3 "resources={cpu: 2, gpu: ${RAY_GPU:-0.25}}" \
      > "$out/ray-gpu-quarter.txt" 2>&1
    python3 -m ablation.cli sweep experiments/demo.yaml --storage "$runs/ray" name=gpu-none device=auto \
      "${small[@]}" seeds=[0] freeze=[4] pretrain.epochs=1 finetune.epochs=1 'resources={cpu: 2, gpu: 0}' \
      > "$out/ray-gpu-none.txt" 2>&1
    python3 - "$runs/ray" <<'PY' | tee "$out/ray.txt"
import json, sys
from collections import Counter
from pathlib import Path
for study in ("gpu-quarter", "gpu-none"):
    files = list(Path(sys.argv[1], study, "trials").glob("*/metrics.jsonl"))
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    kinds = Counter(r.get("device_kind") for r in rows)
    rate = sorted(r["train_images_per_s"] for r in rows)
    print(f"ray {study}: {len(rows)} epochs over {len(files)} trials, device_kind {dict(kinds)}, "
          f"median {rate[len(rate) // 2] if rate else 0:.0f} images/s per trial")
PY
  else
    echo "ray: not importable here (and no data/wheels): the Ray step is skipped" | tee "$out/ray.txt"
  fi
fi
if [ "${PROTOCOL:-1}" = 1 ]; then
  # SEEDS (default "0 1 2") run at once, sharing the GPU; ROT_EPOCHS / FT_EPOCHS shorten them if time is short.
  pids=()
  for seed in ${SEEDS:-0 1 2}; do
    ABLATION="python3 -m ablation.cli" bash scripts/report_protocol.sh "$runs/protocol-s$seed" dataset=imagefolder \
      data_dir="$data" device="$device" seed="$seed" > "$out/protocol-s$seed.txt" 2>&1 &
    pids+=($!)
  done
  [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"  # these runs only: a bare wait would wait on the sampler forever
  tail -n 12 "$out"/protocol-s*.txt
  shopt -s nullglob  # no run yet: no folder named after the pattern
  for run in "$runs"/protocol-s*/*/; do  # what results/ keeps of a run: its epochs and its record
    dest=$out/$(basename "$(dirname "$run")")/$(basename "$run"); mkdir -p "$dest"
    cp "$run"metrics.csv "$run"run.json "$dest"/ 2>/dev/null || true  # a run cut off before its first epoch has neither
  done
fi
echo "== gpu_check summary (every figure's context is in $out) =="
cat "$out/device.txt"
grep -h -e "harness/naive" -e "compiled/eager" -e "^concurrent: 1 process" "$out"/bench*.txt 2>/dev/null
grep -h -A2 "^reproducibility" "$out"/repro-det-*.txt 2>/dev/null
cat "$out/ray.txt" 2>/dev/null
grep -h -A6 "^one seed of the report's protocol" "$out"/protocol-s*.txt 2>/dev/null
exit 0  # each step's outcome is in the summary above (a grep that found nothing is no failure)
