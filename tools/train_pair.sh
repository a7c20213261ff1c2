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
#   --side-by-side         GPUS 1, no Slurm: train (then test) the two sides of a seed at once,
#                          one process each (implies --console-log)
#   --console-log          each run's output (training and test) to <run>/console.log, with a
#                          progress line every PROGRESS_S (20) s and the end of a failed run's log
#   --threads N            torch CPU threads per process (OMP_NUM_THREADS=N); with --side-by-side
#                          the default is half the cores (nproc), else the environment's
#   --retrain              train every run again: an existing work dir is moved aside first
#   -- ARGS                given to train.py only (e.g. --amp, --auto-scale-lr)
#
# It resumes: a run whose test_metrics.json exists is skipped; a run whose
# training finished (the file train_done in its work dir) is only tested; a
# run with a checkpoint (last_checkpoint) continues with --resume. So after a
# crash or a kill, the same command carries on where it stopped. Each run's
# training arguments (config, GPUS, threads, train.py's arguments but
# --work-dir and --resume) are recorded in <run>/train_args when it starts: a
# run recorded with other arguments is never reused nor resumed, but moved
# aside (to <run>.stale-<time>, said in one line) and trained again. A run
# without that file (trained by hand, or by an older train_pair.sh) is reused
# as before, and the line that skips it says so.
# Environment: the interpreter as for the launchers (PYTHON, else
# $MMGC_VENV/bin/python, else <repo>/.venv/bin/python, else python), the
# launchers' own (PORT, GPUS_PER_NODE, ...), and PROGRESS_S.
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
  fail "usage: $ME CONFIG GPUS --seeds S [S ...] [--base-config CFG | --gc [--gc-layers KIND ...] [--gc-variant V]] [--work-dir DIR] [--out-dir DIR] [--cfg-options K=V ...] [--slurm PARTITION] [--job-name NAME] [--side-by-side] [--console-log] [--threads N] [--retrain] [--dry-run] [-- train.py args]"
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
SIDE_BY_SIDE=0
CONSOLE_LOG=0
THREADS=''
RETRAIN=0
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
    --base-config | --work-dir | --out-dir | --slurm | --job-name | --threads)
      [ $# -ge 2 ] || fail "$1 needs a value"
      case $1 in
        --base-config) BASE_CONFIG=$2 ;;
        --work-dir) WORK_ROOT=$2 ;;
        --out-dir) OUT_DIR=$2 ;;
        --slurm) PARTITION=$2 ;;
        --job-name) JOB_NAME=$2 ;;
        --threads) THREADS=$2 ;;
      esac
      shift 2
      ;;
    --dry-run) DRY_RUN=1; shift ;;
    --side-by-side) SIDE_BY_SIDE=1; CONSOLE_LOG=1; shift ;;
    --console-log) CONSOLE_LOG=1; shift ;;
    --retrain) RETRAIN=1; shift ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) fail "unknown argument '$1'; valid: --seeds, --base-config, --gc, --gc-layers, --gc-variant, --work-dir, --out-dir, --cfg-options, --slurm, --job-name, --side-by-side, --console-log, --threads, --retrain, --dry-run, -- (train.py args)" ;;
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
[ -z "$THREADS" ] || [[ $THREADS =~ ^[1-9][0-9]*$ ]] || fail "--threads must be a whole number >= 1; got '$THREADS'"
if [ "$SIDE_BY_SIDE" = 1 ]; then
  [ "$GPUS" = 1 ] || fail "--side-by-side runs two single-process runs at once: GPUS must be 1; got '$GPUS'"
  [ -z "$PARTITION" ] || fail "--side-by-side is for one machine; drop it or --slurm '$PARTITION'"
  if [ -z "$THREADS" ]; then
    THREADS=$(($(nproc) / 2))
    [ "$THREADS" -ge 1 ] || THREADS=1
  fi
fi

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
OMP=()  # what every run's processes get in their environment
RUN_ENV=()
if [ -n "$THREADS" ]; then OMP=("OMP_NUM_THREADS=$THREADS"); RUN_ENV=(env "${OMP[@]}"); fi

say() { echo "[$ME] $*"; }
config_of() { if [ "$1" = gc ]; then echo "$CONFIG"; else echo "$BASE_CONFIG"; fi; }

# run CMD...: run it (its output to $LOG when set), or print it with --dry-run
LOG=''
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$@"
    echo
  elif [ -n "$LOG" ]; then
    "$@" >>"$LOG" 2>&1
  else
    "$@"
  fi
}

