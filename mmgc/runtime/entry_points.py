"""The ``main`` of each tool (``mmgc-train``, ``mmgc-test``, ``mmgc-compare-ap``,
``mmgc-plot-gc-stats``); the console scripts and the ``tools/*.py`` shims call them
(docs/tools.md). Training and testing import the codebase of the config's
``default_scope`` only (MMDetection, MMSegmentation or MMPretrain: :mod:`.codebases`).
Each takes ``argv`` (default: ``sys.argv[1:]``); a user's error ends
in one line on stderr and exit status 2 (:func:`mmgc.runtime.cli.exit_on_user_error`).
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import signal
import sys
import warnings
from collections.abc import Sequence

from torch.distributed.elastic.multiprocessing.errors import record

import mmgc  # noqa: F401  (the GC core: SGDGC, its constructor, GCDiagnosticsHook, mmgc::)

from ..mim import configs_root
from .cli import exit_on_user_error, parse_args, run_test, run_train, test_parser, train_parser
from .distributed import ends_process_group

__all__ = [
    'compare_ap_parser',
    'dump_stacks_on_sigusr1',
    'main_compare_ap',
    'main_plot_gc_stats',
    'main_test',
    'main_train',
    'parse_compare_ap_args',
    'quiet_known_upstream_warnings',
]

#: Upstream warnings that a tool's output must not start with, each by its exact
#: message (matched from its start) and category; no other warning is hidden.
#: MMEngine 0.10.7's ``is_installed`` (run as a config's ``mmdet::`` bases load)
#: imports and reloads ``pkg_resources``, and setuptools < 81 warns at each.
KNOWN_UPSTREAM_WARNINGS = ((r'pkg_resources is deprecated as an API\. ', UserWarning),)


def quiet_known_upstream_warnings() -> None:
    """Ignore :data:`KNOWN_UPSTREAM_WARNINGS`, for the rest of this process
    (each tool's ``main`` calls it first)."""
    for message, category in KNOWN_UPSTREAM_WARNINGS:
        warnings.filterwarnings('ignore', message=message, category=category)


def dump_stacks_on_sigusr1() -> None:
    """Have SIGUSR1 print every Python thread's stack to stderr and go on
    (``faulthandler.register``), so that a run that seems stuck can be asked where
    it is (``kill -USR1 PID``; the tests' harness does it before killing a run that
    ran out of time). Not on Windows, which has no SIGUSR1, nor where stderr is no
    file (a caller that captures it in memory, as pytest does)."""
    if not hasattr(signal, 'SIGUSR1'):
        return
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)
    except (AttributeError, ValueError, io.UnsupportedOperation):  # no file descriptor
        pass


def _run_tool(parser: argparse.ArgumentParser, run, argv: Sequence[str] | None) -> None:
    dump_stacks_on_sigusr1()
    quiet_known_upstream_warnings()
    # the config's codebase is imported and registered when the config is read
    # (mmgc.runtime.cli._load)
    run(parse_args(parser, argv))


# @record: under torchrun, the error that ends a rank is shown in torchrun's
# summary ("Root Cause"); without torchrun it only re-raises. A user's error then
# becomes one line (status 2). Last, the process group, if the run started one, is
# ended and the process leaves without finalizing (ends_process_group), with the
# status it would have had.
@ends_process_group
@exit_on_user_error
@record
def main_train(argv: Sequence[str] | None = None) -> None:
    """``tools/train.py``: MMDetection's (or the config's codebase's) with mmgc loaded
    (:func:`~.cli.run_train`)."""
    _run_tool(train_parser(), run_train, argv)


@ends_process_group
@exit_on_user_error
@record
def main_test(argv: Sequence[str] | None = None) -> None:
    """``tools/test.py``: MMDetection's (or the config's codebase's) with mmgc loaded;
    writes ``<work_dir>/test_metrics.json`` (:func:`~.cli.run_test`)."""
    _run_tool(test_parser(), run_test, argv)


