"""The error type for what a user asked that a run cannot do."""

__all__ = ['ConfigError']


class ConfigError(ValueError):
    """A command-line option or config value that a run refuses before it starts.

    The tools end it in one line, exit status 2 (:func:`mmgc.runtime.cli.exit_on_user_error`);
    a config's bad value raised while the run is built reaches them as one.
    """
