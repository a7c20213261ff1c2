"""Train Mask R-CNN with GC and with its baseline on synthetic data; report.

Usage (from the repository root; ``bash tools/run_demo.sh`` also installs the
environment first)::

    python tools/run_demo.py                      # one pair, 750 iterations each
    python tools/run_demo.py --seeds 0 1 2        # three pairs, one after another
    python tools/run_demo.py --iters 20 --num-train 16 --num-val 8   # a quick look

It makes the shapes dataset (``data/shapes``, reused when present), then runs
``tools/train_pair.sh`` on ``configs/demo/mask_rcnn_r18_fpn_shapes_gc.py`` and
its twin ``configs/demo/baselines/mask_rcnn_r18_fpn_shapes.py``: side by side
for each seed (a run finished earlier with the same arguments is reused, a
killed one resumed), each run tested, the pairs compared; and writes the report
into ``reports/demo/``. See docs/demo.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GC_CONFIG = ROOT / 'configs/demo/mask_rcnn_r18_fpn_shapes_gc.py'
BASELINE_CONFIG = ROOT / 'configs/demo/baselines/mask_rcnn_r18_fpn_shapes.py'


def _int_from(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f'must be an int >= {low}; got {value}')
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Mask R-CNN with Gradient Centralization vs its SGD baseline '
        'on a synthetic COCO-format dataset, with a report.'
    )
    add = parser.add_argument
    add('--work-dir', default='work_dirs/demo', help="parent of the runs' seed<S>/{baseline,gc}")
    add('--report-dir', default='reports/demo', help='where the report is written')
    add('--data-root', default='data/shapes', help='where the dataset is written or reused')
    add('--iters', type=_int_from(1), help="iterations of each run (default: the configs')")
    seeds = 'training seeds, one GC/baseline pair each (default: 0)'
    kinds = dict(nargs='+', type=_int_from(0), default=[0], metavar='S', help=seeds)
    add('--seeds', '--seed', dest='seeds', **kinds)
    add('--data-seed', type=_int_from(0), default=0, help='seed of the dataset (default: 0)')
    add('--num-train', type=_int_from(1), default=800, help='training images (default: 800)')
    add('--num-val', type=_int_from(1), default=50, help='val images (default: 50)')
    sequential = "train a pair's runs one after the other (default: side by side)"
    add('--sequential', action='store_true', help=sequential)
    add('--threads', type=_int_from(1), help='torch threads per run (default: a share of the CPU)')
    add('--gc-config', default=str(GC_CONFIG), help=argparse.SUPPRESS)
    add('--baseline-config', default=str(BASELINE_CONFIG), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds must differ; got {" ".join(map(str, args.seeds))}')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(ROOT) not in sys.path:  # run from a checkout without installing mmgc
        sys.path.append(str(ROOT))
    from mmgc.runtime.demo import run_demo

    result = run_demo(
        args.gc_config,
        args.baseline_config,
        data_root=args.data_root,
        work_dir=args.work_dir,
        report_dir=args.report_dir,
        iters=args.iters,
        seeds=args.seeds,
        data_seed=args.data_seed,
        num_train=args.num_train,
        num_val=args.num_val,
        parallel=not args.sequential,
        threads=args.threads,
        command=shlex.join(['python', 'tools/run_demo.py', *(argv or sys.argv[1:])]),
        runner=ROOT / 'tools' / 'train_pair.sh',
    )
    print(f'\nDemo report: {result["report"]}')
    print(f'(plots, CSV and summary.json beside it in {result["report_dir"]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
