"""The demo: Mask R-CNN trained with GC and with its baseline on synthetic data.

:func:`run_demo` makes the shapes dataset (:mod:`mmgc.runtime.shapes`), then
trains the demo's GC config and its baseline twin for each training seed:
pair after pair, the two runs of a pair side by side, each in its own
process. Every run goes through ``tools/train.py``'s code path
(:func:`mmgc.runtime.cli.run_train`) and validates once, at its last
iteration, with MMDetection's COCO metric (pycocotools). The runs are then
compared with :mod:`mmgc.runtime.compare` (the config check, pairing by seed,
mean ± spread, intervals and verdicts), and the report is written by
:mod:`mmgc.runtime.demo_report`.

The demo's own additions to a run's config are given as ``--cfg-options``
(:func:`demo_options`): the data folder, the schedule scaled to ``iters``,
the seed, and :class:`DemoRecorderHook`, which writes each iteration's loss,
the timings and the val metrics to ``<work_dir>/demo_run.json``.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from . import compare
from .demo_report import DemoRun, write_report
from .shapes import make_shapes_dataset

__all__ = [
    'RUN_FILE',
    'DemoJob',
    'DemoRecorderHook',
    'DemoRun',
    'demo_config',
    'demo_options',
    'run_demo',
    'train_in_parallel',
    'train_in_subprocess',
]

PathLike = Union[str, os.PathLike]
#: What a finished run leaves in its work dir: its :class:`DemoRun` as JSON.
RUN_FILE = 'demo_run.json'
# The 1x schedule steps the lr down after epochs 8 and 11 of 12; the demo's
# iteration schedule does so at the same fractions of the run.
_LR_STEPS = (8 / 12, 11 / 12)
# The module that registers DemoRecorderHook; run configs import it, so the
# configs MMEngine dumps and checkpoints record can be built again.
_THIS_MODULE = __name__


@HOOKS.register_module()
class DemoRecorderHook(Hook):
    """Records each iteration's loss, the timings and the val metrics.

    After training it writes them to ``<work_dir>/demo_run.json`` (the
    fields of :class:`DemoRun` that a run knows about itself).
    """

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []
        self.metrics: dict[str, float] = {}
        self.eval_s = self.eval_cpu_s = 0.0
        self._start = self._cpu_start = 0.0
        self._val_start = self._val_cpu_start = 0.0

    def before_train(self, runner) -> None:
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if outputs and 'loss' in outputs:
            loss = outputs['loss']
            loss = loss.detach() if hasattr(loss, 'detach') else loss
            self.losses.append((runner.iter + 1, float(loss)))

    def before_val(self, runner) -> None:
        self._val_start = time.perf_counter()
        self._val_cpu_start = time.process_time()

    def after_val_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        self.metrics = {k: float(v) for k, v in (metrics or {}).items()}

    def after_val(self, runner) -> None:
        self.eval_s += time.perf_counter() - self._val_start
        self.eval_cpu_s += time.process_time() - self._val_cpu_start

    def after_train(self, runner) -> None:
        work_dir = Path(runner.work_dir)
        last = work_dir / 'last_checkpoint'
        checkpoint = last.read_text().strip() if last.is_file() else ''
        record = dict(
            iters=int(runner.iter),
            metrics=self.metrics,
            losses=self.losses,
            train_s=time.perf_counter() - self._start - self.eval_s,
            train_cpu_s=time.process_time() - self._cpu_start - self.eval_cpu_s,
            eval_s=self.eval_s,
            log_file=str(Path(runner.log_dir, f'{runner.timestamp}.log').resolve()),
            json_log=str(Path(runner.log_dir, 'vis_data', f'{runner.timestamp}.json').resolve()),
            checkpoint=str(Path(checkpoint).resolve()) if checkpoint else '',
        )
        (work_dir / RUN_FILE).write_text(json.dumps(record), encoding='utf-8')


def demo_options(
    config: PathLike,
    *,
    data_root: PathLike,
    iters: Optional[int] = None,
    seed: Optional[int] = None,
) -> dict[str, Any]:
    """The ``--cfg-options`` that make a demo config one run of the demo.

    Args:
        config (str | os.PathLike): A demo config, e.g.
            ``configs/demo/mask_rcnn_r18_fpn_shapes_gc.py``.
        data_root (str | os.PathLike): Folder written by
            :func:`mmgc.runtime.shapes.make_shapes_dataset`.
        iters (int, optional): Training iterations; the warm-up, the two lr
            steps, the evaluation and the checkpoint follow. Defaults to the
            config's.
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
    imports['imports'] = [*imports.get('imports', []), _THIS_MODULE]
    options: dict[str, Any] = {
        'train_dataloader.dataset.data_root': root,
        'val_dataloader.dataset.data_root': root,
        'test_dataloader.dataset.data_root': root,
        'val_evaluator.ann_file': ann,
        'test_evaluator.ann_file': ann,
        'custom_imports': imports,
        'custom_hooks': [*cfg.get('custom_hooks', []), dict(type='DemoRecorderHook')],
    }
    if iters is not None:
        warmup, steps = (dict(s) for s in cfg.param_scheduler)
        warmup['end'] = min(int(cfg.warmup_iters), iters)
        steps['end'] = iters
        steps['milestones'] = [max(1, math.floor(iters * f)) for f in _LR_STEPS]
        options.update(
            {
                'train_cfg.max_iters': iters,
                'train_cfg.val_interval': iters,
                'param_scheduler': [warmup, steps],
                'default_hooks.checkpoint.interval': iters,
            }
        )
    if seed is not None:
        options['randomness.seed'] = seed
    return options


