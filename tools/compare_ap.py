"""Compare a GC run's COCO APs with its baseline twin's.

Usage::

    python tools/compare_ap.py GC BASE [--out-dir DIR] [--gc-config CFG]
        [--base-config CFG] [--metafile configs/metafile.yml] [--model NAME]
        [--ignore-keys KEY ...]

GC and BASE are work dirs (holding tools/test.py's test_metrics.json, or a
training run's validation logs) or test_metrics.json files. Prints one table
per task (bbox, segm) and writes ap_comparison.md, ap_comparison.csv and
ap_deltas.png to --out-dir. Exits with status 2, naming the keys, when the
two configs differ in more than the optimizer (1 when a run cannot be
read). See docs/tools.md; the logic lives in ``mmgc.runtime.compare``.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

from mmgc.runtime.compare import compare

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_METAFILE = osp.join(ROOT, 'configs', 'metafile.yml')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Compare GC and baseline COCO APs')
    parser.add_argument('gc', help='GC run: work dir or test_metrics.json')
    parser.add_argument('base', help='baseline run: work dir or test_metrics.json')
    parser.add_argument(
        '--out-dir', default='work_dirs/compare_ap', help='where to write the report'
    )
    parser.add_argument('--gc-config', help="GC config (default: the run's own)")
    parser.add_argument('--base-config', help="baseline config (default: the run's)")
    parser.add_argument(
        '--metafile', default=DEFAULT_METAFILE, help="metafile with the paper's APs"
    )
    parser.add_argument('--model', help="metafile entry (default: the GC run's config name)")
    parser.add_argument(
        '--ignore-keys',
        nargs='+',
        default=[],
        help='more config keys (dotted) allowed to differ between the runs',
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        gc = compare.load_run(args.gc, args.gc_config)
        base = compare.load_run(args.base, args.base_config)
        rows = compare.compare_runs(
            gc, base, metafile=args.metafile, model=args.model, ignore=args.ignore_keys
        )
    except compare.ConfigMismatchError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(compare.rows_to_text(rows))
    paths = compare.write_report(rows, args.out_dir, gc, base)
    print()
    for kind, path in paths.items():
        print(f'{kind}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
