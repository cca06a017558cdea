#!/usr/bin/env bash
# Where training time goes, per model and option: `anomalib-ext profile` rows (data / frozen fwd / trained
# fwd / backward / optimiser ms per step, epoch wall vs the model's own compute, validation) on MVTec 3D-AD
# tire (210 train images of 600x800, scripts/datasets/prepare.py) and MTD, 256 px, batch 16, offline Lite0.
# One run at a time on a quiet machine (2-core CPU): the rows record the load average before and after.
# Usage: bash scripts/benchmarks/training_speed.sh          (every row but the bf16 pairs below, about an hour)
#        bash scripts/benchmarks/training_speed.sh quick    (the three RD4AD-on-tire rows: image and teacher caches)
#        bash scripts/benchmarks/training_speed.sh rest     (every row but those three and the bf16 pairs)
#        bash scripts/benchmarks/training_speed.sh rstpm-cache   (RSTPM's stage 1 on MTD without and with the
#                                                  teacher-feature cache, back to back)
#        bash scripts/benchmarks/training_speed.sh no-bf16-units   (f32 against bf16-mixed, one epoch each, for
#                                                  a CPU without AVX-512: RD4AD and RSTPM's stage 1 on tire)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
OUT="${BENCH_OUTPUT:-$ROOT/docs/benchmarks.md}"
WORK="${BENCH_WORK:-/tmp/anomalib_ext_training_speed}"
SECTION="Training speed: where a step's time goes"
cd "$ROOT"
RD4AD=(--backbone efficientnet_lite0 --layers blocks.1 blocks.2 blocks.4)
COMMON=(--image-size 256 --batch-size 16 --num-workers 0 --output "$OUT" --section "$SECTION")

profile() {  # label, then any profile options
  local label="$1"; shift
  "$VENV/bin/anomalib-ext" profile --label "$label" --work-dir "$WORK/$(echo "$label" | tr ' /=,' '____')" "${COMMON[@]}" "$@"
}

MODE="${1:-all}"
UNIAD=(--model-args '{"backbone": "efficientnet_lite0", "layers": [0, 1, 2, 3], "input_size": [256, 256],
  "neighbor_size": [9, 9], "pool_size": 18}')
RSTPM_LITE0='"teacher1": "efficientnet_lite0", "teacher2": "efficientnet_lite0",
  "layers1": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"], "layers2": ["blocks.1", "blocks.2", "blocks.4"]'

RSTPM_STAGE1_MTD="{$RSTPM_LITE0, \"stage1_epochs\": 2, \"discriminator_width\": 16}"
profile_rstpm_stage1_mtd() {  # label suffix, then any model argument to add
  local suffix="$1" extra="${2:-}"
  profile "RSTPM (stage 1 only, discriminator_width=16)$suffix" --model RSTPM --data ../shared/datasets/mtd --epochs 2 \
    --model-args "${RSTPM_STAGE1_MTD%\}}$extra}"
}
if [ "$MODE" = rstpm-cache ]; then
  profile_rstpm_stage1_mtd ", teacher features not cached"
  profile_rstpm_stage1_mtd ", teacher features cached" ', "cache_teacher_features": true'
  exit 0
fi
if [ "$MODE" = no-bf16-units ]; then
  STAGE1="{$RSTPM_LITE0, \"stage1_epochs\": 1, \"discriminator_width\": 16}"
  profile "RD4AD, no bf16 units" --model RD4AD --data datasets/tire "${RD4AD[@]}" --epochs 1
  profile "RD4AD, bf16-mixed, no bf16 units" --model RD4AD --data datasets/tire "${RD4AD[@]}" --epochs 1 \
    --train-precision bf16-mixed
  profile "RSTPM (stage 1 only), no bf16 units" --model RSTPM --data datasets/tire --epochs 1 --model-args "$STAGE1"
  profile "RSTPM (stage 1 only), bf16-mixed, no bf16 units" --model RSTPM --data datasets/tire --epochs 1 \
    --model-args "$STAGE1" --train-precision bf16-mixed
  exit 0
fi
if [ "$MODE" != rest ]; then
  profile "RD4AD" --model RD4AD --data datasets/tire "${RD4AD[@]}" --epochs 2
  profile "RD4AD, no image cache" --model RD4AD --data datasets/tire "${RD4AD[@]}" --epochs 2 --no-image-cache
  profile "RD4AD, teacher features cached" --model RD4AD --data datasets/tire "${RD4AD[@]}" --epochs 2 \
    --model-args '{"cache_teacher_features": true}'
fi
[ "$MODE" = quick ] && exit 0
profile "RD4AD, bf16-mixed" --model RD4AD --data datasets/tire "${RD4AD[@]}" --epochs 2 --train-precision bf16-mixed
profile "UniAD" --model UniAD --data datasets/tire --epochs 2 "${UNIAD[@]}"
# RSTPM: epoch 1 is stage 1 (the students), epoch 2 stage 2 (the discriminator, width 64 = the report's)
profile "RSTPM (stage 1, then stage 2)" --model RSTPM --data datasets/tire --epochs 2 \
  --model-args "{$RSTPM_LITE0, \"stage1_epochs\": 1}"
profile "RSTPM (stage 1, then stage 2), bf16-mixed" --model RSTPM --data datasets/tire --epochs 2 \
  --model-args "{$RSTPM_LITE0, \"stage1_epochs\": 1}" --train-precision bf16-mixed
profile "RSTPM (stage 1, then stage 2), discriminator_width=32" --model RSTPM --data datasets/tire --epochs 2 \
  --model-args "{$RSTPM_LITE0, \"stage1_epochs\": 1, \"discriminator_width\": 32}"
profile "RD4AD" --model RD4AD --data ../shared/datasets/mtd "${RD4AD[@]}" --epochs 2
profile "UniAD" --model UniAD --data ../shared/datasets/mtd --epochs 2 "${UNIAD[@]}"
# stage 1 never runs the discriminator: width 16 only makes the validation passes cheaper
profile_rstpm_stage1_mtd ""
profile_rstpm_stage1_mtd ", teacher features cached" ', "cache_teacher_features": true'
