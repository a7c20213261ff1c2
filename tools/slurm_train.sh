#!/usr/bin/env bash
# Training on a Slurm cluster, MMDetection's convention:
#   GPUS=16 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# Environment: GPUS (tasks in total, default 8), GPUS_PER_NODE (default 8),
# CPUS_PER_TASK (default 5), SRUN_ARGS (extra srun options).
# CPU-only nodes: GPUS_PER_NODE=0 asks for no GPUs and TASKS_PER_NODE
# processes per node (default 1); they train with the gloo backend.
set -euo pipefail

if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}

if [ "$GPUS_PER_NODE" -gt 0 ]; then
  TASKS_PER_NODE=${TASKS_PER_NODE:-$GPUS_PER_NODE}
  GRES=(--gres="gpu:$GPUS_PER_NODE")
else
  TASKS_PER_NODE=${TASKS_PER_NODE:-1}
  GRES=()
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
set -x
# shellcheck disable=SC2086  # SRUN_ARGS holds several options
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    ${GRES[@]+"${GRES[@]}"} \
    --ntasks="$GPUS" \
    --ntasks-per-node="$TASKS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" \
    --launcher=slurm "${@:5}"
