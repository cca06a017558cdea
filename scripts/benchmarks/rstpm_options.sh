#!/usr/bin/env bash
# RSTPM options the report leaves open, measured on MVTec 3D-AD tire (datasets/tire, scripts/datasets/prepare.py):
# pseudo-anomaly source (Perlin noise only vs scikit-image textures, the report used DTD) and, from each
# trained model, the three maps (combined, S-T only, discriminator only) and the image score
# (max vs DRAEM's 21x21 mean-pooled max). Both teachers TF EfficientNet-Lite0 (offline weights), 128 px,
# stage 1 = 12 epochs (156 steps), stage 2 = 2 epochs: NOT the paper's 1:3 ratio. With the recipe's ratio
# at a CPU budget (4 epochs: one stage-1 epoch, 13 steps) the students are barely trained and the S-T map
# ranks defects below normal pixels (pixel AUROC 10 on tire), which says nothing about these options; stage 2
# costs about 4.5 min an epoch here, so the discriminator gets the short end. One run at a time (2-core CPU).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
OUT="${BENCH_OUTPUT:-$ROOT/docs/benchmarks.md}"
WORK="${BENCH_WORK:-/tmp/anomalib_ext_rstpm_options}"
DATA="${RSTPM_DATA:-datasets/tire}"
cd "$ROOT"
MODEL_ARGS='"teacher1": "efficientnet_lite0", "teacher2": "efficientnet_lite0",
  "layers1": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"], "layers2": ["blocks.1", "blocks.2", "blocks.4"]'
for source in perlin textures; do
  "$VENV/bin/anomalib-ext" benchmark --model RSTPM --data "$DATA" --image-size 128 --batch-size 16 --num-workers 0 \
    --epochs 14 --curve-every 2 --model-args "{$MODEL_ARGS, \"stage1_epochs\": 12, \"anomaly_source\": \"$source\"}" \
    --label "RSTPM (anomaly_source=$source)" \
    --variants '{"score_pooling": "mean_pool_max"}' '{"score_map": "student_teacher"}' '{"score_map": "discriminator"}' \
    --work-dir "$WORK/$source" --output "$OUT" --section "RSTPM options on $(basename "$DATA")"
done
