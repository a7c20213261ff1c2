# Sourced by _dist_run.sh and _slurm_run.sh: the interpreter that runs the
# tools. In: ROOT. Out: PY, the first of
#   $PYTHON                      if set;
#   $MMGC_VENV/bin/python        if MMGC_VENV is set (an error if it has none);
#   <repo>/.venv/bin/python      if it exists (what tools/setup_env.sh makes);
#   python                       the first on PATH.
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -n "${MMGC_VENV:-}" ]; then
  PY=$MMGC_VENV/bin/python
  if [ ! -x "$PY" ]; then
    echo "$(basename "$0"): MMGC_VENV=$MMGC_VENV has no bin/python; run tools/setup_env.sh, or unset MMGC_VENV" >&2
    exit 2
  fi
elif [ -x "$ROOT/.venv/bin/python" ]; then
  PY=$ROOT/.venv/bin/python
else
  PY=python
fi
