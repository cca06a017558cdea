#!/usr/bin/env bash
# Set up, lint, then run the test suite offline. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
VENV="${ANOMALIB_EXT_VENV:-$HOME/.venvs/anomalib-ext}"
cd "$ROOT"
echo "[test] ruff"
"$VENV/bin/ruff" check src tests scripts
"$VENV/bin/ruff" format --check src tests scripts
echo "[test] mypy"
"$VENV/bin/mypy" src/anomalib_ext
echo "[test] pytest"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
