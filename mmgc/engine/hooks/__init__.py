"""MMEngine hooks of mmgc (registered in MMEngine's root ``HOOKS``)."""

from .gc_diagnostics_hook import GCDiagnosticsHook

__all__ = ['GCDiagnosticsHook']
