"""Plot gradient statistics of a GC run against its baseline (paper, Fig. 4).

Both runs need ``GCDiagnosticsHook``: train them with ``--gc-diagnostics N``,
or put ``custom_hooks = [dict(type='GCDiagnosticsHook', interval=N)]`` in their
configs.

Example:
    python tools/plot_gc_stats.py work_dirs/mask_rcnn_r50_fpn_gc \\
        work_dirs/mask_rcnn_r50_fpn --out gc_grad_stats.png
"""

from __future__ import annotations

import argparse
import sys

from mmgc.runtime.gc_stats import load_gc_stats, plot_gc_stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('gc_run', help='work dir (or scalars.json) of the GC run')
    parser.add_argument('baseline_run', help='work dir (or scalars.json) of the baseline run')
    parser.add_argument('--out', default='gc_grad_stats.png', help='PNG to write')
    args = parser.parse_args(argv)
    try:
        runs = {
            'with GC': load_gc_stats(args.gc_run),
            'without GC': load_gc_stats(args.baseline_run),
        }
    except FileNotFoundError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    out = plot_gc_stats(runs, args.out, gc_runs=('with GC',))
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
