# Sourced by setup_env.sh and run_tests.sh: the tested stacks, by name.
# In: ROOT, MMGC_STACK (newest | oldest | forks; default newest), MMGC_VENV,
#     MMGC_TORCH_VERSION.
# Out: STACK, TORCH_VERSION, VENV, PINS (extra pip pins), and the OpenMMLab
#     distributions: MMENGINE, MMCV_DIST, MMCV_VERSION, MMDET.
STACK=${MMGC_STACK:-newest}
MMENGINE="mmengine==0.10.7"
MMCV_DIST=mmcv
MMCV_VERSION=2.1.0
MMDET="mmdet==3.3.0"
PINS=()
case "$STACK" in
  newest) TORCH_VERSION=${MMGC_TORCH_VERSION:-2.13.0}; VENV=${MMGC_VENV:-$ROOT/.venv} ;;
  oldest) TORCH_VERSION=${MMGC_TORCH_VERSION:-2.1.2}; VENV=${MMGC_VENV:-$ROOT/.venv-torch2.1}; PINS=("numpy<2") ;;
  # The maintained forks (same module names, other distribution names); not in CI.
  forks)
    TORCH_VERSION=${MMGC_TORCH_VERSION:-2.13.0}; VENV=${MMGC_VENV:-$ROOT/.venv-forks}
    MMENGINE="onedl-mmengine==0.10.12"; MMCV_DIST=onedl-mmcv; MMCV_VERSION=2.3.6
    MMDET="onedl-mmdetection==3.5.1" ;;
  *) echo "unknown MMGC_STACK '$STACK'; valid: newest, oldest, forks" >&2; return 2 ;;
esac
