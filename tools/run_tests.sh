#!/usr/bin/env bash
# Run the test suite on the CPU, on each tested stack, installing what is
# missing first (tools/setup_env.sh: the first run builds MMCV once per torch
# version). Extra arguments go to pytest.
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
  "$VENV/bin/python" -m pytest "$@"
  rc=$?
  done_at=$(date +%s)
  summary+=("$stack: pytest exit $rc; install $((installed - start)) s, tests $((done_at - installed)) s")
  [ $rc -eq 0 ] || status=1
done
printf '[run_tests] %s\n' "${summary[@]}"
exit $status
