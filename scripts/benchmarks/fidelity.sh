#!/usr/bin/env bash
# The fidelity before/after rows of docs/benchmarks.md: RD4AD with the old Lite0 (timm's efficientnet_lite0,
# ImageNet normalisation, ReLU students, default init; the package at commit b06f7af) and with today's
# TF Lite0, its own normalisation, Kaiming init and students whose output follows the teacher
# (student_activation auto vs the official relu; loss_form per_pixel vs flattened), on MTD and MVTec 3D-AD tire,
# plus RSTPM's image-score pooling, map choice and pseudo-anomaly source.
# One run at a time (2-core CPU). Datasets: ../shared/datasets/mtd and datasets/tire (scripts/datasets/prepare.py).
# Usage: bash scripts/benchmarks/fidelity.sh [mtd|tire ...]       (before/after, then the ablations)
#        FIDELITY_ABLATIONS_ONLY=1 bash scripts/benchmarks/fidelity.sh   (only the single-point ablations)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
OUT="${BENCH_OUTPUT:-$ROOT/docs/benchmarks.md}"
WORK="${BENCH_WORK:-/tmp/anomalib_ext_fidelity}"
cd "$ROOT"
declare -A DATA=([mtd]="../shared/datasets/mtd" [tire]="datasets/tire")
declare -A EPOCHS=([mtd]=4 [tire]=8)
LITE0=(--backbone efficientnet_lite0 --layers blocks.1 blocks.2 blocks.4 --image-size 256 --batch-size 16 --num-workers 0)

before_package() {  # the package as it was before the fidelity fixes, beside this checkout
  if [ ! -d "$WORK/before" ]; then git worktree add --detach "$WORK/before" b06f7af; fi
}

before_row() {  # $1 dataset name
  before_package
  PYTHONPATH="$WORK/before/src" "$VENV/bin/python" -m anomalib_ext.benchmark --model RD4AD --data "${DATA[$1]}" \
    "${LITE0[@]}" --epochs "${EPOCHS[$1]}" \
    --label "RD4AD before (timm efficientnet_lite0, ImageNet norm, ReLU, default init)" \
    --work-dir "$WORK/$1/before" --output "$OUT" --section "Fidelity: RD4AD on $1, before and after the Lite0/ReLU/init fixes"
}

after_row() {  # $1 dataset name, $2 student_activation, $3 loss_form
  "$VENV/bin/anomalib-ext" benchmark --model RD4AD --data "${DATA[$1]}" "${LITE0[@]}" --epochs "${EPOCHS[$1]}" \
    --curve-every 2 --model-args "{\"student_activation\": \"$2\", \"loss_form\": \"$3\"}" \
    --label "RD4AD after (student_activation=$2, loss_form=$3)" \
    --work-dir "$WORK/$1/after_$2_$3" --output "$OUT" --section "Fidelity: RD4AD on $1, before and after the Lite0/ReLU/init fixes"
}

# before and after (all fixes) on each dataset first, then the single-point ablations
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(tire mtd)
if [ -z "${FIDELITY_ABLATIONS_ONLY:-}" ]; then
  for name in "${names[@]}"; do before_row "$name"; after_row "$name" auto flattened; done
fi
for name in "${names[@]}"; do after_row "$name" relu flattened; done
after_row tire auto per_pixel
