#!/usr/bin/env bash
# The fidelity before/after rows of docs/benchmarks.md: RD4AD with the old Lite0 (timm's efficientnet_lite0,
# ImageNet normalisation, ReLU students, default init; the package at commit b06f7af) and with today's
# TF Lite0, its own normalisation, Kaiming init and students whose output follows the teacher
# (student_activation auto vs the official relu; loss_form per_pixel vs flattened), on MTD and MVTec 3D-AD tire,
# plus RSTPM's image-score pooling, map choice and pseudo-anomaly source.
# One run at a time (2-core CPU). Datasets: ../shared/datasets/mtd and datasets/tire (scripts/datasets/prepare.py).
# Usage: bash scripts/benchmarks/fidelity.sh [mtd|tire ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
OUT="${BENCH_OUTPUT:-$ROOT/docs/benchmarks.md}"
WORK="${BENCH_WORK:-/tmp/anomalib_ext_fidelity}"
cd "$ROOT"
declare -A DATA=([mtd]="../shared/datasets/mtd" [tire]="datasets/tire")
declare -A EPOCHS=([mtd]=4 [tire]=8)
declare -A FORMS=([mtd]="relu:flattened auto:flattened" [tire]="relu:flattened auto:flattened auto:per_pixel")
LITE0=(--backbone efficientnet_lite0 --layers blocks.1 blocks.2 blocks.4 --image-size 256 --batch-size 16 --num-workers 0)

before_package() {  # the package as it was before the fidelity fixes, beside this checkout
  if [ ! -d "$WORK/before" ]; then git worktree add --detach "$WORK/before" b06f7af; fi
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(mtd tire)
for name in "${names[@]}"; do
  data="${DATA[$name]}"; epochs="${EPOCHS[$name]}"
  section="Fidelity: RD4AD on $name, before and after the Lite0/ReLU/init fixes"
  before_package
  PYTHONPATH="$WORK/before/src" "$VENV/bin/python" -m anomalib_ext.benchmark --model RD4AD --data "$data" "${LITE0[@]}" \
    --epochs "$epochs" --label "RD4AD before (timm efficientnet_lite0, ImageNet norm, ReLU, default init)" \
    --work-dir "$WORK/$name/before" --output "$OUT" --section "$section"
  for form in ${FORMS[$name]}; do
    activation="${form%%:*}"; loss="${form##*:}"
    "$VENV/bin/anomalib-ext" benchmark --model RD4AD --data "$data" "${LITE0[@]}" --epochs "$epochs" \
      --curve-every 2 --model-args "{\"student_activation\": \"$activation\", \"loss_form\": \"$loss\"}" \
      --label "RD4AD after (student_activation=$activation, loss_form=$loss)" \
      --work-dir "$WORK/$name/after_${activation}_$loss" --output "$OUT" --section "$section"
  done
done
