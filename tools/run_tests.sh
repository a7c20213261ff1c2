#!/usr/bin/env bash
# Install everything into .venv (first run: ~10 min, mostly MMCV's build) and
# run the test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "${MMGC_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
