"""Train a detector, segmentor or classifier: MMDetection's ``tools/train.py`` with
mmgc loaded, for a config of MMDetection, MMSegmentation or MMPretrain (its
``default_scope``; docs/codebases.md).

Usage::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--auto-scale-lr] [--gc-diagnostics INTERVAL] [--cfg-options KEY=VALUE ...]
        [--launcher {none,pytorch,slurm,mpi}] [--dist-timeout SECONDS]

The same as the console script ``mmgc-train`` of an installed mmgc: both call
:func:`mmgc.runtime.entry_points.main_train`. See docs/tools.md; the logic
lives in ``mmgc.runtime.cli``.
"""

import sys

from mmgc.runtime.entry_points import main_train as main

if __name__ == '__main__':
    main(sys.argv[1:])
