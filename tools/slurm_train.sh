#!/usr/bin/env bash
# Training on a Slurm cluster, MMDetection's convention:
#   GPUS=16 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# Environment: GPUS (tasks in total, default 8), GPUS_PER_NODE (default 8),
# CPUS_PER_TASK (default 5), SRUN_ARGS (extra srun options).
# CPU-only nodes: GPUS_PER_NODE=0 asks for no GPUs and TASKS_PER_NODE
# processes per node (default 1); they train with the gloo backend.
# Python: the project's venv (MMGC_VENV, default <repo>/.venv) when it exists;
# PYTHON=... overrides it.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args...]" >&2
  exit 2
fi
exec bash "$(dirname "$0")/_slurm_run.sh" "$1" "$2" train.py "$3" --work-dir="$4" "${@:5}"
