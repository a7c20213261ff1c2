"""The errors mmgc raises for a value the user set (a config key, an option, a
parameter group's setting) that it checks and refuses.

The tools end them in one line, exit status 2
(:func:`mmgc.runtime.cli.exit_on_user_error`); anything else keeps its
traceback. Both are :class:`ValueError` (and :class:`ConfigTypeError` a
:class:`TypeError`), as torch's and MMEngine's own checks are.
"""

__all__ = ['ConfigError', 'ConfigTypeError']


class ConfigError(ValueError):
    """A value that mmgc checks and refuses."""


class ConfigTypeError(ConfigError, TypeError):
    """A value of a type that mmgc checks and refuses."""
