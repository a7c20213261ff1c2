"""mmgc: Gradient Centralization (Yong et al., ECCV 2020) for MMEngine and
MMDetection.

``import mmgc`` registers, in MMEngine's root registries (visible from the
``mmdet`` scope): the optimizer ``SGDGC`` (alias ``SGD_GC``) and the optim
wrapper constructor ``GCOptimWrapperConstructor``.
"""

from .ops import centralize, centralize_
from .optim import SGDGC, GCOptimWrapperConstructor, sgd_gc
from .version import __version__

__all__ = [
    'GCOptimWrapperConstructor',
    'SGDGC',
    '__version__',
    'centralize',
    'centralize_',
    'sgd_gc',
]
