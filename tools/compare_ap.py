"""Did GC help? Compare GC runs' COCO APs with their baseline twins' over seeds.

Usage::

    python tools/compare_ap.py --gc RUN [RUN ...] --base RUN [RUN ...]
        [--out-dir DIR] [--gc-config CFG] [--base-config CFG]
        [--metafile configs/metafile.yml] [--model NAME] [--ignore-keys KEY ...]
    python tools/compare_ap.py GC BASE [options]      # one run per side

A RUN is a work dir (holding tools/test.py's test_metrics.json, or a
training run's validation logs) or a test_metrics.json file. Runs with the
same seed are paired. Prints (in Markdown) one table per task (bbox, segm): each side's
mean and spread, the mean paired delta with its 95% interval, each seed's
delta, the paper's delta and a verdict; writes ap_comparison.md,
ap_comparison.csv, ap_seeds.csv and ap_deltas.png to --out-dir. Exits with
status 2, naming the keys, when the runs' training configs differ in more
than they may (within a side: the seed; across: also the optimizer), and
with 1 when the runs cannot be compared; nothing is written then. See
docs/tools.md; the logic lives in ``mmgc.runtime.compare``.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

from mmgc.runtime import compare

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_METAFILE = osp.join(ROOT, 'configs', 'metafile.yml')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Compare GC and baseline COCO APs over seeds (mean, spread, paired delta)'
    )
    parser.add_argument(
        'runs',
        nargs='*',
        metavar='GC BASE',
        help='one GC run and one baseline run (work dir or test_metrics.json); or use --gc/--base',
    )
    parser.add_argument('--gc', nargs='+', metavar='RUN', help='the GC runs')
    parser.add_argument('--base', nargs='+', metavar='RUN', help='the baseline runs')
    parser.add_argument(
        '--out-dir', default='work_dirs/compare_ap', help='where to write the report'
    )
    parser.add_argument('--gc-config', help="config of every GC run (default: each run's own)")
    parser.add_argument(
        '--base-config', help="config of every baseline run (default: each run's own)"
    )
    parser.add_argument(
        '--metafile', default=DEFAULT_METAFILE, help="metafile with the paper's APs"
    )
    parser.add_argument(
        '--model', help="metafile entry (default: the GC runs' config name, if listed)"
    )
    parser.add_argument(
        '--ignore-keys',
        nargs='+',
        default=[],
        help='more config keys (dotted) allowed to differ between the runs',
    )
    args = parser.parse_args(argv)
    if args.runs:
        if args.gc or args.base:
            parser.error('give the runs either as GC BASE or with --gc/--base, not both')
        if len(args.runs) != 2:
            parser.error(f'expected two runs, GC and BASE; got {len(args.runs)}: {args.runs}')
        args.gc, args.base = [args.runs[0]], [args.runs[1]]
    elif not (args.gc and args.base):
        parser.error('give the runs: --gc RUN [RUN ...] --base RUN [RUN ...] (or GC BASE)')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        gc_runs, gc_skipped = compare.load_runs(args.gc, args.gc_config)
        base_runs, base_skipped = compare.load_runs(args.base, args.base_config)
        comparison = compare.compare_runs(
            gc_runs,
            base_runs,
            metafile=args.metafile,
            model=args.model,
            ignore=args.ignore_keys,
            skipped=gc_skipped + base_skipped,
        )
    except compare.ConfigMismatchError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(compare.comparison_to_markdown(comparison))
    paths = compare.write_report(comparison, args.out_dir)
    for kind, path in paths.items():
        print(f'{kind}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
