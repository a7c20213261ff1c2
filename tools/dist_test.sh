#!/usr/bin/env bash
# Distributed testing with torchrun, MMDetection's convention:
#   bash tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [tools/test.py args...]
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR, PORT as for dist_train.sh.
# Without CUDA, NUM_GPUS CPU processes per node test with the gloo backend.
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT NUM_GPUS [tools/test.py args...]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
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
    "$ROOT/tools/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}" || status=$?
if [ "$status" -ne 0 ]; then
  echo "$(basename "$0"): the distributed run failed (torchrun exit status $status): a process ended abnormally or lost the others; torchrun's 'Root Cause' above names the first one. Bound the wait for a hung process with --dist-timeout SECONDS or MMGC_DIST_TIMEOUT." >&2
  exit "$status"
fi
