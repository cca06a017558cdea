#!/usr/bin/env bash
# Does bf16 autocast training keep accuracy? The same RD4AD run (offline TF Lite0, blocks.1/2/4, 256 px,
# batch 16, seed 0, MVTec 3D-AD tire, 8 epochs, test curve every 2) in 32-true and in bf16-mixed, one after
# the other. bf16-mixed only pays off on CPUs with bf16 matrix units (AVX-512 BF16 / AMX); on others it
# can be slower than f32: the training-speed rows say what it bought on the machine that ran them.
# Usage: bash scripts/benchmarks/bf16_accuracy.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
OUT="${BENCH_OUTPUT:-$ROOT/docs/benchmarks.md}"
WORK="${BENCH_WORK:-/tmp/anomalib_ext_bf16}"
cd "$ROOT"
for precision in 32-true bf16-mixed; do
  "$VENV/bin/anomalib-ext" benchmark --model RD4AD --data datasets/tire --backbone efficientnet_lite0 \
    --layers blocks.1 blocks.2 blocks.4 --image-size 256 --batch-size 16 --num-workers 0 --epochs 8 \
    --curve-every 2 --train-precision "$precision" --label "RD4AD, train precision $precision" \
    --work-dir "$WORK/$precision" --output "$OUT" --section "bf16 training: accuracy (RD4AD on tire)"
done
