"""Train Mask R-CNN with GC and with its baseline on synthetic data; report.

Usage (from the repository root; ``bash tools/run_demo.sh`` also installs the
environment first)::

    python tools/run_demo.py                      # the full demo (~12 min, 2 cores)
    python tools/run_demo.py --seeds 0 1 2        # three pairs (~37 min)
    python tools/run_demo.py --iters 20 --num-train 16 --num-val 8   # a quick look

It makes the synthetic shapes dataset (``data/shapes``, reused when present),
then for each training seed trains ``configs/demo/baselines/mask_rcnn_r18_fpn_shapes.py``
and ``configs/demo/mask_rcnn_r18_fpn_shapes_gc.py`` side by side (pair after
pair), evaluates each on the val split with the COCO metric, compares them
(mean ± spread over seeds, paired deltas with 95% intervals, verdicts) and
writes ``reports/demo/``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GC_CONFIG = ROOT / 'configs/demo/mask_rcnn_r18_fpn_shapes_gc.py'
BASELINE_CONFIG = ROOT / 'configs/demo/baselines/mask_rcnn_r18_fpn_shapes.py'


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be an int >= 1; got {value}')
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be an int >= 0; got {value}')
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Mask R-CNN with Gradient Centralization vs its SGD baseline '
        'on a synthetic COCO-format dataset, with a report.'
    )
    parser.add_argument(
        '--work-dir',
        default='work_dirs/demo',
        help="parent of the runs' work dirs, seed<S>/{baseline,gc} (default: work_dirs/demo)",
    )
    parser.add_argument(
        '--report-dir',
        default='reports/demo',
        help='where the report is written (default: reports/demo)',
    )
    parser.add_argument(
        '--data-root',
        default='data/shapes',
        help='where the dataset is written or reused (default: data/shapes)',
    )
    parser.add_argument(
        '--iters',
        type=_positive,
        default=None,
        help='training iterations of each run (default: max_iters of the demo configs)',
    )
    parser.add_argument(
        '--seeds',
        '--seed',
        dest='seeds',
        nargs='+',
        type=_non_negative,
        default=[0],
        metavar='S',
        help='training seeds, one GC/baseline pair each (default: 0)',
    )
    parser.add_argument(
        '--data-seed',
        type=_non_negative,
        default=0,
        help='seed of the generated dataset (default: 0)',
    )
    parser.add_argument(
        '--num-train',
        type=_positive,
        default=800,
        help='training images to generate (default: 800)',
    )
    parser.add_argument(
        '--num-val', type=_positive, default=50, help='val images to generate (default: 50)'
    )
    parser.add_argument(
        '--sequential',
        action='store_true',
        help="train a pair's two runs one after the other (default: side by side, "
        'each with half the CPU threads)',
    )
    parser.add_argument(
        '--threads', type=_positive, default=None, help='torch threads per run (side by side)'
    )
    parser.add_argument('--gc-config', default=str(GC_CONFIG), help=argparse.SUPPRESS)
    parser.add_argument('--baseline-config', default=str(BASELINE_CONFIG), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds must differ; got {" ".join(map(str, args.seeds))}')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(ROOT) not in sys.path:  # run from a checkout without installing mmgc
        sys.path.append(str(ROOT))
    import mmgc  # noqa: F401  (registers SGDGC and its constructor)
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
    )
    print(f'\nDemo report: {result["report"]}')
    print(f'(plots, CSV and summary.json beside it in {result["report_dir"]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
