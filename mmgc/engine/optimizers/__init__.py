"""GC optimizers and the GC optim-wrapper constructor (registered on import)."""

from .capability import supports_gc
from .constructor import GCOptimWrapperConstructor
from .coverage import GCCoverageError, gc_coverage
from .gc_step_hooks import attach_gc_hooks
from .gc_switch import enable_gc
from .selection import GC_LAYER_KINDS, gc_target_of, parse_gc_layers
from .sgd_gc import GC_GROUP_DEFAULTS, SGDGC, SGDWGC, sgd_gc
from .sgdw import SGDW

__all__ = [
    'GC_GROUP_DEFAULTS',
    'GC_LAYER_KINDS',
    'GCCoverageError',
    'GCOptimWrapperConstructor',
    'SGDGC',
    'SGDW',
    'SGDWGC',
    'attach_gc_hooks',
    'enable_gc',
    'gc_coverage',
    'gc_target_of',
    'parse_gc_layers',
    'sgd_gc',
    'supports_gc',
]
