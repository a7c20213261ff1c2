"""Did GC help? Compare GC runs with their baseline twins over seeds (docs/tools.md,
"Compare GC with its baseline").

Three parts: :mod:`.runs` (loading a run, the config check, pairing by seed, the
paper's deltas), :mod:`.stats` (means, spreads, paired deltas with a Student's t
interval and a verdict, on SciPy) and :mod:`.render` (Markdown, CSV, PNG).
APs are in percent (CocoMetric's x 100).
"""

from . import render, runs, stats
from .render import *  # noqa: F403
from .runs import *  # noqa: F403
from .stats import *  # noqa: F403

__all__ = [*runs.__all__, *stats.__all__, *render.__all__]
