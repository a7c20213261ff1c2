"""Test (and evaluate) a detector, segmentor or classifier: MMDetection's
``tools/test.py`` with mmgc, for a config of MMDetection, MMSegmentation or
MMPretrain (its ``default_scope``; docs/codebases.md).

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
        [--show] [--show-dir DIR] [--cfg-options KEY=VALUE ...]
        [--launcher {none,pytorch,slurm,mpi}] [--dist-timeout SECONDS]

Writes the metrics to ``<work_dir>/test_metrics.json`` for
``tools/compare_ap.py``. The same as the console script ``mmgc-test`` of an
installed mmgc: both call :func:`mmgc.runtime.entry_points.main_test`. See
docs/tools.md; the logic lives in ``mmgc.runtime.cli``.
"""

import sys

from mmgc.runtime.entry_points import main_test as main

if __name__ == '__main__':
    main(sys.argv[1:])
