#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment with torch, anomalib and this package.
# The venv lives outside the checkout (ANOMALIB_EXT_VENV, default ~/.venvs/anomalib-ext) so fresh
# clones (CI) reuse it; re-running only reinstalls when pyproject.toml or the checkout path changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")  # anomalib 2.7 needs torchvision; this pair is tested

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.anomalib-ext-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16) $ROOT"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    echo "[setup] installing ${TORCH_PINS[*]} (large: the CUDA build is about 5.5 GB)"
    "$VENV/bin/pip" install --progress-bar off "${TORCH_PINS[@]}"
  fi
  echo "[setup] installing anomalib-ext and its dependencies from $ROOT"
  "$VENV/bin/pip" install --progress-bar off -e "$ROOT[dev]"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $VENV"
