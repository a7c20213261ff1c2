#!/usr/bin/env bash
# Testing on a Slurm cluster, MMDetection's convention:
#   GPUS=8 bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
# Environment: as tools/slurm_train.sh (GPUS, GPUS_PER_NODE, CPUS_PER_TASK,
# SRUN_ARGS; GPUS_PER_NODE=0 with TASKS_PER_NODE for CPU-only nodes; MMGC_VENV
# or PYTHON for the interpreter).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py args...]" >&2
  exit 2
fi
exec bash "$(dirname "$0")/_slurm_run.sh" "$1" "$2" test.py "$3" "$4" "${@:5}"
