#!/usr/bin/env bash
# Shared by slurm_train.sh and slurm_test.sh: start a tools/*.py script on a
# Slurm partition.  Usage: _slurm_run.sh PARTITION JOB_NAME SCRIPT [script args...]
# Environment: GPUS (tasks in total, 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5),
# SRUN_ARGS (extra srun options). CPU-only nodes: GPUS_PER_NODE=0 asks for no
# GPUs and TASKS_PER_NODE processes per node (1). The interpreter: PYTHON, else
# $MMGC_VENV/bin/python, else <repo>/.venv/bin/python, else python
# (tools/_python.sh); the nodes must see the same path.
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
SCRIPT=$3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
if [ "$GPUS_PER_NODE" -gt 0 ]; then
  TASKS_PER_NODE=${TASKS_PER_NODE:-$GPUS_PER_NODE}
  GRES=(--gres="gpu:$GPUS_PER_NODE")
else
  TASKS_PER_NODE=${TASKS_PER_NODE:-1}
  GRES=()
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/tools/_python.sh"
set -x
# shellcheck disable=SC2086  # SRUN_ARGS holds several options
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    ${GRES[@]+"${GRES[@]}"} \
    --ntasks="$GPUS" \
    --ntasks-per-node="$TASKS_PER_NODE" \
    --cpus-per-task="${CPUS_PER_TASK:-5}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS:-} \
    "$PY" -u "$ROOT/tools/$SCRIPT" "${@:4}" --launcher=slurm
