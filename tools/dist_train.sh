#!/usr/bin/env bash
# Distributed training with torchrun, MMDetection's convention:
#   bash tools/dist_train.sh CONFIG NUM_GPUS [tools/train.py args...]
# Several nodes: run it on each with NNODES, NODE_RANK, MASTER_ADDR and PORT
# set (the same MASTER_ADDR and PORT everywhere). Without CUDA, NUM_GPUS CPU
# processes per node train with the gloo backend.
# A process that dies or hangs stops the whole run with a one-line message
# (set the wait for a hung one with --dist-timeout SECONDS or MMGC_DIST_TIMEOUT).
# Python: the project's venv (MMGC_VENV, default <repo>/.venv) when it exists;
# PYTHON=... overrides it.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NUM_GPUS [tools/train.py args...]" >&2
  exit 2
fi
LAUNCHER_NAME=$(basename "$0") RESUME_HINT=", and resume with --resume" \
  exec bash "$(dirname "$0")/_dist_run.sh" train.py "$2" "$1" "${@:3}"