# train_args SIDE CONFIG SEED: sets ARGS, train.py's arguments after CONFIG and --work-dir
train_args() {
  ARGS=()
  if [ "$1" = gc ]; then ARGS+=("${GC_ARGS[@]+"${GC_ARGS[@]}"}"); fi
  ARGS+=("${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}" --cfg-options "randomness.seed=$3")
  ARGS+=("${CFG_OPTIONS[@]+"${CFG_OPTIONS[@]}"}")
}

# train SIDE CONFIG SEED WORK_DIR MOVED
train() {
  local side=$1 config=$2 seed=$3 work_dir=$4 extra=()
  if [ "$5" = 0 ] && [ -f "$work_dir/last_checkpoint" ]; then
    say "seed $seed $side: continuing from its last checkpoint"
    extra+=(--resume)
  else
    say "seed $seed $side: training"
  fi
  train_args "$side" "$config" "$seed"
  extra+=("${ARGS[@]}")
  if [ -n "$PARTITION" ]; then
    run env GPUS="$GPUS" "${OMP[@]+"${OMP[@]}"}" bash "$ROOT/tools/slurm_train.sh" "$PARTITION" \
      "${JOB_NAME}_s${seed}_$side" "$config" "$work_dir" "${extra[@]}"
  elif [ "$GPUS" = 1 ]; then
    run "${RUN_ENV[@]+"${RUN_ENV[@]}"}" "$PYTHON" "$ROOT/tools/train.py" "$config" --work-dir "$work_dir" "${extra[@]}"
  else
    run "${RUN_ENV[@]+"${RUN_ENV[@]}"}" bash "$ROOT/tools/dist_train.sh" "$config" "$GPUS" --work-dir "$work_dir" "${extra[@]}"
  fi
}

# test SIDE CONFIG SEED WORK_DIR MOVED
test_run() {
  local side=$1 config=$2 seed=$3 work_dir=$4 checkpoint extra=()
  if [ "$5" = 0 ] && [ -f "$work_dir/last_checkpoint" ]; then
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
    run env GPUS="$GPUS" "${OMP[@]+"${OMP[@]}"}" bash "$ROOT/tools/slurm_test.sh" "$PARTITION" \
      "${JOB_NAME}_s${seed}_${side}_test" "$config" "$checkpoint" "${extra[@]}"
  elif [ "$GPUS" = 1 ]; then
    run "${RUN_ENV[@]+"${RUN_ENV[@]}"}" "$PYTHON" "$ROOT/tools/test.py" "$config" "$checkpoint" "${extra[@]}"
  else
    run "${RUN_ENV[@]+"${RUN_ENV[@]}"}" bash "$ROOT/tools/dist_test.sh" "$config" "$checkpoint" "$GPUS" "${extra[@]}"
  fi
}

# move_aside SEED SIDE WORK_DIR WHY: move the run's work dir out of the way (never delete it)
move_aside() {
  local aside
  aside="$3.stale-$(date +%Y%m%d_%H%M%S)"
  while [ -e "$aside" ]; do aside="$aside.1"; done
  if [ "$DRY_RUN" = 1 ]; then
    say "seed $1 $2: $4; would be moved aside to $aside and trained again"
  else
    mv "$3" "$aside"
    say "seed $1 $2: $4; moved aside to $aside, training again"
  fi
}

# one_run SIDE CONFIG SEED WORK_DIR: train (or continue) and test one run, unless it is done
one_run() {
  local side=$1 config=$2 seed=$3 work_dir=$4 record note='' moved=0
  train_args "$side" "$config" "$seed"
  record=$(printf '%q ' "$config" "GPUS=$GPUS" "OMP_NUM_THREADS=${THREADS:-<environment>}" "${ARGS[@]}")
  if [ -d "$work_dir" ]; then
    if [ "$RETRAIN" = 1 ]; then
      move_aside "$seed" "$side" "$work_dir" '--retrain'
      moved=$DRY_RUN  # (a dry run moves nothing: the files still there are not this run's)
    elif [ -f "$work_dir/train_args" ] && [ "$(cat "$work_dir/train_args")" != "$record" ]; then
      move_aside "$seed" "$side" "$work_dir" "trained with other arguments than now ($work_dir/train_args: $(cat "$work_dir/train_args"))"
      moved=$DRY_RUN  # (a dry run moves nothing: the files still there are not this run's)
    elif [ ! -f "$work_dir/train_args" ]; then
      note=' (no train_args: its training arguments are not checked)'
    fi
  fi
  if [ "$moved" = 0 ] && [ -f "$work_dir/test_metrics.json" ]; then
    say "seed $seed $side: done ($work_dir/test_metrics.json), skipped$note"
    return
  fi
  if [ "$DRY_RUN" = 0 ]; then
    mkdir -p "$work_dir"
    [ -f "$work_dir/train_args" ] || echo "$record" >"$work_dir/train_args"
    if [ "$CONSOLE_LOG" = 1 ]; then LOG=$work_dir/console.log; fi
  fi
  if [ "$moved" = 0 ] && [ -f "$work_dir/train_done" ]; then
    say "seed $seed $side: trained already$note"
  else
    train "$side" "$config" "$seed" "$work_dir" "$moved"
    [ "$DRY_RUN" = 1 ] || date >"$work_dir/train_done"
  fi
  test_run "$side" "$config" "$seed" "$work_dir" "$moved"
}

