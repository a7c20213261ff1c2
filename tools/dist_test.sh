#!/usr/bin/env bash
# Distributed testing with torchrun, MMDetection's convention:
#   bash tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [tools/test.py args...]
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR, PORT as for dist_train.sh.
# Without CUDA, NUM_GPUS CPU processes per node test with the gloo backend.
# Python: the project's venv (MMGC_VENV, default <repo>/.venv) when it exists;
# PYTHON=... overrides it.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT NUM_GPUS [tools/test.py args...]" >&2
  exit 2
fi
LAUNCHER_NAME=$(basename "$0") exec bash "$(dirname "$0")/_dist_run.sh" test.py "$3" "$1" "$2" "${@:4}"