def demo_config(
    config: PathLike,
    *,
    work_dir: PathLike,
    data_root: PathLike,
    iters: Optional[int] = None,
    seed: Optional[int] = None,
) -> Config:
    """A demo config with :func:`demo_options` applied, as a run would see it.

    Args:
        config (str | os.PathLike): A demo config.
        work_dir (str | os.PathLike): MMEngine work dir of the run.
        data_root, iters, seed: As :func:`demo_options`.

    Returns:
        Config: The merged config.
    """
    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict(demo_options(config, data_root=data_root, iters=iters, seed=seed))
    cfg.work_dir = str(work_dir)
    return cfg


@dataclass(frozen=True)
class DemoJob:
    """One training run to do: which config, which seed, where."""

    name: str
    config: str
    seed: int
    work_dir: str
    data_root: str
    iters: Optional[int] = None

    @property
    def label(self) -> str:
        return f'{self.name} seed {self.seed}'


@dataclass
class _Started:
    """A job and the process that runs it."""

    job: DemoJob
    process: Any
    log_file: Optional[Path]


def _child(job: DemoJob, threads: Optional[int], log_file: Optional[str]) -> None:
    """Body of a run's process: ``tools/train.py``'s steps, then the record."""
    if log_file is not None:  # this run's output, C++ included, to its own file
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    import torch
    from mmdet.utils import register_all_modules, setup_cache_size_limit_of_dynamo

    import mmgc  # noqa: F401  (registers SGDGC and its constructor)

    from .cli import parse_args, run_train, train_parser

    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    args = parse_args(train_parser(), [job.config, '--work-dir', job.work_dir])
    args.cfg_options = demo_options(
        job.config, data_root=job.data_root, iters=job.iters, seed=job.seed
    )
    setup_cache_size_limit_of_dynamo()
    register_all_modules(init_default_scope=False)
    run_train(args)
    path = Path(job.work_dir) / RUN_FILE
    record = json.loads(path.read_text(encoding='utf-8'))
    run = DemoRun(
        name=job.name,
        seed=job.seed,
        config=job.config,
        work_dir=str(Path(job.work_dir).resolve()),
        total_s=time.perf_counter() - start,
        threads=torch.get_num_threads(),
        **record,
    )
    path.write_text(json.dumps(asdict(run)), encoding='utf-8')


def _start(job: DemoJob, threads: Optional[int], log_file: Optional[Path]) -> _Started:
    Path(job.work_dir).mkdir(parents=True, exist_ok=True)
    (Path(job.work_dir) / RUN_FILE).unlink(missing_ok=True)
    if log_file is not None:
        log_file.write_text('')
    process = mp.get_context('spawn').Process(
        target=_child,
        args=(job, threads, str(log_file) if log_file else None),
        name=f'demo-{job.name}-seed{job.seed}',
    )
    process.start()
    return _Started(job, process, log_file)