def compare_ap_parser() -> argparse.ArgumentParser:
    """The command line of ``mmgc-compare-ap`` / ``tools/compare_ap.py``."""
    parser = argparse.ArgumentParser(
        description='Compare GC and baseline COCO APs over seeds (mean, spread, paired delta)'
    )
    add = parser.add_argument
    help_runs = 'a GC run and a baseline run (work dir or test_metrics.json), or --gc/--base'
    add('runs', nargs='*', metavar='GC BASE', help=help_runs)
    add('--gc', nargs='+', metavar='RUN', help='the GC runs')
    add('--base', nargs='+', metavar='RUN', help='the baseline runs')
    add('--out-dir', default='work_dirs/compare_ap', help='where to write the report')
    add('--gc-config', help="config of every GC run (default: each run's own)")
    add('--base-config', help="config of every baseline run (default: each run's own)")
    add('--metafile', help="metafile with the paper's APs (default: mmgc's configs/metafile.yml)")
    add('--model', help="metafile entry (default: the GC runs' config name, if listed)")
    help_ignore = 'more config keys (dotted) allowed to differ between the runs'
    add('--ignore-keys', nargs='+', default=[], help=help_ignore)
    return parser


def parse_compare_ap_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``: the runs as ``GC BASE`` or ``--gc RUN... --base RUN...``;
    ``--metafile`` defaults to mmgc's (:func:`mmgc.mim.configs_root`). A bad
    command line exits with status 2, as argparse does."""
    parser = compare_ap_parser()
    args = parser.parse_args(argv)
    if args.runs:
        if args.gc or args.base:
            parser.error('give the runs either as GC BASE or with --gc/--base, not both')
        if len(args.runs) != 2:
            parser.error(f'expected two runs, GC and BASE; got {len(args.runs)}: {args.runs}')
        args.gc, args.base = [args.runs[0]], [args.runs[1]]
    elif not (args.gc and args.base):
        parser.error('give the runs: --gc RUN [RUN ...] --base RUN [RUN ...] (or GC BASE)')
    if args.metafile is None:
        try:
            args.metafile = str(configs_root() / 'metafile.yml')
        except FileNotFoundError as err:
            parser.error(f'{err} Or give --metafile.')
    return args


def main_compare_ap(argv: Sequence[str] | None = None) -> int:
    """``tools/compare_ap.py``: compare GC runs' COCO APs with their baselines'
    (:mod:`mmgc.runtime.compare`), print the Markdown and write the report.

    Returns:
        int: 0 when the report is written; 2 (one line on stderr, nothing
        written) for a run that does not exist or holds no metrics, runs that
        cannot be paired, a ``--model`` not in the metafile, or configs that
        differ in more than the optimizer (within a side: the seed).
    """
    from . import compare  # here: training and testing load no comparison code

    quiet_known_upstream_warnings()
    args = parse_compare_ap_args(argv)
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
    except (FileNotFoundError, ValueError) as err:  # ConfigMismatchError is a ValueError
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr)
        return 2
    print(compare.comparison_to_markdown(comparison))
    for kind, path in compare.write_report(comparison, args.out_dir).items():
        print(f'{kind}: {path}')
    return 0


def main_plot_gc_stats(argv: Sequence[str] | None = None) -> int:
    """``tools/plot_gc_stats.py``: plot a GC run's gradient statistics against its
    baseline's (the paper's Fig. 4); both need ``GCDiagnosticsHook``.

    Returns:
        int: 0 when the PNG is written; 1 (one line on stderr) when a run
        has no statistics.
    """
    from .gc_stats import load_gc_stats, plot_gc_stats  # here: no plotting code in training

    quiet_known_upstream_warnings()
    parser = argparse.ArgumentParser(
        description='Plot gradient statistics of a GC run against its baseline (paper, Fig. 4)'
    )
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
    print(f'wrote {plot_gc_stats(runs, args.out, gc_runs=("with GC",))}')
    return 0
