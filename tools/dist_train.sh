#!/usr/bin/env bash
# Distributed training with torchrun, MMDetection's convention:
#   bash tools/dist_train.sh CONFIG NUM_GPUS [tools/train.py args...]
# Several nodes: run it on each with NNODES, NODE_RANK, MASTER_ADDR and PORT
# set (the same MASTER_ADDR and PORT everywhere). Without CUDA, NUM_GPUS CPU
# processes per node train with the gloo backend.
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
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$ROOT/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
