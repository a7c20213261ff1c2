#!/usr/bin/env bash
# Install mmgc and a pinned OpenMMLab stack into a project-local virtualenv.
#
# Usage: bash tools/setup_env.sh            (idempotent; a second run is quick)
#
# Two stacks are tested (MMGC_STACK picks one; default: newest):
#   newest  torch 2.13.0 (CPU wheel), NumPy 2             -> <repo>/.venv
#   oldest  torch 2.1.2, numpy<2: the newest torch with     -> <repo>/.venv-torch2.1
#           OpenMMLab's prebuilt MMCV 2.1 wheels, i.e. what MMDetection 3.3
#           GPU users run (PyPI's torch 2.1.2 is the CUDA 12.1 build; it runs
#           on a CPU)
# Both get MMEngine 0.10.7, MMCV 2.1.0 built from source with its ops against
# that torch, MMDetection 3.3.0, pycocotools, MMSegmentation 1.2.2 (with ftfy and
# regex, which it imports but does not declare) and mmgc (editable, test extras).
# Only oldest gets MMPretrain 1.2.0, with torchvision 0.16.2 (the build for torch
# 2.1.2; MMPretrain imports torchvision without declaring it): no torchvision on
# PyPI loads beside the CPU torch 2.13.0, so newest has no MMPretrain and its
# MMPretrain tests skip, saying so. A torchvision that cannot load beside the
# stack's torch is refused, in one sentence, even when the stack is up to date
# (check_torchvision in tools/_stack.sh): it would break mmdet.models too.
# A third, `forks`, installs the maintained forks on torch 2.13 instead
# (onedl-mmengine 0.10.12, onedl-mmcv 2.3.6 from source, onedl-mmdetection
# 3.5.1) into <repo>/.venv-forks; it is not part of CI. All stacks are
# defined in tools/_stack.sh.
#
# Environment knobs:
#   MMGC_STACK          newest | oldest                     (default: newest)
#   MMGC_VENV           where the virtualenv lives          (default: per stack, above)
#   MMGC_PYTHON         interpreter that creates it         (default: python3)
#   MMGC_TORCH_VERSION  torch pinned before anything else   (default: per stack)
#   MMGC_WHEELHOUSE     where built MMCV wheels are kept    (default: ~/.cache/mmgc/wheelhouse)
#
# Order matters on a CPU-only machine: torch is installed first and pinned, so
# that no later package pulls another build. MMCV 2.1.0 has no wheel for these
# torch/CPU pairs and is built from source (MMCV_WITH_OPS=1) against the torch
# already present (--no-build-isolation), with setuptools<81 because MMCV's
# setup.py and MMEngine 0.10.7 import pkg_resources. The built wheel is kept in
# a wheelhouse folder named by torch version, outside the clone, and built with
# pip's cache off: pip's cache keys the build by MMCV's source, not by the torch
# it was compiled against, so a wheel built for one torch would install into
# another and fail at import. Only the first install per torch version pays the
# build (8 to 30 minutes on 2 cores, depending on the machine).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/tools/_stack.sh" || exit 2
PYTHON=${MMGC_PYTHON:-python3}
WHEELHOUSE=${MMGC_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmgc/wheelhouse}/torch-$TORCH_VERSION
STAMP="$VENV/.mmgc-stack"
WANT="torch=$TORCH_VERSION ${PINS[*]:-} $MMENGINE $MMCV_DIST==$MMCV_VERSION $MMDET ${CODEBASES[*]:-} $(sha1sum < "$ROOT/pyproject.toml" | cut -c1-12)"

log() { printf '[setup_env:%s] %s\n' "$STACK" "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --progress-bar off)

refuse_bad_torchvision() {
  if ! check_torchvision "$PY"; then
    log "refused (the line above says why); fix it and run this again"
    exit 1
  fi
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  refuse_bad_torchvision
  log "environment up to date ($VENV)"
  exit 0
fi

log "1/6 torch==$TORCH_VERSION ${PINS[*]:-} (pinned first)"
"${PIP[@]}" "torch==$TORCH_VERSION" "${PINS[@]}"
log "2/6 build tools and $MMENGINE"
"${PIP[@]}" "torch==$TORCH_VERSION" "${PINS[@]}" "setuptools<81" wheel ninja "$MMENGINE"
WHEEL_GLOB="$WHEELHOUSE/${MMCV_DIST//-/_}-$MMCV_VERSION-*.whl"
if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" >/dev/null 2>&1; then
  log "3/6 $MMCV_DIST $MMCV_VERSION with ops already installed"
else
  if ! compgen -G "$WHEEL_GLOB" >/dev/null; then
    log "3/6 building $MMCV_DIST==$MMCV_VERSION with ops against torch $TORCH_VERSION into $WHEELHOUSE (8-30 minutes on 2 cores, once per torch version)"
    mkdir -p "$WHEELHOUSE"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} FORCE_CUDA=${FORCE_CUDA:-0} \
      "$PY" -m pip wheel --progress-bar off --no-cache-dir --no-build-isolation --no-deps \
      -w "$WHEELHOUSE" "$MMCV_DIST==$MMCV_VERSION"
  fi
  WHEEL=$(compgen -G "$WHEEL_GLOB" | head -n 1)
  log "3/6 $MMCV_DIST $MMCV_VERSION from $WHEEL"
  "${PIP[@]}" "torch==$TORCH_VERSION" "${PINS[@]}" "$WHEEL"
fi
log "4/6 $MMDET, pycocotools"
"${PIP[@]}" "torch==$TORCH_VERSION" "${PINS[@]}" "$MMDET" pycocotools
log "5/6 mmgc (editable) with test extras"
"${PIP[@]}" "torch==$TORCH_VERSION" "${PINS[@]}" --no-build-isolation -e "$ROOT[tests]"
if [ ${#CODEBASES[@]} -gt 0 ]; then
  started=$SECONDS
  log "6/6 the other codebases: ${CODEBASES[*]}"
  "${PIP[@]}" "torch==$TORCH_VERSION" "${PINS[@]}" "$MMDET" "${CODEBASES[@]}"
  log "6/6 took $((SECONDS - started)) s"
else
  log "6/6 no other codebase on this stack"
fi
refuse_bad_torchvision
"$PY" - <<'PY'
import importlib, importlib.util
import torch, mmengine, mmcv, mmcv.ops, mmdet, mmdet.models, mmgc  # noqa: F401
found = [f"{name} {importlib.import_module(name).__version__}"
         for name in ("mmseg", "mmpretrain", "torchvision") if importlib.util.find_spec(name)]
print(f"[setup_env] torch {torch.__version__}, mmengine {mmengine.__version__}, "
      f"mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmgc {mmgc.__version__}; "
      f"{', '.join(found) or 'no other codebase'}")
PY
echo "$WANT" > "$STAMP"
