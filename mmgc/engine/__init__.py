"""The GC core's MMEngine parts: optimizers, the constructor, hooks."""

from .hooks import GCDiagnosticsHook
from .optimizers import SGDGC, GCOptimWrapperConstructor, sgd_gc

__all__ = ['GCDiagnosticsHook', 'GCOptimWrapperConstructor', 'SGDGC', 'sgd_gc']
