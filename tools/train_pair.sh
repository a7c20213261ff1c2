#!/usr/bin/env bash
# One row of the paper: train a GC config and its baseline twin for each seed,
# test every run, then compare the two sides (tools/compare_ap.py: mean and
# spread, the paired delta with its 95% interval, a verdict per metric).
#
#   bash tools/train_pair.sh CONFIG GPUS --seeds 0 1 2 [options] [-- train.py args]
#   bash tools/train_pair.sh CONFIG GPUS --seeds 0 1 --gc [--gc-layers conv fc] [--gc-variant V]
#
# CONFIG is the GC config; its twin is --base-config, else the metafile's
# convention: <dir>/baselines/<name without _gc>.py, else <dir>/<name without _gc>.py.
# With --gc, CONFIG is any config (no twin file): the GC side trains it with
# tools/train.py --gc (and --gc-layers / --gc-variant), the baseline is CONFIG
# itself, and the comparison still checks that the sides differ only in GC.
# GPUS is the number of processes per run: 1 runs tools/train.py and
# tools/test.py in this process's shell; more run tools/dist_train.sh and
# tools/dist_test.sh (torchrun; gloo CPU processes without CUDA); with
# --slurm PARTITION every run goes through tools/slurm_train.sh and
# tools/slurm_test.sh (srun, GPUS tasks; one run after the other).
#
# Options:
#   --seeds S [S ...]      training seeds (required); each trains one GC and one baseline run
#   --base-config CFG      the baseline twin
#   --gc                   GC on CONFIG (tools/train.py --gc) against CONFIG itself
#   --gc-layers KIND ...   with --gc: conv, fc (default both); --gc-variant V: grad, update, sgdw
#   --work-dir DIR         runs go to DIR/seed<S>/{gc,baseline} (default work_dirs/pairs/<config name>)
#   --out-dir DIR          the comparison's report (default DIR/compare under --work-dir)
#   --cfg-options K=V ...  given to both train.py and test.py (e.g. a data root)
#   --slurm PARTITION      run on Slurm; --job-name NAME prefixes the jobs' names
#   --dry-run              print what would run, run nothing
#   -- ARGS                given to train.py only (e.g. --amp, --auto-scale-lr)
#
# It resumes: a run whose test_metrics.json exists is skipped; a run whose
# training finished (the file train_done in its work dir) is only tested; a
# run with a checkpoint (last_checkpoint) continues with --resume. So after a
# crash or a kill, the same command carries on where it stopped.
# Environment: the interpreter as for the launchers (PYTHON, else
# $MMGC_VENV/bin/python, else <repo>/.venv/bin/python, else python), and the
# launchers' own (PORT, GPUS_PER_NODE, ...).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ME=$(basename "$0")
source "$ROOT/tools/_python.sh"
PYTHON=$PY
export PYTHON
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

fail() {
  echo "$ME: $*" >&2
  exit 2
}

