#!/usr/bin/env bash
# RD4AD on MTD trained until its test curve flattens, to tell a short budget from a real gap to PaDiM:
# offline TF Lite0 (blocks.1/2/4), the official recipe (Adam 0.005, betas (0.5, 0.999), batch 16), seed 0,
# teacher features cached (bit-identical training, tests/test_feature_cache.py), test curve every 4 epochs.
# Each trained model is also scored with the deepest layer's map alone and with the two deepest (map_layers
# variants: the fused map of the official code sums all three). Then the per-defect-type and per-layer
# breakdown of each run's checkpoint (scripts/benchmarks/per_defect_type.py), and anomalib's PaDiM at the same size.
# Usage: bash scripts/benchmarks/rd4ad_mtd.sh [128|256 ...]     (default: 128 then 256)
#        RD4AD_LAYERS="blocks.2 blocks.4 blocks.6" bash scripts/benchmarks/rd4ad_mtd.sh 256
#          (other teacher layers, strides doubling; the label names them, and PaDiM's bar, measured on
#          blocks.1/2/4, is not rerun)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
OUT="${BENCH_OUTPUT:-$ROOT/docs/benchmarks.md}"
WORK="${BENCH_WORK:-/tmp/anomalib_ext_rd4ad_mtd}"
DATA="${MTD_ROOT:-../shared/datasets/mtd}"
cd "$ROOT"
declare -A EPOCHS=([128]=40 [256]=24)
DEFAULT_LAYERS="blocks.1 blocks.2 blocks.4"
LAYERS="${RD4AD_LAYERS:-$DEFAULT_LAYERS}"
read -r -a layers <<< "$LAYERS"
suffix=""
[ "$LAYERS" != "$DEFAULT_LAYERS" ] && suffix=", layers ${LAYERS// //}"
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(128 256)
for size in "${sizes[@]}"; do
  run_dir="$WORK/$size${suffix:+_deep}"
  "$VENV/bin/anomalib-ext" benchmark --model RD4AD --data "$DATA" --backbone efficientnet_lite0 \
    --layers "${layers[@]}" --image-size "$size" --batch-size 16 --num-workers 0 \
    --epochs "${EPOCHS[$size]}" --curve-every 4 --model-args '{"cache_teacher_features": true}' \
    --variants '{"map_layers": [2]}' '{"map_layers": [1, 2]}' \
    --label "RD4AD, $size px, ${EPOCHS[$size]} epochs$suffix" --work-dir "$run_dir" \
    --output "$OUT" --section "RD4AD on MTD, trained until the curve flattens"
  # anomalib's PaDiM on the same teacher layers and size: the bar RD4AD is held to on MTD, one pass.
  if [ -z "$suffix" ]; then
    "$VENV/bin/anomalib-ext" benchmark --model Padim --data "$DATA" --backbone efficientnet_lite0 \
      --layers "${layers[@]}" --image-size "$size" --batch-size 16 --num-workers 0 --epochs 1 \
      --model-args '{"n_features": 100}' --label "PaDiM, $size px (same layers)" --work-dir "$WORK/padim_$size" \
      --output "$OUT" --section "RD4AD on MTD, trained until the curve flattens"
  fi
  checkpoint="$(find "$run_dir" -name model.ckpt | sort | tail -1)"
  echo "Per defect type, $size px ($checkpoint):"
  "$VENV/bin/python" scripts/benchmarks/per_defect_type.py --model RD4AD --checkpoint "$checkpoint" \
    --data "$DATA" --image-size "$size"
done
