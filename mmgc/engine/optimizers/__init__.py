"""GC optimizers and the GC optim-wrapper constructor (registered on import)."""

from .constructor import GCOptimWrapperConstructor
from .gc_step_hooks import attach_gc_hooks, supports_gc
from .selection import GC_LAYER_KINDS, gc_target_of, parse_gc_layers
from .sgd_gc import GC_GROUP_DEFAULTS, SGDGC, sgd_gc

__all__ = [
    'GC_GROUP_DEFAULTS',
    'GC_LAYER_KINDS',
    'GCOptimWrapperConstructor',
    'SGDGC',
    'attach_gc_hooks',
    'gc_target_of',
    'parse_gc_layers',
    'sgd_gc',
    'supports_gc',
]
