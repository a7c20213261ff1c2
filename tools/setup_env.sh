#!/usr/bin/env bash
# Install mmgc and its pinned OpenMMLab stack into a project-local virtualenv.
#
# Usage: bash tools/setup_env.sh            (idempotent; a second run is quick)
#
# Environment knobs:
#   MMGC_VENV           where the virtualenv lives        (default: <repo>/.venv)
#   MMGC_PYTHON         interpreter that creates it        (default: python3)
#   MMGC_TORCH_VERSION  torch pinned before anything else  (default: 2.13.0)
#
# Order matters on a CPU-only machine: torch is installed first and pinned, so
# that no later package pulls a CUDA build; MMCV 2.1.0 has no wheel for recent
# torch and is built from source with its ops (MMCV_WITH_OPS=1) against the
# torch already present (--no-build-isolation), with setuptools<81 because
# MMCV's setup.py and MMEngine 0.10.7 import pkg_resources. pip keeps the built
# MMCV wheel in its cache, so only the first install pays the ~8 min build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMGC_VENV:-$ROOT/.venv}
PYTHON=${MMGC_PYTHON:-python3}
TORCH_VERSION=${MMGC_TORCH_VERSION:-2.13.0}
STAMP="$VENV/.mmgc-stack"
WANT="torch=$TORCH_VERSION mmengine=0.10.7 mmcv=2.1.0 mmdet=3.3.0 $(cat "$ROOT/pyproject.toml" | sha1sum | cut -c1-12)"

log() { printf '[setup_env] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --progress-bar off)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  log "environment up to date ($VENV)"
  exit 0
fi

log "1/5 torch==$TORCH_VERSION (pinned first)"
"${PIP[@]}" "torch==$TORCH_VERSION"
log "2/5 build tools and MMEngine"
"${PIP[@]}" "setuptools<81" wheel ninja "mmengine==0.10.7"
if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" >/dev/null 2>&1; then
  log "3/5 mmcv 2.1.0 with ops already installed"
else
  log "3/5 mmcv==2.1.0 from source with ops (about 8 minutes on 2 cores the first time; cached after)"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} FORCE_CUDA=${FORCE_CUDA:-0} \
    "${PIP[@]}" --no-build-isolation "mmcv==2.1.0"
fi
log "4/5 mmdet==3.3.0, pycocotools"
"${PIP[@]}" "mmdet==3.3.0" pycocotools
log "5/5 mmgc (editable) with test extras"
"${PIP[@]}" --no-build-isolation -e "$ROOT[tests]"
"$PY" - <<'PY'
import torch, mmengine, mmcv, mmcv.ops, mmdet, mmgc  # noqa: F401
print(f"[setup_env] torch {torch.__version__}, mmengine {mmengine.__version__}, "
      f"mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmgc {mmgc.__version__}")
PY
echo "$WANT" > "$STAMP"
