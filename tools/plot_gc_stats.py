"""Plot gradient statistics of a GC run against its baseline (paper, Fig. 4).

Both runs need ``GCDiagnosticsHook``: train them with ``--gc-diagnostics N``,
or put ``custom_hooks = [dict(type='GCDiagnosticsHook', interval=N)]`` in their
configs.

Example:
    python tools/plot_gc_stats.py work_dirs/mask_rcnn_r50_fpn_gc \\
        work_dirs/mask_rcnn_r50_fpn --out gc_grad_stats.png

The same as the console script ``mmgc-plot-gc-stats`` of an installed mmgc:
both call :func:`mmgc.runtime.entry_points.main_plot_gc_stats`.
"""

import sys

from mmgc.runtime.entry_points import main_plot_gc_stats as main

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
