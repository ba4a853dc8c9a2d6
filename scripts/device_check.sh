#!/usr/bin/env bash
# GPU check of the Stable Diffusion tasks (issue 5), one short script for a lent GPU machine (no network needed):
# full-size SD v1.5 + CLIP ViT-L/14 with random weights at 512x512; seconds per plain / guided image and peak
# memory per memory setting -> $OUT/sd_device_check.json (or outputs/device_check/ when OUT is unset).
#   bash scripts/device_check.sh [--steps 50] [--batch-sizes 1 4] [--dtype float16]
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-outputs/device_check}"
mkdir -p "$out_dir"
python="python3"
[ -x .venv/bin/python ] && python=".venv/bin/python"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out_dir/gpu.csv" || true
PYTHONUNBUFFERED=1 "$python" scripts/sd_device_check.py "$out_dir/sd_device_check.json" "$@" 2>&1 \
  | grep -v -e accelerate -e '^```' -e '^\.$' | tee "$out_dir/sd_device_check.log"
