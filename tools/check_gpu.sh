#!/usr/bin/env bash
# Check mmgc on this machine's GPU(s) in one command and write one Markdown
# report (its path is the last line printed): the CUDA tests, a 2-process
# NCCL run (with 2 GPUs), bench_step.py's CUDA rows, and 30 iterations of the
# full-size Mask R-CNN R50-FPN with SGD and with SGDGC. See docs/gpu-check.md.
#
# Usage: bash tools/check_gpu.sh [--device cuda|cpu] [--sections S...] [--out-dir DIR]
#                                [--bench-models M...] [--e2e-iters N] [--wheels DIR]
#   --device cpu    the same sections at tiny sizes on the CPU (what the suite runs)
#   --wheels DIR    first install every DIR/*.whl (no index, no dependencies) into
#                   a folder of its own put on PYTHONPATH: for a machine without
#                   internet that lacks part of the stack (docs/gpu-check.md)
# Exit status: 0 if every section passed or was skipped, 1 if one failed, 2 on
# a usage error. Python: $PYTHON, else $MMGC_VENV/bin/python, else
# <repo>/.venv/bin/python, else python (or python3) on PATH.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/tools/_python.sh"
if ! command -v "$PY" >/dev/null 2>&1 && [ "$PY" = python ]; then
  PY=python3
fi
args=()
while [ $# -gt 0 ]; do
  if [ "$1" = --wheels ]; then
    if [ $# -lt 2 ] || [ ! -d "$2" ]; then
      echo "check_gpu.sh: --wheels needs a folder of .whl files; got '${2:-}'" >&2
      exit 2
    fi
    shopt -s nullglob
    wheels=("$2"/*.whl)
    shopt -u nullglob
    if [ ${#wheels[@]} -eq 0 ]; then
      echo "check_gpu.sh: --wheels $2 holds no .whl file" >&2
      exit 2
    fi
    site=$(mktemp -d "${TMPDIR:-/tmp}/mmgc-check-site.XXXXXX")
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$site" "${wheels[@]}"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "check_gpu.sh: installed ${#wheels[@]} wheels from $2 into $site"
    shift 2
  else
    args+=("$1")
    shift
  fi
done
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$ROOT/benchmarks/gpu_check.py" "${args[@]+"${args[@]}"}"