# progress LOG: a run's last iteration and ETA, from its console log
progress() {
  local line
  line=$(tail -c 16384 "$1" 2>/dev/null | tr '\r' '\n' | grep -E 'Iter\((train|test)\) +\[ *[0-9]+/[0-9]+\]' | tail -n 1 || true)
  if [ -z "$line" ]; then
    echo starting
  else
    sed -E 's/.*Iter\((train|test)\) +\[ *([0-9]+\/[0-9]+)\](.*eta: ([0-9:]+))?.*/\1 \2 (eta \4)/; s/^train //; s/^test /testing /; s/ \(eta \)$//' <<<"$line"
  fi
}

# in_background SEED SIDE...: run the sides' one_run at once, a progress line every
# PROGRESS_S seconds; once all have ended, show the end of each failed run's log
in_background() {
  local seed=$1 side pids=() sides=() i status=0 code last=$SECONDS where
  shift
  for side in "$@"; do
    one_run "$side" "$(config_of "$side")" "$seed" "$WORK_ROOT/seed$seed/$side" &
    pids+=($!)
    sides+=("$side")
  done
  while [ -n "$(jobs -rp)" ]; do
    sleep 1
    if [ $((SECONDS - last)) -ge "${PROGRESS_S:-20}" ]; then
      last=$SECONDS
      where=''
      for side in "${sides[@]}"; do
        where+="${where:+, }seed $seed $side $(progress "$WORK_ROOT/seed$seed/$side/console.log")"
      done
      say "progress: $where"
    fi
  done
  for i in "${!pids[@]}"; do
    code=0
    wait "${pids[$i]}" || code=$?
    if [ "$code" != 0 ]; then
      status=$code
      echo "[$ME] seed $seed ${sides[$i]} failed (exit status $code); the end of its console log ($WORK_ROOT/seed$seed/${sides[$i]}/console.log):" >&2
      tail -n 40 "$WORK_ROOT/seed$seed/${sides[$i]}/console.log" >&2 || true
    fi
  done
  return "$status"
}

say "GC $CONFIG${GC_ARGS[*]:+ with ${GC_ARGS[*]}}, baseline $BASE_CONFIG, seeds ${SEEDS[*]}, $GPUS process(es) per run${PARTITION:+ on Slurm partition $PARTITION}${THREADS:+, $THREADS thread(s) each}; work dirs $WORK_ROOT/seed<S>/{gc,baseline}"
GC_RUNS=()
BASE_RUNS=()
for seed in "${SEEDS[@]}"; do
  GC_RUNS+=("$WORK_ROOT/seed$seed/gc")
  BASE_RUNS+=("$WORK_ROOT/seed$seed/baseline")
  if [ "$DRY_RUN" = 1 ] || [ "$CONSOLE_LOG" = 0 ]; then
    for side in gc baseline; do one_run "$side" "$(config_of "$side")" "$seed" "$WORK_ROOT/seed$seed/$side"; done
  elif [ "$SIDE_BY_SIDE" = 1 ]; then
    say "seed $seed: gc and baseline at once; console logs $WORK_ROOT/seed$seed/{gc,baseline}/console.log"
    in_background "$seed" gc baseline
  else
    for side in gc baseline; do
      say "seed $seed $side: console log $WORK_ROOT/seed$seed/$side/console.log"
      in_background "$seed" "$side"
    done
  fi
done

say "comparing"
run "$PYTHON" "$ROOT/tools/compare_ap.py" --gc "${GC_RUNS[@]}" --base "${BASE_RUNS[@]}" --out-dir "$OUT_DIR"
