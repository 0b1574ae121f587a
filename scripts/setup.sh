#!/usr/bin/env bash
# Installs what `ablation` needs: the offline Fashion-MNIST (Debian), PyTorch, and the package with its tests.
# TORCH_SPEC pins torch/torchvision (default: the releases this project is tested with); set it to
# e.g. "torch torchvision" on a GPU box to keep the build you already have.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST is not installed; run 'sudo apt-get install dataset-fashion-mnist' (or let torchvision download it)" >&2
  fi
fi
# shellcheck disable=SC2086
"$PYTHON" -m pip install -q $TORCH_SPEC
"$PYTHON" -m pip install -q -e ".[test]"
