"""How often a finished distributed CPU run aborts at exit (outside CI; issue 27).

A process that returns with a gloo process group alive can abort while the
interpreter finalizes (SIGABRT, exit status -6), after its work is done, and
torchrun then reports the whole run as failed. This script counts it, on the
torch of the interpreter that runs it:

1. ``repro``: a minimal rank under ``torchrun --standalone --nproc_per_node 2``
   (``--repro-nproc``)
   (``init_process_group('gloo')``, 20 ``all_reduce``, one async ``all_reduce``
   waited on, a ``barrier``, return), ``--repro-runs`` times for each way of
   ending (``--repro-ends``): without ``destroy_process_group()``, with it, and
   with mmgc's ``ends_process_group`` (the group destroyed and held, then
   ``os._exit`` after the ``atexit`` handlers);
2. ``tools``: ``tools/dist_train.sh`` (2 gloo processes, the tiny Mask R-CNN on
   the GC row config, 1 epoch) and ``tools/dist_test.sh`` on its checkpoint,
   ``--tool-runs`` times each, for this checkout ("after") and, with
   ``--before REV``, for the commit REV checked out in a temporary worktree
   ("before"), both with this interpreter.

``--burners N`` loads the CPUs with N busy processes meanwhile. Each run is
classified from torchrun's exit status and output: ``clean`` (exit 0),
``abort`` (a rank ended by SIGABRT: torchrun's ``exitcode  : -6`` /
``Signal 6``, or a fatal error or ``terminate called`` in the output), ``hang``
(still running after ``REPRO_TIMEOUT_S`` / ``RUN_TIMEOUT_S``: killed, with its
ranks) or ``failed`` (any other failure). The log of each run that is not clean is kept.
Writes ``counts.md`` and ``runs.csv`` to ``--out-dir`` and prints a progress line
per run::

    .venv/bin/python benchmarks/exit_aborts.py --before c5d45d0
    .venv-torch2.1/bin/python benchmarks/exit_aborts.py --tool-runs 0 --repro-ends mmgc
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The GC row config at the tests' tiny sizes (tests/data/configs/readme).
CONFIG = 'tests/data/configs/readme/mask_rcnn_r50_fpn_gc.py'
#: One epoch of 4 iterations, no validation, seed 0.
TRAIN_OPTIONS = ['randomness.seed=0', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=10']
ABORT = re.compile(r'exitcode\s*:\s*-6\b|Signal 6 \(SIGABRT\)|Fatal Python error|terminate called')
RUN_TIMEOUT_S = 600
#: A reproduction run takes a few seconds; one still running after this hangs.
REPRO_TIMEOUT_S = 120


#: How a reproduction rank ends its group: not at all, with torch's call, or with
#: mmgc's (``mmgc.runtime.distributed.ends_process_group``: the group destroyed and
#: held, then ``os._exit`` after the ``atexit`` handlers).
REPRO_ENDS = {
    'none': 'without destroy_process_group()',
    'destroy': 'with destroy_process_group()',
    'mmgc': "with mmgc's ends_process_group",
}


def repro_worker(end: str) -> None:
    """One rank of the minimal reproduction (run by torchrun), ending as ``end``
    (:data:`REPRO_ENDS`)."""
    import torch
    import torch.distributed as dist

    def rank() -> None:
        dist.init_process_group('gloo')
        tensor = torch.ones(1024)
        for _ in range(20):
            dist.all_reduce(tensor)
        dist.all_reduce(tensor, async_op=True).wait()
        dist.barrier()
        if end == 'destroy':
            dist.destroy_process_group()

    if end == 'mmgc':
        from mmgc.runtime.distributed import ends_process_group

        rank = ends_process_group(rank)
    rank()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def classify(code: int | None, output: str) -> str:
    """``clean``, ``abort``, ``hang`` (killed at the timeout: ``code`` None) or
    ``failed`` (module doc)."""
    if code == 0:
        return 'clean'
    if code is None:
        return 'hang'
    return 'abort' if ABORT.search(output) else 'failed'


def _run(
    cmd: list[str], env: dict[str, str], log: Path, timeout: float
) -> tuple[int | None, float]:
    """Run ``cmd`` in its own session; one still running after ``timeout`` seconds
    is killed with every process it started (torchrun's ranks) and its exit
    status is None."""
    start = time.monotonic()
    with log.open('w') as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code, time.monotonic() - start


class Counts:
    """Every run's result, written as it comes (``runs.csv``) and counted."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.logs = out_dir / 'failed_logs'
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []

    def add(self, part: str, variant: str, index: int, code, seconds: float, log: Path):
        result = classify(code, log.read_text(errors='replace'))
        if result != 'clean':
            shutil.copy(log, self.logs / f'{part}-{variant}-{index}.log')
        self.rows.append(
            dict(
                part=part, variant=variant, run=index, exit=code, result=result, s=f'{seconds:.1f}'
            )
        )
        done = Counter(
            r['result'] for r in self.rows if (r['part'], r['variant']) == (part, variant)
        )
        print(
            f'[exit_aborts] {part} {variant} {index}: exit {code} {result} ({seconds:.1f} s); '
            f'so far {dict(done)}',
            flush=True,
        )
        with (self.out_dir / 'runs.csv').open('w', newline='') as file:
            writer = csv.DictWriter(file, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)

    def table(self, header: str) -> str:
        groups: dict[tuple[str, str], Counter] = {}
        for row in self.rows:
            groups.setdefault((row['part'], row['variant']), Counter())[row['result']] += 1
        lines = [
            header,
            '',
            '| part | variant | runs | clean | abort at exit | hang | other failure |',
            '|---|---|---:|---:|---:|---:|---:|',
        ]
        for (part, variant), c in groups.items():
            total = sum(c.values())
            lines.append(
                f'| {part} | {variant} | {total} | {c["clean"]} | {c["abort"]} | {c["hang"]} '
                f'| {c["failed"]} |'
            )
        return '\n'.join(lines) + '\n'


def run_repro(counts: Counts, runs: int, work: Path, ends: list[str], nproc: int) -> None:
    for end in ends:
        for index in range(runs):
            cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone']
            cmd += [f'--nproc_per_node={nproc}', __file__, 'repro-worker', '--end', end]
            env = {**os.environ, 'PYTHONPATH': str(ROOT)}
            code, seconds = _run(cmd, env, work / 'run.log', REPRO_TIMEOUT_S)
            counts.add('repro', REPRO_ENDS[end], index, code, seconds, work / 'run.log')


def _tools_env(checkout: Path, data_root: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith('MMGC_')}
    env.update(PYTHON=sys.executable, MMGC_README_DATA=data_root, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([str(checkout), str(checkout / 'tests' / 'data')])
    return env


def run_tools(counts: Counts, runs: int, checkout: Path, variant: str, data: str, work: Path):
    """``dist_train.sh`` then ``dist_test.sh`` of ``checkout``, ``runs`` times."""
    env = _tools_env(checkout, data)
    log = work / 'run.log'
    for index in range(runs):
        run_dir = work / f'{variant}-{index}'
        train = [
            'bash',
            str(checkout / 'tools/dist_train.sh'),
            str(checkout / CONFIG),
            '2',
            '--work-dir',
            str(run_dir),
            '--cfg-options',
            *TRAIN_OPTIONS,
        ]
        code, seconds = _run(train, {**env, 'PORT': str(_free_port())}, log, RUN_TIMEOUT_S)
        counts.add('dist_train.sh', variant, index, code, seconds, log)
        ckpt = run_dir / 'epoch_1.pth'
        if ckpt.is_file():
            test = [
                'bash',
                str(checkout / 'tools/dist_test.sh'),
                str(checkout / CONFIG),
                str(ckpt),
                '2',
                '--work-dir',
                str(run_dir / 'test'),
            ]
            code, seconds = _run(test, {**env, 'PORT': str(_free_port())}, log, RUN_TIMEOUT_S)
            counts.add('dist_test.sh', variant, index, code, seconds, log)
        shutil.rmtree(run_dir, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command')
    worker = sub.add_parser('repro-worker', help='one rank of the reproduction (torchrun)')
    worker.add_argument('--end', choices=list(REPRO_ENDS), default='none')
    add = parser.add_argument
    add('--repro-runs', type=int, default=200, help='per variant (0: skip)')
    help_ends = 'how the reproduction ends its group, each a variant (default: all)'
    add('--repro-ends', nargs='+', choices=list(REPRO_ENDS), help=help_ends)
    add('--repro-nproc', type=int, default=2, help='ranks of the reproduction')
    add('--tool-runs', type=int, default=25, help='per tool and side (0: skip)')
    help_burn = 'busy processes that load the CPUs while it measures (aborts are rarer idle)'
    add('--burners', type=int, default=0, help=help_burn)
    add('--before', metavar='REV', help='commit to measure the tools "before"')
    add('--no-after', action='store_true', help='skip the tools on this checkout (--before only)')
    add('--out-dir', help='default work_dirs/benchmarks/exit_aborts-torch<version>')
    return parser


def measure_tools(counts: Counts, args: argparse.Namespace, work: Path) -> None:
    """The tools' part: the "before" side in a temporary worktree, then this checkout."""
    from mmgc.runtime.shapes import make_shapes_dataset

    data = make_shapes_dataset(work / 'shapes', num_train=8, num_val=4, image_size=64)
    data_root = data['data_root'] + '/'
    sides = [] if args.no_after else [('after (this checkout)', ROOT)]
    before = work / 'before'
    if args.before:
        subprocess.run(
            ['git', 'worktree', 'add', '--detach', str(before), args.before],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        sides.insert(0, (f'before ({args.before})', before))
    try:
        for variant, checkout in sides:
            run_tools(counts, args.tool_runs, checkout, variant, data_root, work)
    finally:
        if args.before:
            remove = ['git', 'worktree', 'remove', '--force', str(before)]
            subprocess.run(remove, cwd=ROOT, check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == 'repro-worker':
        repro_worker(args.end)
        return 0

    import torch

    # a SIGTERM (pkill, Slurm's scancel) ends the script through SystemExit, so
    # the temporary folder and the "before" worktree are removed as on success
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out_dir = Path(
        args.out_dir or ROOT / f'work_dirs/benchmarks/exit_aborts-torch{torch.__version__}'
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = Counts(out_dir)
    header = (
        f'# Exit aborts, torch {torch.__version__}, {os.cpu_count()} CPUs, '
        f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}'
    )
    header += f', {args.burners} busy processes beside it' if args.burners else ''
    burn = [sys.executable, '-c', 'while True: pass']
    burners = [subprocess.Popen(burn) for _ in range(args.burners)]
    try:
        with tempfile.TemporaryDirectory(prefix='mmgc-exit-aborts-') as tmp:
            if args.repro_runs:
                ends = args.repro_ends or list(REPRO_ENDS)
                run_repro(counts, args.repro_runs, Path(tmp), ends, args.repro_nproc)
            if args.tool_runs:
                measure_tools(counts, args, Path(tmp))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    report = counts.table(header)
    (out_dir / 'counts.md').write_text(report)
    print(report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
