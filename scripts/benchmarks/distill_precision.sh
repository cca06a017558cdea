#!/usr/bin/env bash
# Does `distill-teacher --precision bf16 --channels-last` learn the same teacher? The same distillation (offline
# TF Lite0 target, small PDN, scikit-image photos with heavy augmentation, batch 16, seed 42) in float32 and with
# both speed options, one after the other, logging the MSE every 10 steps. A CPU-sized run, not the paper's
# 60,000 steps at 256 px: STEPS (default 150) at SIZE px (default 128; the target sees twice that), and the
# target's channel statistics from 160 images instead of 10,000 (the same images in both runs).
# Usage: bash scripts/benchmarks/distill_precision.sh [STEPS] [SIZE]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
WORK="${BENCH_WORK:-/tmp/anomalib_ext_distill_precision}"
STEPS="${1:-150}"
SIZE="${2:-128}"
cd "$ROOT"
mkdir -p "$WORK"
uptime
for setting in "--precision 32" "--precision bf16 --channels-last"; do
  name="$(echo "$setting" | tr -d ' -')"
  # shellcheck disable=SC2086  # the setting is two or three flags
  "$VENV/bin/anomalib-ext" distill-teacher --backbone efficientnet_lite0 --image-size "$SIZE" --steps "$STEPS" \
    --batch-size 16 --norm-images 160 --log-every 10 $setting --output "$WORK/teacher_$name.pth" 2>&1 |
    grep -E "distill step|saved teacher" | sed "s/^/[$setting] /"
done
uptime
