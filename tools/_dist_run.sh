#!/usr/bin/env bash
# Shared by dist_train.sh and dist_test.sh: start a tools/*.py script on this
# node with torchrun.  Usage: _dist_run.sh SCRIPT NUM_PROCS [script args...]
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500);
# the interpreter: PYTHON, else $MMGC_VENV/bin/python, else <repo>/.venv/bin/python,
# else python (tools/_python.sh). Without CUDA, NUM_PROCS CPU processes use gloo.
set -euo pipefail
SCRIPT=$1
PROCS=$2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/tools/_python.sh"
status=0
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
"$PY" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$PROCS" \
    --master_port="${PORT:-29500}" \
    "$ROOT/tools/$SCRIPT" "${@:3}" --launcher pytorch || status=$?
if [ "$status" -ne 0 ]; then
  echo "${LAUNCHER_NAME:-$(basename "$0")}: the distributed run failed (torchrun exit status $status): a process ended abnormally or lost the others; torchrun's 'Root Cause' above names the first one. Bound the wait for a hung process with --dist-timeout SECONDS or MMGC_DIST_TIMEOUT${RESUME_HINT:-}." >&2
  exit "$status"
fi
