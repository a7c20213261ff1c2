"""The tools' runtime: what ``tools/*.py`` import on top of the GC core.

Nothing here is loaded by ``import mmgc``; each tool imports the modules it
uses, and a config that wants one of the hooks below names its module in
``custom_imports`` (e.g. ``imports=['mmgc', 'mmgc.runtime.hooks']``).
Importing any of them first checks that the installed MMCV and MMDetection
are versions mmgc is tested with (:mod:`mmgc.version`).

- :mod:`~mmgc.runtime.cli`: ``tools/train.py`` and ``tools/test.py``;
- :mod:`~mmgc.runtime.errors`: the errors that end a tool in one line;
- :mod:`~mmgc.runtime.checkpoint`: checkpoint loading that runs no code;
- :mod:`~mmgc.runtime.resume`: the checkpoint ``--resume`` picks;
- :mod:`~mmgc.runtime.optimizer_state`: a GC run resumed from a plain-SGD
  (baseline) checkpoint;
- :mod:`~mmgc.runtime.atomic_checkpoint`: saves a kill never leaves
  half-written;
- :mod:`~mmgc.runtime.hooks`: ``StepSeedHook`` for exact resumes;
- :mod:`~mmgc.runtime.distributed`: distributed runs on CPU-only machines;
- :mod:`~mmgc.runtime.data_check`: stop before model building on missing data;
- :mod:`~mmgc.runtime.compare`: GC-vs-baseline AP comparison;
- :mod:`~mmgc.runtime.demo`, :mod:`~mmgc.runtime.shapes`: the demo and its
  synthetic dataset;
- :mod:`~mmgc.runtime.gc_stats`: reading and plotting the diagnostics.
"""

import mmcv
import mmdet

from ..version import check_version

check_version('mmcv', mmcv.__version__)
check_version('mmdet', mmdet.__version__)
