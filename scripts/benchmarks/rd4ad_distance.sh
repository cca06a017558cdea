#!/usr/bin/env bash
# Why RD4AD ranks images below anomalib's PaDiM on the same Lite0 features: train the official recipe at
# 128 px on MTD, MVTec 3D-AD tire and KolektorSDD (40 epochs, teacher features cached, curve every 8 epochs;
# rows appended to docs/benchmarks.md), then re-score each trained model with other distances on its own
# features (scripts/benchmarks/rd4ad_distance.py) and check where normal images peak
# (scripts/benchmarks/map_position_bias.py). The tables are printed; docs/benchmarks.md quotes them.
# Usage: bash scripts/benchmarks/rd4ad_distance.sh [mtd|tire|kolektor ...]     (default: all three)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
OUT="${BENCH_OUTPUT:-$ROOT/docs/benchmarks.md}"
WORK="${BENCH_WORK:-/tmp/anomalib_ext_rd4ad_distance}"
cd "$ROOT"
declare -A DATA=([mtd]="${MTD_ROOT:-../shared/datasets/mtd}" [tire]=datasets/tire [kolektor]=datasets/kolektor)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(mtd tire kolektor)
for name in "${names[@]}"; do
  data="${DATA[$name]:?unknown dataset $name: use mtd, tire or kolektor}"
  [ -d "$data" ] || { echo "missing $data: make it with scripts/datasets/prepare.py (see docs/benchmarks.md)" >&2; exit 1; }
  "$VENV/bin/anomalib-ext" benchmark --model RD4AD --data "$data" --backbone efficientnet_lite0 \
    --layers blocks.1 blocks.2 blocks.4 --image-size 128 --batch-size 16 --num-workers 0 --epochs 40 \
    --curve-every 8 --model-args '{"cache_teacher_features": true}' --label "RD4AD, 128 px, 40 epochs" \
    --work-dir "$WORK/$name" --output "$OUT" --section "RD4AD's distance against PaDiM's (128 px)"
  checkpoint="$(find "$WORK/$name" -name model.ckpt | sort | tail -1)"
  for diagnosis in rd4ad_distance map_position_bias; do
    echo "$diagnosis, $name ($checkpoint):"
    "$VENV/bin/python" "scripts/benchmarks/$diagnosis.py" --model RD4AD --checkpoint "$checkpoint" \
      --data "$data" --image-size 128
  done
done