if [ $# -lt 2 ]; then
  fail "usage: $ME CONFIG GPUS --seeds S [S ...] [--base-config CFG | --gc [--gc-layers KIND ...] [--gc-variant V]] [--work-dir DIR] [--out-dir DIR] [--cfg-options K=V ...] [--slurm PARTITION] [--job-name NAME] [--dry-run] [-- train.py args]"
fi
CONFIG=$1
GPUS=$2
shift 2
SEEDS=()
BASE_CONFIG=''
WORK_ROOT=''
OUT_DIR=''
PARTITION=''
JOB_NAME=''
DRY_RUN=0
GC=0
GC_ARGS=()
CFG_OPTIONS=()
TRAIN_ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --seeds)
      shift
      while [ $# -gt 0 ] && [[ $1 != --* ]]; do SEEDS+=("$1"); shift; done
      ;;
    --cfg-options)
      shift
      while [ $# -gt 0 ] && [[ $1 != --* ]]; do CFG_OPTIONS+=("$1"); shift; done
      ;;
    --gc) GC=1; shift ;;
    --gc-layers)
      GC_ARGS+=("$1")
      shift
      while [ $# -gt 0 ] && [[ $1 != --* ]]; do GC_ARGS+=("$1"); shift; done
      ;;
    --gc-variant)
      [ $# -ge 2 ] && [[ $2 != --* ]] || fail "$1 needs a value: grad, update or sgdw"
      GC_ARGS+=("$1" "$2")
      shift 2
      ;;
    --base-config | --work-dir | --out-dir | --slurm | --job-name)
      [ $# -ge 2 ] || fail "$1 needs a value"
      case $1 in
        --base-config) BASE_CONFIG=$2 ;;
        --work-dir) WORK_ROOT=$2 ;;
        --out-dir) OUT_DIR=$2 ;;
        --slurm) PARTITION=$2 ;;
        --job-name) JOB_NAME=$2 ;;
      esac
      shift 2
      ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) fail "unknown argument '$1'; valid: --seeds, --base-config, --gc, --gc-layers, --gc-variant, --work-dir, --out-dir, --cfg-options, --slurm, --job-name, --dry-run, -- (train.py args)" ;;
  esac
done

