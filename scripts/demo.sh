#!/usr/bin/env bash
# Main job: set up, then the offline demo (train RD4AD on the texture set, test, export to OpenVINO,
# compare with torch, write heatmaps). Extra arguments go to `anomalib-ext demo`,
# e.g. `bash scripts/demo.sh --data ../shared/datasets/mtd --epochs 20`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
cd "$ROOT"
exec "$VENV/bin/anomalib-ext" demo "$@"
