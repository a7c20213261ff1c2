"""mmgc: Gradient Centralization (Yong et al., ECCV 2020) for MMEngine and
MMDetection.

``import mmgc`` registers, in MMEngine's root registries (visible from the
``mmdet`` scope): the optimizer ``SGDGC`` (alias ``SGD_GC``), the optim
wrapper constructor ``GCOptimWrapperConstructor``, the hook
``GCDiagnosticsHook`` and the tools' hooks of :mod:`mmgc.engine`
(``StepSeedHook``, ``AtomicCheckpointHook``, ``PlainOptimizerStateHook``).
"""

from . import engine  # noqa: F401  (registers StepSeedHook, AtomicCheckpointHook, ...)
from .hooks import GCDiagnosticsHook
from .ops import centralize, centralize_
from .optim import SGDGC, GCOptimWrapperConstructor, sgd_gc
from .version import __version__

__all__ = [
    'GCDiagnosticsHook',
    'GCOptimWrapperConstructor',
    'SGDGC',
    '__version__',
    'centralize',
    'centralize_',
    'sgd_gc',
]