def _finish(started: _Started) -> DemoRun:
    """The run's :class:`DemoRun`, once its process has ended."""
    started.process.join()
    path = Path(started.job.work_dir) / RUN_FILE
    if started.process.exitcode == 0 and path.is_file():
        record = json.loads(path.read_text(encoding='utf-8'))
        names = {f.name for f in fields(DemoRun)}
        record['losses'] = [tuple(item) for item in record.get('losses', [])]
        return DemoRun(**{k: v for k, v in record.items() if k in names})
    detail = f'exit code {started.process.exitcode}'
    if started.log_file is not None and started.log_file.is_file():
        tail = started.log_file.read_text(errors='replace')[-3000:]
        detail += f'; the end of its console log ({started.log_file}):\n{tail}'
    raise RuntimeError(f'demo run {started.job.label} ({started.job.config}) failed: {detail}')


def train_in_subprocess(job: DemoJob, threads: Optional[int] = None) -> DemoRun:
    """Train one run in a fresh process; its output goes to this one's.

    MMEngine keeps some instances process-wide (the visualizer named in the
    config, which holds the JSON log's folder), so a second run in the same
    process would log into the first one's folder: each run gets its own.

    Args:
        job (DemoJob): The run.
        threads (int, optional): Torch threads of the run.

    Returns:
        DemoRun: What the run produced.

    Raises:
        RuntimeError: If the run fails.
    """
    return _finish(_start(job, threads, None))


def train_in_parallel(
    jobs: Sequence[DemoJob],
    *,
    threads: Optional[int] = None,
    poll_s: float = 20.0,
) -> list[DemoRun]:
    """Train several runs at once, each in its own process.

    Each run gets ``threads`` torch threads (default: the CPU count divided
    among the runs) and its own console log, ``<work_dir>/console.log``;
    every ``poll_s`` seconds one line says where each run is. On a 2-core
    CPU two single-threaded runs side by side take about as long as one
    two-threaded run, so a pair costs the wall time of one run.

    Args:
        jobs (Sequence[DemoJob]): The runs.
        threads (int, optional): Torch threads per run.
        poll_s (float): Seconds between progress lines. Defaults to 20.

    Returns:
        list[DemoRun]: In the order of ``jobs``.

    Raises:
        RuntimeError: If a run fails (after all have ended), naming each
            failed run with the end of its console log.
    """
    threads = threads or max(1, (os.cpu_count() or 1) // len(jobs))
    started = []
    for job in jobs:
        log = Path(job.work_dir) / 'console.log'
        log.parent.mkdir(parents=True, exist_ok=True)
        started.append(_start(job, threads, log))
        print_log(f'[demo] {job.label}: {threads} thread(s), console log {log}', logger='current')
    last_report = time.perf_counter()
    while any(s.process.is_alive() for s in started):
        for s in started:
            s.process.join(timeout=0.5)
        if time.perf_counter() - last_report >= poll_s:
            last_report = time.perf_counter()
            print_log(
                '[demo] progress: '
                + ', '.join(f'{s.job.label} {_last_iteration(s.log_file)}' for s in started),
                logger='current',
            )
    runs, errors = [], []
    for s in started:
        try:
            runs.append(_finish(s))
        except RuntimeError as err:
            errors.append(str(err))
    if errors:
        raise RuntimeError('\n\n'.join(errors))
    return runs


_ITER_LINE = re.compile(r'Iter\(train\) \[\s*(\d+)/(\d+)\].*?eta: ([0-9:]+)')


def _last_iteration(log_file: Optional[Path]) -> str:
    """``'120/600 (eta 0:08:01)'`` from a run's console log."""
    if log_file is None or not log_file.is_file():
        return 'starting'
    with open(log_file, 'rb') as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
        tail = f.read().decode(errors='replace')
    matches = _ITER_LINE.findall(tail)
    if matches:
        done, total, eta = matches[-1]
        return f'{done}/{total} (eta {eta})'
    return 'evaluating' if 'Evaluating' in tail else 'starting'


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ValueError('seeds must name at least one training seed; got none')
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f'seeds must be ints >= 0; got {seed!r}')
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f'seeds must differ; {repeated} given more than once')
    return seeds


