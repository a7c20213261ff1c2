"""The error type for what a user asked that a run cannot do."""

__all__ = ['ConfigError']


class ConfigError(ValueError):
    """A command-line option or config value that a run refuses before it starts.

    ``tools/train.py`` and ``tools/test.py`` end it in one line (exit status
    2). A ``ValueError``, ``TypeError`` or ``KeyError`` raised while a run is
    built from its config (before its first ``before_train`` /
    ``before_test`` hook) reaches the tools as a ``ConfigError`` raised from
    it (:func:`mmgc.runtime.cli.build_runner`).
    """
