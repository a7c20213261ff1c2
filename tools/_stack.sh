# Sourced by setup_env.sh and run_tests.sh: the tested stacks, by name.
# In: ROOT, MMGC_STACK (newest | oldest | forks; default newest), MMGC_VENV,
#     MMGC_TORCH_VERSION.
# Out: STACK, TORCH_VERSION, VENV, PINS (extra pip pins), and the OpenMMLab
#     distributions: MMENGINE, MMCV_DIST, MMCV_VERSION, MMDET; CODEBASES (the
#     other codebases mmgc is tested with, and the modules they import without
#     declaring them) and TORCHVISION (empty: none on this stack);
#     the function check_torchvision.
STACK=${MMGC_STACK:-newest}
MMENGINE="mmengine==0.10.7"
MMCV_DIST=mmcv
MMCV_VERSION=2.1.0
MMDET="mmdet==3.3.0"
PINS=()
# MMSegmentation imports ftfy and regex (mmseg.models) but does not declare them.
MMSEG=("mmsegmentation==1.2.2" ftfy regex)
# MMPretrain imports torchvision (models, datasets, engine, evaluation) without
# declaring it; it is installed only where a torchvision matches the stack's torch.
MMPRETRAIN="mmpretrain==1.2.0"
CODEBASES=("${MMSEG[@]}")
TORCHVISION=""
case "$STACK" in
  # No MMPretrain here: no torchvision on PyPI loads beside the CPU torch 2.13.0
  # (its 0.28.0 is a CUDA build; importing it fails, and so does mmdet.models).
  newest) TORCH_VERSION=${MMGC_TORCH_VERSION:-2.13.0}; VENV=${MMGC_VENV:-$ROOT/.venv} ;;
  oldest)
    TORCH_VERSION=${MMGC_TORCH_VERSION:-2.1.2}; VENV=${MMGC_VENV:-$ROOT/.venv-torch2.1}; PINS=("numpy<2")
    TORCHVISION="torchvision==0.16.2"; CODEBASES+=("$MMPRETRAIN" "$TORCHVISION") ;;
  # The maintained forks (same module names, other distribution names); not in CI.
  forks)
    TORCH_VERSION=${MMGC_TORCH_VERSION:-2.13.0}; VENV=${MMGC_VENV:-$ROOT/.venv-forks}
    MMENGINE="onedl-mmengine==0.10.12"; MMCV_DIST=onedl-mmcv; MMCV_VERSION=2.3.6
    MMDET="onedl-mmdetection==3.5.1"; CODEBASES=() ;;  # mmseg 1.2.2 wants mmcv<2.2
  *) echo "unknown MMGC_STACK '$STACK'; valid: newest, oldest, forks" >&2; return 2 ;;
esac

# check_torchvision PY: whether a torchvision that PY can import loads beside its
# torch (a build for another torch fails at import, e.g. "operator torchvision::nms
# does not exist", and breaks mmdet.models, which catches only ImportError). No
# torchvision at all passes. On failure: one sentence on stderr, status 1.
check_torchvision() {
  "$1" - <<'PY'
import importlib.util
import sys

if importlib.util.find_spec('torchvision') is not None:
    import torch

    try:
        import torchvision  # noqa: F401
        import torchvision.ops  # noqa: F401
    except Exception as err:  # RuntimeError, ImportError, OSError: a mismatched build
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version('torchvision')
        except PackageNotFoundError:
            found = 'of unknown version'
        why = ' '.join(str(err).split()) or type(err).__name__
        sys.exit(
            f'refusing torchvision {found}: it cannot load beside torch {torch.__version__} '
            f'({type(err).__name__}: {why}); uninstall it (pip uninstall torchvision) or '
            'install the torchvision built for this torch.'
        )
PY
}
