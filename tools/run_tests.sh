#!/usr/bin/env bash
# Run the test suite on the CPU, on each tested stack, installing what is
# missing first (tools/setup_env.sh: the first run builds MMCV once per torch
# version). Extra arguments go to pytest, which runs MMGC_TEST_WORKERS (default 2)
# pytest-xdist workers.
#
#   bash tools/run_tests.sh                    both stacks: newest (torch 2.13), then oldest (torch 2.1)
#   MMGC_STACKS=newest bash tools/run_tests.sh one stack
#
# Exits non-zero if any stack's install or tests failed.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
status=0
summary=()
for stack in ${MMGC_STACKS:-newest oldest}; do
  start=$(date +%s)
  if ! MMGC_STACK=$stack bash "$ROOT/tools/setup_env.sh"; then
    summary+=("$stack: install FAILED")
    status=1
    continue
  fi
  installed=$(date +%s)
  MMGC_STACK=$stack source "$ROOT/tools/_stack.sh"
  echo "[run_tests] stack $stack: pytest with $VENV/bin/python"
  # two workers (pytest-xdist) for the two cores; a test file stays on one worker,
  # so its module-scoped runs are made once
  "$VENV/bin/python" -m pytest -n "${MMGC_TEST_WORKERS:-2}" --dist loadfile "$@"
  rc=$?
  done_at=$(date +%s)
  summary+=("$stack: pytest exit $rc; install $((installed - start)) s, tests $((done_at - installed)) s")
  [ $rc -eq 0 ] || status=1
done
printf '[run_tests] %s\n' "${summary[@]}"
exit $status
