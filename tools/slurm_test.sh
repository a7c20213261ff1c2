#!/usr/bin/env bash
# Testing on a Slurm cluster, MMDetection's convention:
#   GPUS=8 bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
# Environment: as tools/slurm_train.sh (GPUS, GPUS_PER_NODE, CPUS_PER_TASK,
# SRUN_ARGS; GPUS_PER_NODE=0 with TASKS_PER_NODE for CPU-only nodes).
set -euo pipefail

if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py args...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
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
    "$PYTHON" -u "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" \
    --launcher=slurm "${@:5}"
