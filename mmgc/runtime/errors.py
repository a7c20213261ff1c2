"""The error type for what a user asked that a run cannot do: mmgc's
:class:`~mmgc.errors.ConfigError`, which the core raises too (re-exported here
for the tools' runtime)."""

from ..errors import ConfigError, ConfigTypeError

__all__ = ['ConfigError', 'ConfigTypeError']