def run_demo(
    gc_config: PathLike,
    baseline_config: PathLike,
    *,
    seeds: Sequence[int] = (0,),
    data_root: PathLike = 'data/shapes',
    work_dir: PathLike = 'work_dirs/demo',
    report_dir: PathLike = 'reports/demo',
    iters: Optional[int] = None,
    data_seed: int = 0,
    num_train: int = 800,
    num_val: int = 50,
    command: Optional[str] = None,
    parallel: bool = True,
    threads: Optional[int] = None,
) -> dict[str, Any]:
    """Make the data, train GC and baseline for each seed, compare, report.

    Args:
        gc_config (str | os.PathLike): The GC demo config.
        baseline_config (str | os.PathLike): Its baseline twin.
        seeds (Sequence[int]): Training seeds; one pair of runs each.
            Defaults to ``(0,)``.
        data_root (str | os.PathLike): Where the shapes dataset is written
            (or reused). Defaults to ``'data/shapes'``.
        work_dir (str | os.PathLike): Parent of the runs' work dirs,
            ``seed<S>/baseline`` and ``seed<S>/gc``. Defaults to
            ``'work_dirs/demo'``.
        report_dir (str | os.PathLike): Where the report is written.
            Defaults to ``'reports/demo'``.
        iters (int, optional): Training iterations of each run. Defaults to
            the configs' ``max_iters`` (750).
        data_seed (int): Seed of the generated dataset. Defaults to 0.
        num_train (int): Generated training images. Defaults to 800.
        num_val (int): Generated val images. Defaults to 50.
        command (str, optional): The command line, quoted in the report.
        parallel (bool): Train the two runs of a pair side by side, each
            with half the CPU's threads (see :func:`train_in_parallel`);
            else one after the other. Defaults to True.
        threads (int, optional): Torch threads per run when ``parallel``.

    Returns:
        dict: ``report`` (path of the Markdown report), ``report_dir``,
        ``summary`` (what ``summary.json`` holds), ``runs`` (every
        :class:`DemoRun`, by seed, baseline first) and ``comparison``.

    Raises:
        ValueError: If ``seeds`` is empty, repeats a seed or holds one < 0.
        RuntimeError: If a run fails.
        ConfigMismatchError: If the runs' configs differ in more than the
            optimizer and the seed.
    """
    from mmdet.utils import register_all_modules

    seeds = _check_seeds(seeds)
    register_all_modules(init_default_scope=False)
    wall_start = time.perf_counter()
    print_log('[demo] 1/3 dataset', logger='current')
    data = make_shapes_dataset(data_root, num_train=num_train, num_val=num_val, seed=data_seed)
    max_iters = iters or Config.fromfile(str(baseline_config)).train_cfg.max_iters
    runs: list[DemoRun] = []
    for number, seed in enumerate(seeds, start=1):
        jobs = [
            DemoJob(
                name=name,
                config=str(config),
                seed=seed,
                work_dir=str(Path(work_dir).resolve() / f'seed{seed}' / name),
                data_root=data['data_root'],
                iters=iters,
            )
            for name, config in (('baseline', baseline_config), ('gc', gc_config))
        ]
        pair = f'pair {number}/{len(seeds)} (seed {seed}, {max_iters} iterations)'
        if parallel:
            print_log(f'[demo] 2/3 {pair}: training baseline and gc side by side', logger='current')
            runs += train_in_parallel(jobs, threads=threads)
        else:
            for job in jobs:
                print_log(f'[demo] 2/3 {pair}: training {job.name}', logger='current')
                runs.append(train_in_subprocess(job))
    print_log('[demo] 3/3 comparison and report', logger='current')
    comparison = compare.compare_runs(
        [compare.load_run(run.work_dir) for run in runs if run.name == 'gc'],
        [compare.load_run(run.work_dir) for run in runs if run.name == 'baseline'],
    )
    report = write_report(
        runs,
        comparison,
        report_dir,
        data=data,
        data_seed=data_seed,
        wall_s=time.perf_counter() - wall_start,
        command=command,
    )
    print_log(f'[demo] report written to {report["report"]}', logger='current')
    return {**report, 'runs': runs, 'comparison': comparison}
