"""mmgc: Gradient Centralization (Yong et al., ECCV 2020) for MMEngine and
MMDetection.

``import mmgc`` (what ``custom_imports`` does in a config) loads the GC core
and registers, in MMEngine's root registries (visible from the ``mmdet``
scope), what configs name: the optimizer ``SGDGC`` (alias ``SGD_GC``), the
optim-wrapper constructor ``GCOptimWrapperConstructor`` and the hook
``GCDiagnosticsHook``; and it adds the scope ``mmgc`` to MMEngine's table of
packages that ship configs, so that a config loaded afterwards can inherit
``'mmgc::mmdet/baselines/...'`` (:mod:`mmgc.mim`). It first checks that torch and
MMEngine are versions mmgc is tested with. Nothing else happens on import: the
tools' runtime (:mod:`mmgc.runtime`) is imported by the tools that use it.
"""

import mmengine
import torch

from . import version as _version
from .version import __version__

_version.check_version('torch', torch.__version__)
_version.check_version('mmengine', mmengine.__version__)

from . import mim as _mim  # noqa: E402
from .engine.hooks import GCDiagnosticsHook  # noqa: E402
from .engine.optimizers import (  # noqa: E402
    SGDGC,
    SGDW,
    SGDWGC,
    GCOptimWrapperConstructor,
    attach_gc_hooks,
    enable_gc,
    sgd_gc,
)
from .ops import centralize, centralize_  # noqa: E402

_mim.register_config_scope()

#: The public names: the switch, the optimizers (and SGDW, SGDWGC's twin without
#: GC), GC for other optimizers, the
#: constructor, the diagnostics hook and the functional core.
__all__ = [
    'GCDiagnosticsHook',
    'GCOptimWrapperConstructor',
    'SGDGC',
    'SGDW',
    'SGDWGC',
    '__version__',
    'attach_gc_hooks',
    'centralize',
    'centralize_',
    'enable_gc',
    'sgd_gc',
]