[ -f "$CONFIG" ] || fail "config file '$CONFIG' does not exist"
[[ $GPUS =~ ^[1-9][0-9]*$ ]] || fail "GPUS must be a whole number >= 1; got '$GPUS'"
[ ${#SEEDS[@]} -gt 0 ] || fail "give the training seeds: --seeds S [S ...]"
for seed in "${SEEDS[@]}"; do
  [[ $seed =~ ^[0-9]+$ ]] || fail "seeds must be whole numbers >= 0; got '$seed'"
done
REPEATED=$(printf '%s\n' "${SEEDS[@]}" | sort | uniq -d | tr '\n' ' ')
[ -z "$REPEATED" ] || fail "seeds must differ; given more than once: ${REPEATED% }"

NAME=$(basename "$CONFIG" .py)
if [ "$GC" = 1 ]; then
  [ -z "$BASE_CONFIG" ] || fail "--gc trains CONFIG itself as the baseline; drop --base-config '$BASE_CONFIG'"
  BASE_CONFIG=$CONFIG
  GC_ARGS=(--gc "${GC_ARGS[@]+"${GC_ARGS[@]}"}")
elif [ ${#GC_ARGS[@]} -gt 0 ]; then
  fail "${GC_ARGS[0]} needs --gc (which turns GC on for CONFIG); add --gc, or drop ${GC_ARGS[0]}"
elif [ -z "$BASE_CONFIG" ]; then
  [[ $NAME == *_gc ]] || fail "cannot find the baseline twin of '$CONFIG' (its name does not end in _gc); pass --base-config"
  DIR=$(dirname "$CONFIG")
  for candidate in "$DIR/baselines/${NAME%_gc}.py" "$DIR/${NAME%_gc}.py"; do
    if [ -f "$candidate" ]; then BASE_CONFIG=$candidate; break; fi
  done
  [ -n "$BASE_CONFIG" ] || fail "no baseline twin of '$CONFIG': neither $DIR/baselines/${NAME%_gc}.py nor $DIR/${NAME%_gc}.py exists; pass --base-config"
fi
[ -f "$BASE_CONFIG" ] || fail "baseline config '$BASE_CONFIG' does not exist"
WORK_ROOT=${WORK_ROOT:-work_dirs/pairs/$NAME}
OUT_DIR=${OUT_DIR:-$WORK_ROOT/compare}
JOB_NAME=${JOB_NAME:-$NAME}

say() { echo "[$ME] $*"; }

# run CMD...: run it, or print it with --dry-run
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

# train SIDE CONFIG SEED WORK_DIR
train() {
  local side=$1 config=$2 seed=$3 work_dir=$4 extra=()
  if [ -f "$work_dir/last_checkpoint" ]; then
    say "seed $seed $side: continuing from its last checkpoint"
    extra+=(--resume)
  else
    say "seed $seed $side: training"
  fi
  if [ "$side" = gc ]; then extra+=("${GC_ARGS[@]+"${GC_ARGS[@]}"}"); fi
  extra+=("${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}" --cfg-options "randomness.seed=$seed")
  extra+=("${CFG_OPTIONS[@]+"${CFG_OPTIONS[@]}"}")
  if [ -n "$PARTITION" ]; then
    run env GPUS="$GPUS" bash "$ROOT/tools/slurm_train.sh" "$PARTITION" \
      "${JOB_NAME}_s${seed}_$side" "$config" "$work_dir" "${extra[@]}"
  elif [ "$GPUS" = 1 ]; then
    run "$PYTHON" "$ROOT/tools/train.py" "$config" --work-dir "$work_dir" "${extra[@]}"
  else
    run bash "$ROOT/tools/dist_train.sh" "$config" "$GPUS" --work-dir "$work_dir" "${extra[@]}"
  fi
}

# test SIDE CONFIG SEED WORK_DIR
test_run() {
  local side=$1 config=$2 seed=$3 work_dir=$4 checkpoint extra=()
  if [ -f "$work_dir/last_checkpoint" ]; then
    checkpoint=$(cat "$work_dir/last_checkpoint")
  elif [ "$DRY_RUN" = 1 ]; then
    checkpoint="$work_dir/<last_checkpoint>"
  else
    fail "seed $seed $side: training ended without a checkpoint in '$work_dir' (no last_checkpoint)"
  fi
  say "seed $seed $side: testing $checkpoint"
  extra=(--work-dir "$work_dir")
  if [ ${#CFG_OPTIONS[@]} -gt 0 ]; then extra+=(--cfg-options "${CFG_OPTIONS[@]}"); fi
  if [ -n "$PARTITION" ]; then
    run env GPUS="$GPUS" bash "$ROOT/tools/slurm_test.sh" "$PARTITION" \
      "${JOB_NAME}_s${seed}_${side}_test" "$config" "$checkpoint" "${extra[@]}"
  elif [ "$GPUS" = 1 ]; then
    run "$PYTHON" "$ROOT/tools/test.py" "$config" "$checkpoint" "${extra[@]}"
  else
    run bash "$ROOT/tools/dist_test.sh" "$config" "$checkpoint" "$GPUS" "${extra[@]}"
  fi
}

say "GC $CONFIG${GC_ARGS[*]:+ with ${GC_ARGS[*]}}, baseline $BASE_CONFIG, seeds ${SEEDS[*]}, $GPUS process(es) per run${PARTITION:+ on Slurm partition $PARTITION}; work dirs $WORK_ROOT/seed<S>/{gc,baseline}"
GC_RUNS=()
BASE_RUNS=()
for seed in "${SEEDS[@]}"; do
  for side in gc baseline; do
    if [ "$side" = gc ]; then config=$CONFIG; else config=$BASE_CONFIG; fi
    work_dir="$WORK_ROOT/seed$seed/$side"
    if [ "$side" = gc ]; then GC_RUNS+=("$work_dir"); else BASE_RUNS+=("$work_dir"); fi
    if [ -f "$work_dir/test_metrics.json" ]; then
      say "seed $seed $side: done ($work_dir/test_metrics.json), skipped"
      continue
    fi
    if [ -f "$work_dir/train_done" ]; then
      say "seed $seed $side: trained already"
    else
      train "$side" "$config" "$seed" "$work_dir"
      [ "$DRY_RUN" = 1 ] || date > "$work_dir/train_done"
    fi
    test_run "$side" "$config" "$seed" "$work_dir"
  done
done

say "comparing"
run "$PYTHON" "$ROOT/tools/compare_ap.py" --gc "${GC_RUNS[@]}" --base "${BASE_RUNS[@]}" --out-dir "$OUT_DIR"
