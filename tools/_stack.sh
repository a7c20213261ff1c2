# Sourced by setup_env.sh and run_tests.sh: the tested stacks, by name.
# In: ROOT, MMGC_STACK (newest | oldest; default newest), MMGC_VENV,
#     MMGC_TORCH_VERSION. Out: STACK, TORCH_VERSION, VENV, PINS (extra pip pins).
STACK=${MMGC_STACK:-newest}
case "$STACK" in
  newest) TORCH_VERSION=${MMGC_TORCH_VERSION:-2.13.0}; VENV=${MMGC_VENV:-$ROOT/.venv}; PINS=() ;;
  oldest) TORCH_VERSION=${MMGC_TORCH_VERSION:-2.1.2}; VENV=${MMGC_VENV:-$ROOT/.venv-torch2.1}; PINS=("numpy<2") ;;
  *) echo "unknown MMGC_STACK '$STACK'; valid: newest, oldest" >&2; return 2 ;;
esac
