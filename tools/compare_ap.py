"""Did GC help? Compare GC runs' COCO APs with their baseline twins' over seeds.

Usage::

    python tools/compare_ap.py --gc RUN [RUN ...] --base RUN [RUN ...]
        [--out-dir DIR] [--gc-config CFG] [--base-config CFG]
        [--metafile configs/metafile.yml] [--model NAME] [--ignore-keys KEY ...]
    python tools/compare_ap.py GC BASE [options]      # one run per side

A RUN is a work dir (holding tools/test.py's test_metrics.json, or a
training run's validation logs) or a test_metrics.json file. Prints (in
Markdown) one table per task (bbox, segm): each side's mean and spread, the
mean paired delta with its 95% interval, each seed's delta, the paper's delta
and a verdict; writes ap_comparison.md, ap_comparison.csv, ap_seeds.csv and
ap_deltas.png to --out-dir. A user's error (a missing run, runs that cannot
be paired, configs that differ in more than they may: within a side the seed,
across also the optimizer) ends in one line and exit status 2, and nothing
is written. The same as the console script ``mmgc-compare-ap`` of an
installed mmgc: both call :func:`mmgc.runtime.entry_points.main_compare_ap`.
See docs/tools.md; the logic lives in ``mmgc.runtime.compare``.
"""

import sys

from mmgc.runtime.entry_points import main_compare_ap as main
from mmgc.runtime.entry_points import parse_compare_ap_args as parse_args

__all__ = ['main', 'parse_args']

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
