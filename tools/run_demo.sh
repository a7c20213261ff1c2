#!/usr/bin/env bash
# The demo in one command: install the environment if needed, then train Mask
# R-CNN with Gradient Centralization and with its SGD baseline on synthetic
# shapes, for each training seed (a pair's two runs side by side, pair after
# pair), evaluate them (COCO metric), compare them (mean +- spread, paired
# deltas with 95% intervals, verdicts) and write reports/demo/.
#
# Usage: bash tools/run_demo.sh [--seeds S [S ...]] [--iters N] [--data-seed S]
#                               [--num-train N] [--num-val N] [--work-dir DIR]
#                               [--report-dir DIR] [--data-root DIR] [--sequential]
#                               [--threads N]
#        (options as in `python tools/run_demo.py --help`; runs finished earlier are reused)
#
# Environment: MMGC_VENV (default <repo>/.venv), as tools/setup_env.sh;
# MMGC_SKIP_SETUP=1 skips the install step (an environment is already there).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMGC_VENV:-$ROOT/.venv}
cd "$ROOT"
if [ "${MMGC_SKIP_SETUP:-0}" != "1" ]; then
  bash "$ROOT/tools/setup_env.sh"
fi
exec "$VENV/bin/python" "$ROOT/tools/run_demo.py" "$@"
