#!/usr/bin/env bash
# Why the distillation models rank images below anomalib's PaDiM on the same Lite0 features. Trains, at 128 px
# with teacher features cached, RD4AD's official recipe (40 epochs, curve every 8) on MTD, MVTec 3D-AD tire and
# KolektorSDD, and RSTPM's stage 1 (the S-T map; the row "RSTPM (S-T map, attention *+)" of
# configs/benchmarks/rstpm_student_ablations.yaml: 12 epochs, curve every 2) on MTD, and UniAD separate on MTD (the
# row of configs/benchmarks/uniad_unified.yaml: 21 epochs, about 1,000 updates); rows are appended to
# docs/benchmarks.md. Then re-scores each trained model with other distances on its own features
# (scripts/benchmarks/distillation_distance.py) and checks where normal images peak
# (scripts/benchmarks/map_position_bias.py). The tables are printed; docs/benchmarks.md quotes them.
# Usage: bash scripts/benchmarks/distillation_distance.sh [rd4ad:mtd rd4ad:tire rd4ad:kolektor rstpm:mtd uniad:mtd]
#        (default: all five)
#        UNIAD_EPOCHS=63 UNIAD_CURVE_EVERY=9 bash scripts/benchmarks/distillation_distance.sh uniad:mtd
#        (UniAD longer: the MTD row of configs/benchmarks/uniad_unified_3000.yaml, about 3,000 updates, in float32)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
OUT="${BENCH_OUTPUT:-$ROOT/docs/benchmarks.md}"
WORK="${BENCH_WORK:-/tmp/anomalib_ext_distillation_distance}"
SECTION="Distillation models' distance against PaDiM's (128 px)"
cd "$ROOT"
declare -A DATA=([mtd]="${MTD_ROOT:-../shared/datasets/mtd}" [tire]=datasets/tire [kolektor]=datasets/kolektor)
RSTPM_ARGS='{"teacher1": "efficientnet_lite0", "teacher2": "efficientnet_lite0",
  "layers1": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"], "layers2": ["blocks.1", "blocks.2", "blocks.4"],
  "stage1_epochs": 1000, "score_map": "student_teacher", "cache_teacher_features": true}'
UNIAD_ARGS='{"backbone": "efficientnet_lite0", "layers": [0, 1, 2, 3], "input_size": [128, 128],
  "neighbor_size": [3, 3], "pool_size": 9, "cache_teacher_features": true}'
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(rd4ad:mtd rd4ad:tire rd4ad:kolektor rstpm:mtd uniad:mtd)
for run in "${runs[@]}"; do
  model="${run%%:*}"
  name="${run#*:}"
  data="${DATA[$name]:?unknown dataset $name: use mtd, tire or kolektor}"
  [ -d "$data" ] || { echo "missing $data: make it with scripts/datasets/prepare.py (see docs/benchmarks.md)" >&2; exit 1; }
  common=(--data "$data" --image-size 128 --batch-size 16 --num-workers 0 --work-dir "$WORK/$model/$name"
    --output "$OUT" --section "$SECTION")
  case "$model" in
    rd4ad)
      class=RD4AD
      "$VENV/bin/anomalib-ext" benchmark --model RD4AD --backbone efficientnet_lite0 \
        --layers blocks.1 blocks.2 blocks.4 --epochs 40 --curve-every 8 \
        --model-args '{"cache_teacher_features": true}' --label "RD4AD, 40 epochs" "${common[@]}" ;;
    rstpm)
      class=RSTPM
      "$VENV/bin/anomalib-ext" benchmark --model RSTPM --epochs 12 --curve-every 2 --model-args "$RSTPM_ARGS" \
        --label "RSTPM (S-T map, attention *+), stage 1 only, 12 epochs" "${common[@]}" ;;
    uniad)
      class=UniAD
      epochs="${UNIAD_EPOCHS:-21}"
      label="UniAD separate, about 1,000 updates"
      [ "$epochs" = 21 ] || label="UniAD separate, $epochs epochs"
      "$VENV/bin/anomalib-ext" benchmark --model UniAD --epochs "$epochs" --curve-every "${UNIAD_CURVE_EVERY:-4}" \
        --model-args "$UNIAD_ARGS" --label "$label" "${common[@]}" ;;
    *) echo "unknown model $model: use rd4ad, rstpm or uniad" >&2; exit 1 ;;
  esac
  checkpoint="$(find "$WORK/$model/$name" -name model.ckpt | sort | tail -1)"
  for diagnosis in distillation_distance map_position_bias; do
    echo "$diagnosis, $class on $name ($checkpoint):"
    "$VENV/bin/python" "scripts/benchmarks/$diagnosis.py" --model "$class" --checkpoint "$checkpoint" \
      --data "$data" --image-size 128
  done
done
