#!/usr/bin/env bash
# Distributed training with torchrun, MMDetection's convention:
#   bash tools/dist_train.sh CONFIG NUM_GPUS [tools/train.py args...]
# Several nodes: run it on each with NNODES, NODE_RANK, MASTER_ADDR and PORT
# set (the same MASTER_ADDR and PORT everywhere). Without CUDA, NUM_GPUS CPU
# processes per node train with the gloo backend.
# A process that dies or hangs stops the whole run with a one-line message
# (set the wait for a hung one with --dist-timeout SECONDS or MMGC_DIST_TIMEOUT).
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NUM_GPUS [tools/train.py args...]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
status=0
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$ROOT/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}" || status=$?
if [ "$status" -ne 0 ]; then
  echo "$(basename "$0"): the distributed run failed (torchrun exit status $status): a process ended abnormally or lost the others; torchrun's 'Root Cause' above names the first one. Bound the wait for a hung process with --dist-timeout SECONDS or MMGC_DIST_TIMEOUT, and resume with --resume." >&2
  exit "$status"
fi
