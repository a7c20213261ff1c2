"""The demo: Mask R-CNN trained with GC and with its baseline on synthetic data,
through ``tools/train.py``'s code path, compared by :mod:`mmgc.runtime.compare` and
reported by :mod:`mmgc.runtime.demo_report` (see :func:`run_demo`)."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Union

import numpy as np
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MessageHub, print_log
from mmengine.registry import HOOKS

from . import compare
from .demo_report import DemoRun, write_report
from .shapes import make_shapes_dataset

__all__ = ['DemoJob', 'DemoRecorderHook', 'demo_options', 'run_demo', 'train_in_parallel']

PathLike = Union[str, os.PathLike]
RUN_FILE = 'demo_run.json'  # a finished run's DemoRun fields and its DemoJob, in its work dir
_LR_STEPS = (8 / 12, 11 / 12)  # the 1x schedule's lr steps, as fractions of the run
_ITERS_KEYS = ('train_cfg.max_iters', 'train_cfg.val_interval', 'default_hooks.checkpoint.interval')
_SPLITS = ('train', 'val', 'test')
_RECORD = 'demo_record'  # the message hub's runtime info that DemoRecorderHook fills
_ITER_LINE = re.compile(r'Iter\(train\) \[\s*(\d+)/(\d+)\].*?eta: ([0-9:]+)')


def _clock() -> np.ndarray:
    return np.array([time.perf_counter(), time.process_time()])


@HOOKS.register_module()
class DemoRecorderHook(Hook):
    """Puts in the message hub's info ``'demo_record'`` what MMEngine logged (each
    iteration's loss, the val metrics, the logs, the checkpoint) and the wall and CPU
    seconds of training (evaluation excluded) and of evaluation."""

    priority = 'VERY_LOW'

    def before_train(self, runner) -> None:
        self.start, self.eval = _clock(), np.zeros(2)

    def before_val(self, runner) -> None:
        self.val_start = _clock()

    def after_val(self, runner) -> None:
        self.eval += _clock() - self.val_start

    def after_train(self, runner) -> None:
        hub, train = runner.message_hub, _clock() - self.start - self.eval
        log, checkpoint = Path(runner.log_dir).resolve(), hub.get_info('last_ckpt')
        losses, scalars = hub.get_scalar('train/loss').data[0], hub.log_scalars
        record = dict(
            work_dir=runner.work_dir,
            iters=runner.iter,
            metrics={k[4:]: float(v.current()) for k, v in scalars.items() if 'val/coco/' in k},
            losses=[(i, float(v)) for i, v in enumerate(losses, start=1)],
            train_s=float(train[0]),
            train_cpu_s=float(train[1]),
            eval_s=float(self.eval[0]),
            log_file=str(log / f'{runner.timestamp}.log'),
            json_log=str(log / 'vis_data' / f'{runner.timestamp}.json'),
            checkpoint=str(Path(checkpoint).resolve()) if checkpoint else '',
        )
        hub.update_info(_RECORD, record)


def demo_options(
    config: PathLike, *, data_root: PathLike, iters: int | None = None, seed: int | None = None
) -> dict[str, Any]:
    """The ``--cfg-options`` that make a demo config one run of the demo.

    Args:
        config (str | os.PathLike): A demo config.
        data_root (str | os.PathLike): A folder made by ``make_shapes_dataset``.
        iters (int, optional): Training iterations; the warm-up, the lr steps, the
            evaluation and the checkpoint follow. Defaults to the config's.
        seed (int, optional): Training seed. Defaults to the config's.

    Returns:
        dict: Dotted keys and values, for ``Config.merge_from_dict``.

    Raises:
        ValueError: If ``iters`` is not a positive int or ``seed`` is negative.
    """
    if iters is not None and (isinstance(iters, bool) or not isinstance(iters, int) or iters < 1):
        raise ValueError(f'iters must be an int >= 1; got {iters!r}')
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f'seed must be an int >= 0; got {seed!r}')
    cfg = Config.fromfile(str(config))
    root = str(data_root).rstrip('/\\') + '/'
    ann = root + cfg.val_dataloader.dataset.ann_file
    imports = dict(cfg.get('custom_imports') or dict(imports=[], allow_failed_imports=False))
    imports['imports'] = [*imports.get('imports', []), __name__]  # registers the hook
    hooks = [*cfg.get('custom_hooks', []), dict(type='DemoRecorderHook')]
    options: dict[str, Any] = dict(custom_imports=imports, custom_hooks=hooks)
    options.update({f'{split}_dataloader.dataset.data_root': root for split in _SPLITS})
    options.update({f'{split}_evaluator.ann_file': ann for split in _SPLITS[1:]})
    if iters is not None:
        warmup, steps = (dict(s) for s in cfg.param_scheduler)
        warmup['end'] = min(int(cfg.warmup_iters), iters)
        steps.update(end=iters, milestones=[max(1, math.floor(iters * f)) for f in _LR_STEPS])
        options.update(dict.fromkeys(_ITERS_KEYS, iters), param_scheduler=[warmup, steps])
    if seed is not None:
        options['randomness.seed'] = seed
    return options


@dataclass(frozen=True)
class DemoJob:
    """One training run: config, seed, work dir, data, iterations (None: the
    config's) and torch threads (None: a share of the CPU)."""

    name: str
    config: str
    seed: int
    work_dir: str
    data_root: str
    iters: int | None = None
    threads: int | None = None

    @property
    def label(self) -> str:
        return f'{self.name} seed {self.seed}'

    @property
    def console_log(self) -> Path:
        return Path(self.work_dir, 'console.log')


def _child(job: DemoJob) -> None:
    """A run's process: ``tools/train.py``'s steps, then its :data:`RUN_FILE`."""
    fd = os.open(job.console_log, os.O_WRONLY | os.O_APPEND)
    for stream in (1, 2):  # all its output, C++ included
        os.dup2(fd, stream)
    import torch
    from mmdet.utils import register_all_modules, setup_cache_size_limit_of_dynamo

    from .cli import parse_args, run_train, train_parser

    torch.set_num_threads(job.threads)
    start = time.perf_counter()
    args = parse_args(train_parser(), [job.config, '--work-dir', job.work_dir])
    args.cfg_options = demo_options(
        job.config, data_root=job.data_root, iters=job.iters, seed=job.seed
    )
    setup_cache_size_limit_of_dynamo()
    register_all_modules(init_default_scope=False)
    run_train(args)
    record = {**asdict(job), **MessageHub.get_current_instance().get_info(_RECORD)}
    record.update(total_s=time.perf_counter() - start, job=asdict(job))
    Path(job.work_dir, RUN_FILE).write_text(json.dumps(record), encoding='utf-8')


def _read_run(job: DemoJob) -> DemoRun | None:
    """The run that ``job``'s work dir holds, if it was trained for ``job``."""
    try:
        record = json.loads(Path(job.work_dir, RUN_FILE).read_text(encoding='utf-8'))
        record['losses'] = [tuple(item) for item in record['losses']]
        run = DemoRun(**{f.name: record[f.name] for f in fields(DemoRun)})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return run if record.get('job') == asdict(job) else None


def train_in_parallel(jobs: Sequence[DemoJob], *, poll_s: float = 20.0) -> list[DemoRun]:
    """Train runs side by side, each in a fresh process (MMEngine's visualizer is
    process-wide) writing to ``<work_dir>/console.log``, with a progress line every
    ``poll_s`` seconds.

    Args:
        jobs (Sequence[DemoJob]): The runs; those without ``threads`` share the CPU.
        poll_s (float): Seconds between progress lines. Defaults to 20.

    Returns:
        list[DemoRun]: In the order of ``jobs``.

    Raises:
        RuntimeError: Once all have ended, if a run failed, with the end of its log.
    """
    share = max(1, (os.cpu_count() or 1) // len(jobs))
    jobs = [replace(job, threads=job.threads or share) for job in jobs]
    processes = [mp.get_context('spawn').Process(target=_child, args=(job,)) for job in jobs]
    for job, process in zip(jobs, processes):
        Path(job.work_dir).mkdir(parents=True, exist_ok=True)
        Path(job.work_dir, RUN_FILE).unlink(missing_ok=True)
        job.console_log.write_text('')
        process.start()
        log = f'{job.threads} thread(s), console log {job.console_log}'
        print_log(f'[demo] {job.label}: {log}', logger='current')
    while any(p.is_alive() for p in processes):
        if not wait([p.sentinel for p in processes if p.is_alive()], timeout=poll_s):
            where = ', '.join(f'{job.label} {_progress(job.console_log)}' for job in jobs)
            print_log(f'[demo] progress: {where}', logger='current')
    runs = [_read_run(job) if p.exitcode == 0 else None for job, p in zip(jobs, processes)]
    errors = [
        f'demo run {job.label} ({job.config}) failed: exit code {p.exitcode}; the end of its '
        f'console log ({job.console_log}):\n{job.console_log.read_text(errors="replace")[-3000:]}'
        for job, p, run in zip(jobs, processes, runs)
        if run is None
    ]
    if errors:
        raise RuntimeError('\n\n'.join(errors))
    return runs


def _progress(log_file: Path) -> str:
    """``'120/750 (eta 0:08:01)'`` from a run's console log."""
    tail = log_file.read_bytes()[-8192:].decode(errors='replace')
    lines = _ITER_LINE.findall(tail)
    if lines:
        return '{}/{} (eta {})'.format(*lines[-1])
    return 'evaluating' if 'Evaluating' in tail else 'starting'


def run_demo(
    gc_config: PathLike,
    baseline_config: PathLike,
    *,
    seeds: Sequence[int] = (0,),
    data_root: PathLike = 'data/shapes',
    work_dir: PathLike = 'work_dirs/demo',
    report_dir: PathLike = 'reports/demo',
    iters: int | None = None,
    data_seed: int = 0,
    num_train: int = 800,
    num_val: int = 50,
    command: str | None = None,
    parallel: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Make the data, train GC and baseline for each seed, compare, report.

    A run whose work dir holds its :data:`RUN_FILE` for the same job, on data
    that was not regenerated, is not trained again.

    Args:
        gc_config, baseline_config (str | os.PathLike): The GC config and its twin.
        seeds (Sequence[int]): Training seeds, one pair each. Defaults to ``(0,)``.
        data_root (str | os.PathLike): The dataset's folder (written or reused).
        work_dir (str | os.PathLike): Parent of the runs' ``seed<S>/{baseline,gc}``.
        report_dir (str | os.PathLike): Where the report is written.
        iters (int, optional): Iterations of each run. Defaults to the configs'.
        data_seed, num_train, num_val (int): The dataset's seed and image counts.
        command (str, optional): The command line, quoted in the report.
        parallel (bool): Train a pair's runs side by side, else one after the other.
        threads (int, optional): Torch threads per run. Defaults to the CPU count,
            halved when ``parallel``.

    Returns:
        dict: ``write_report``'s, ``runs`` (baseline, GC; by seed), ``comparison``.

    Raises:
        ValueError: If ``seeds`` is empty, repeats a seed or holds one < 0.
        RuntimeError: If a run fails.
        ConfigMismatchError: If the runs differ in more than the optimizer and seed.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError('seeds must name at least one training seed; got none')
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f'seeds must be ints >= 0; got {seed!r}')
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f'seeds must differ; {repeated} given more than once')
    wall_start = time.perf_counter()
    print_log('[demo] 1/3 dataset', logger='current')
    data = make_shapes_dataset(data_root, num_train=num_train, num_val=num_val, seed=data_seed)
    max_iters = iters or Config.fromfile(str(baseline_config)).train_cfg.max_iters
    threads = threads or max(1, (os.cpu_count() or 1) // (2 if parallel else 1))
    twins = (('baseline', str(baseline_config)), ('gc', str(gc_config)))
    runs: list[DemoRun] = []
    for number, seed in enumerate(seeds, start=1):
        pair = f'[demo] 2/3 pair {number}/{len(seeds)} (seed {seed}, {max_iters} iterations)'
        folder, root = Path(work_dir).resolve() / f'seed{seed}', data['data_root']
        jobs = [DemoJob(n, c, seed, str(folder / n), root, iters, threads) for n, c in twins]
        done = {job: None if data['generated'] else _read_run(job) for job in jobs}
        todo = [job for job in jobs if done[job] is None or done[job].iters != max_iters]
        for job in (job for job in jobs if job not in todo):
            print_log(f'{pair}: {job.name} finished earlier, not trained again', logger='current')
        for group in [todo] if parallel and len(todo) == 2 else [[job] for job in todo]:
            names = ' and '.join(job.name for job in group) + ' side by side' * (len(group) > 1)
            print_log(f'{pair}: training {names}', logger='current')
            done.update(zip(group, train_in_parallel(group)))
        runs += done.values()
    print_log('[demo] 3/3 comparison and report', logger='current')
    comparison = compare.compare_runs(
        [compare.load_run(run.work_dir) for run in runs if run.name == 'gc'],
        [compare.load_run(run.work_dir) for run in runs if run.name == 'baseline'],
    )
    wall_s = time.perf_counter() - wall_start
    report = write_report(
        runs, comparison, report_dir, data=data, data_seed=data_seed, wall_s=wall_s, command=command
    )
    print_log(f'[demo] report written to {report["report"]}', logger='current')
    return {**report, 'runs': runs, 'comparison': comparison}
