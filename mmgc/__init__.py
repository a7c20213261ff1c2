"""mmgc: Gradient Centralization (Yong et al., ECCV 2020) for MMEngine and
MMDetection.

``import mmgc`` (what ``custom_imports`` does in a config) loads the GC core
and registers, in MMEngine's root registries (visible from the ``mmdet``
scope), what configs name: the optimizer ``SGDGC`` (alias ``SGD_GC``), the
optim-wrapper constructor ``GCOptimWrapperConstructor`` and the hook
``GCDiagnosticsHook``; and it adds the scope ``mmgc`` to MMEngine's table of
packages that ship configs, so that a config loaded afterwards can inherit
``'mmgc::baselines/...'`` (:mod:`mmgc.mim`). It first checks that torch and
MMEngine are versions mmgc is tested with. Nothing else happens on import: the
tools' runtime (:mod:`mmgc.runtime`) is imported by the tools that use it.
"""

import mmengine
import torch

from .version import __version__, check_version

check_version('torch', torch.__version__)
check_version('mmengine', mmengine.__version__)

from .engine import SGDGC, GCDiagnosticsHook, GCOptimWrapperConstructor, sgd_gc  # noqa: E402
from .mim import register_config_scope  # noqa: E402
from .ops import centralize, centralize_  # noqa: E402

register_config_scope()

__all__ = [
    'GCDiagnosticsHook',
    'GCOptimWrapperConstructor',
    'SGDGC',
    '__version__',
    'centralize',
    'centralize_',
    'sgd_gc',
]
