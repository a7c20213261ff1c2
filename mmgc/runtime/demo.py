"""The demo: Mask R-CNN trained with GC and with its baseline on synthetic data.

``run_demo`` makes the shapes dataset (:mod:`mmgc.runtime.shapes`), trains
the demo's GC config and its baseline twin one after the other with MMEngine's
``Runner``, evaluates each on the val split with MMDetection's COCO metric
(pycocotools) right after training, with the in-memory model, and writes a
report folder (:mod:`mmgc.runtime.demo_report`).
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import queue as queue_module
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import print_log

from .shapes import make_shapes_dataset

__all__ = [
    'DemoRun',
    'demo_config',
    'run_demo',
    'train_and_evaluate',
    'train_in_parallel',
    'train_in_subprocess',
]

PathLike = Union[str, os.PathLike]
# The 1x schedule steps the lr down after epochs 8 and 11 of 12; the demo's
# iteration schedule does so at the same fractions of the run.
_LR_STEPS = (8 / 12, 11 / 12)


@dataclass
class DemoRun:
    """What one training run of the demo produced.

    Attributes:
        name (str): ``'baseline'`` or ``'gc'``.
        config (str): The config file it was built from.
        work_dir (str): MMEngine's work dir of the run.
        iters (int): Training iterations run.
        metrics (dict): The COCO metric's results on the val split, with
            MMDetection's keys (``'coco/bbox_mAP'``, ``'coco/segm_mAP_50'``,
            ...), as fractions in [0, 1] (-1 where COCOeval has no data).
        losses (list): ``(iteration, total training loss)`` of every iteration,
            iterations counted from 1.
        train_s (float): Wall time of the training iterations (data loading
            and checkpoint saving included, evaluation excluded).
        train_cpu_s (float): CPU time (all threads of the process) of the
            training iterations: less sensitive than wall time to other
            processes sharing the CPU.
        eval_s (float): Wall time of the evaluation on the val split.
        total_s (float): Wall time of the whole run: building the runner and
            model, training and evaluation.
        log_file (str): MMEngine's text log.
        json_log (str): MMEngine's JSON log of the logged scalars.
        checkpoint (str): The checkpoint saved at the end of training.
        threads (int): Torch CPU threads the run used.
    """

    name: str
    config: str
    work_dir: str
    iters: int
    metrics: dict[str, float] = field(default_factory=dict)
    losses: list[tuple[int, float]] = field(default_factory=list)
    train_s: float = 0.0
    train_cpu_s: float = 0.0
    eval_s: float = 0.0
    total_s: float = 0.0
    log_file: str = ''
    json_log: str = ''
    checkpoint: str = ''
    threads: int = 0


class _RunRecorder(Hook):
    """Records per-iteration losses, timings and the val metrics of a run."""

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []
        self.metrics: dict[str, float] = {}
        self.eval_s = self.eval_cpu_s = 0.0
        self.train_s = self.train_cpu_s = 0.0
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
        self.train_s = time.perf_counter() - self._start - self.eval_s
        self.train_cpu_s = time.process_time() - self._cpu_start - self.eval_cpu_s


def demo_config(
    config: PathLike,
    *,
    work_dir: PathLike,
    data_root: PathLike,
    iters: Optional[int] = None,
    seed: Optional[int] = None,
) -> Config:
    """Load a demo config and point it at a data folder, a schedule and a seed.

    Args:
        config (str | os.PathLike): A demo config, e.g.
            ``configs/demo/mask_rcnn_r18_fpn_shapes_gc.py``.
        work_dir (str | os.PathLike): MMEngine work dir of the run.
        data_root (str | os.PathLike): Folder written by
            :func:`mmgc.runtime.shapes.make_shapes_dataset`.
        iters (int, optional): Training iterations; the warm-up, the two lr
            steps, the evaluation and the checkpoint follow. Defaults to the
            config's.
        seed (int, optional): Training seed. Defaults to the config's.

    Returns:
        Config: The config, ready for ``Runner.from_cfg``.

    Raises:
        ValueError: If ``iters`` is not a positive int or ``seed`` is negative.
    """
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(work_dir)
    root = str(data_root).rstrip('/\\') + '/'
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = root
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        evaluator.ann_file = root + cfg.val_dataloader.dataset.ann_file
    if iters is not None:
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f'iters must be an int >= 1; got {iters!r}')
        cfg.train_cfg.max_iters = iters
        cfg.train_cfg.val_interval = iters
        warmup, steps = cfg.param_scheduler
        warmup.end = min(int(cfg.warmup_iters), iters)
        steps.end = iters
        steps.milestones = [max(1, math.floor(iters * f)) for f in _LR_STEPS]
        cfg.default_hooks.checkpoint.interval = iters
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f'seed must be an int >= 0; got {seed!r}')
        cfg.randomness.seed = seed
    return cfg


def train_and_evaluate(cfg: Config, name: str) -> DemoRun:
    """Train one config, then evaluate the in-memory model on the val split.

    The config's train loop validates once at its last iteration (the demo
    configs set ``val_interval`` to the number of iterations), so no
    checkpoint is read back.

    MMEngine keeps some instances process-wide (the visualizer named in the
    config, which holds the JSON log's folder), so a second run in the same
    process would log into the first one's folder: run each in its own
    process with :func:`train_in_subprocess`.

    Args:
        cfg (Config): A config from :func:`demo_config`.
        name (str): A name for the run (``'baseline'``, ``'gc'``).

    Returns:
        DemoRun: Metrics, losses, timings and file paths of the run.
    """
    import torch
    from mmengine.runner import Runner

    start = time.perf_counter()
    runner = Runner.from_cfg(cfg)
    recorder = _RunRecorder()
    runner.register_hook(recorder)
    runner.train()
    total_s = time.perf_counter() - start

    work_dir = Path(runner.work_dir)
    last = work_dir / 'last_checkpoint'
    checkpoint = last.read_text().strip() if last.is_file() else ''
    return DemoRun(
        name=name,
        config=str(cfg.filename),
        work_dir=str(work_dir.resolve()),
        iters=int(runner.iter),
        metrics=recorder.metrics,
        losses=recorder.losses,
        train_s=recorder.train_s,
        train_cpu_s=recorder.train_cpu_s,
        eval_s=recorder.eval_s,
        total_s=total_s,
        log_file=str(Path(runner.log_dir, f'{runner.timestamp}.log').resolve()),
        json_log=str(Path(runner.log_dir, 'vis_data', f'{runner.timestamp}.json').resolve()),
        checkpoint=str(Path(checkpoint).resolve()) if checkpoint else '',
        threads=torch.get_num_threads(),
    )


def train_in_subprocess(config: PathLike, name: str, **kwargs: Any) -> DemoRun:
    """Build a demo config and run :func:`train_and_evaluate` in a fresh process.

    The child is started with ``spawn`` and shares this process's stdout and
    stderr, so MMEngine's progress log shows as usual.

    Args:
        config (str | os.PathLike): A demo config file.
        name (str): A name for the run.
        **kwargs: Keyword arguments of :func:`demo_config` (``work_dir``,
            ``data_root``, ``iters``, ``seed``).

    Returns:
        DemoRun: What the run produced.

    Raises:
        RuntimeError: If the run fails; the message holds the child's
            traceback or exit code.
    """
    return _collect(_start(config, name, kwargs))


def train_in_parallel(
    plan: list[tuple[str, PathLike, dict[str, Any]]],
    *,
    threads: Optional[int] = None,
    poll_s: float = 20.0,
) -> list[DemoRun]:
    """Run :func:`train_and_evaluate` for several configs at once.

    Each run gets its own process, ``threads`` torch threads (default: the
    CPU count divided among the runs) and its own console log,
    ``<work_dir>/console.log``; every ``poll_s`` seconds one line says where
    each run is. On a 2-core CPU two single-threaded runs side by side take
    about as long as one two-threaded run, so the demo's twins cost the
    wall time of one.

    Args:
        plan (list): ``(name, config, demo_config kwargs)`` per run.
        threads (int, optional): Torch threads per run.
        poll_s (float): Seconds between progress lines. Defaults to 20.

    Returns:
        list[DemoRun]: In the order of ``plan``.
    """
    threads = threads or max(1, (os.cpu_count() or 1) // len(plan))
    started = []
    for name, config, kwargs in plan:
        log = Path(kwargs['work_dir']) / 'console.log'
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text('')
        started.append(_start(config, name, kwargs, threads=threads, log_file=log))
        print_log(f'[demo] {name}: {threads} thread(s), console log {log}', logger='current')
    results: dict[str, Any] = {}
    last_report = time.perf_counter()
    while len(results) < len(started):
        for run in started:
            name = run[1]
            if name not in results:
                got = _poll(run, timeout=0.5)
                if got is not None:
                    results[name] = got
        if time.perf_counter() - last_report >= poll_s:
            last_report = time.perf_counter()
            print_log(
                '[demo] progress: '
                + ', '.join(f'{run[1]} {_last_iteration(run[5])}' for run in started),
                logger='current',
            )
    return [_collect(run, results[run[1]]) for run in started]


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


def _start(
    config: PathLike,
    name: str,
    kwargs: dict[str, Any],
    threads: Optional[int] = None,
    log_file: Optional[Path] = None,
) -> tuple:
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    child = ctx.Process(
        target=_child,
        args=(str(config), name, kwargs, queue, threads, str(log_file) if log_file else None),
        name=f'demo-{name}',
    )
    child.start()
    return (child, name, str(config), queue, threads, log_file)


def _poll(run: tuple, timeout: float) -> Any:
    """The child's result, ``('died', None)`` if it ended without one, or None."""
    child, queue = run[0], run[3]
    try:
        return queue.get(timeout=timeout)
    except queue_module.Empty:
        return None if child.is_alive() else ('died', None)


def _collect(run: tuple, result: Any = None) -> DemoRun:
    child, name, config = run[0], run[1], run[2]
    while result is None:
        result = _poll(run, timeout=2.0)
    child.join()
    if isinstance(result, DemoRun):
        return result
    detail = result[1] if isinstance(result, tuple) and result[1] else f'exit code {child.exitcode}'
    if run[5] is not None:
        detail += f' (console log: {run[5]})'
    raise RuntimeError(f'demo run {name!r} ({config}) failed:\n{detail}')


def _child(
    config: str,
    name: str,
    kwargs: dict[str, Any],
    queue: Any,
    threads: Optional[int] = None,
    log_file: Optional[str] = None,
) -> None:
    """Body of a demo run's process."""
    if log_file is not None:  # this run's output, C++ included, to its own file
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        import torch
        from mmdet.utils import register_all_modules

        import mmgc  # noqa: F401  (registers SGDGC and its constructor)

        if threads is not None:
            torch.set_num_threads(threads)
        register_all_modules(init_default_scope=False)
        queue.put(train_and_evaluate(demo_config(config, **kwargs), name))
    except BaseException:
        queue.put(('error', traceback.format_exc()))
        raise


def _run_compare_tool(
    tool: Optional[PathLike], runs: list[DemoRun], report_dir: PathLike
) -> dict[str, Any]:
    """Run the comparison tool on the GC and baseline work dirs.

    Returns:
        dict: ``tool`` (its path or ``None``), ``returncode``, ``output``
        (stdout and stderr) and ``markdown`` (its table, if written).
    """
    if tool is None or not Path(tool).is_file():
        return dict(tool=None, returncode=None, output='', markdown='')
    by_name = {run.name: run for run in runs}
    cmd = [
        sys.executable,
        str(tool),
        by_name['gc'].work_dir,
        by_name['baseline'].work_dir,
        '--out-dir',
        str(Path(report_dir).resolve()),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        print_log(
            f'[demo] {tool} failed (exit code {proc.returncode}):\n{output}',
            logger='current',
            level=logging.WARNING,
        )
    markdown = Path(report_dir, 'ap_comparison.md')
    return dict(
        tool=str(tool),
        returncode=proc.returncode,
        output=output,
        markdown=markdown.read_text(encoding='utf-8')
        if proc.returncode == 0 and markdown.is_file()
        else '',
    )


def run_demo(
    gc_config: PathLike,
    baseline_config: PathLike,
    *,
    data_root: PathLike = 'data/shapes',
    work_dir: PathLike = 'work_dirs/demo',
    report_dir: PathLike = 'reports/demo',
    iters: Optional[int] = None,
    seed: int = 0,
    data_seed: int = 0,
    num_train: int = 800,
    num_val: int = 50,
    command: Optional[str] = None,
    compare_tool: Optional[PathLike] = None,
    parallel: bool = True,
    threads: Optional[int] = None,
) -> dict[str, Any]:
    """Make the data, train and evaluate GC and baseline, write the report.

    Args:
        gc_config (str | os.PathLike): The GC demo config.
        baseline_config (str | os.PathLike): Its baseline twin.
        data_root (str | os.PathLike): Where the shapes dataset is written
            (or reused). Defaults to ``'data/shapes'``.
        work_dir (str | os.PathLike): Parent of the two runs' work dirs
            (``baseline/`` and ``gc/``). Defaults to ``'work_dirs/demo'``.
        report_dir (str | os.PathLike): Where the report is written.
            Defaults to ``'reports/demo'``.
        iters (int, optional): Training iterations of each run. Defaults to
            the configs' ``max_iters`` (1000).
        seed (int): Training seed of both runs. Defaults to 0.
        data_seed (int): Seed of the generated dataset. Defaults to 0.
        num_train (int): Generated training images. Defaults to 800.
        num_val (int): Generated val images. Defaults to 50.
        command (str, optional): The command line, quoted in the report.
        compare_tool (str | os.PathLike, optional): ``tools/compare_ap.py``:
            run on the two work dirs, it checks that the runs' configs differ
            only in the optimizer and writes its AP table (``ap_comparison.*``)
            into the report folder, where the report quotes it. Skipped if
            ``None`` or missing.
        parallel (bool): Train both runs at once, each with half the CPU's
            threads (see :func:`train_in_parallel`). Defaults to True.
        threads (int, optional): Torch threads per run when ``parallel``.

    Returns:
        dict: ``report`` (path of the Markdown report), ``report_dir``,
        ``runs`` (the two :class:`DemoRun`, baseline first) and ``summary``
        (what the report's ``summary.json`` holds).
    """
    from mmdet.utils import register_all_modules

    from .demo_report import write_report

    register_all_modules(init_default_scope=False)
    wall_start = time.perf_counter()
    print_log('[demo] 1/4 dataset', logger='current')
    data = make_shapes_dataset(data_root, num_train=num_train, num_val=num_val, seed=data_seed)
    plan = []
    for name, config in (('baseline', baseline_config), ('gc', gc_config)):
        settings = dict(
            work_dir=Path(work_dir).resolve() / name,
            data_root=data['data_root'],
            iters=iters,
            seed=seed,
        )
        cfg = demo_config(config, **settings)
        plan.append((name, config, settings))
        print_log(
            f'[demo] {name}: {config}, {cfg.train_cfg.max_iters} iterations, '
            f'seed {cfg.randomness.seed}, then evaluated on val',
            logger='current',
        )
    if parallel:
        print_log('[demo] 2-3/4 training baseline and gc side by side', logger='current')
        runs = train_in_parallel(plan, threads=threads)
    else:
        runs = []
        for step, (name, config, settings) in enumerate(plan, start=2):
            print_log(f'[demo] {step}/4 training {name}', logger='current')
            runs.append(train_in_subprocess(config, name, **settings))
    print_log('[demo] 4/4 report', logger='current')
    comparison = _run_compare_tool(compare_tool, runs, report_dir)
    report = write_report(
        runs,
        report_dir,
        data=data,
        seed=seed,
        data_seed=data_seed,
        wall_s=time.perf_counter() - wall_start,
        command=command,
        comparison=comparison,
    )
    print_log(f'[demo] report written to {report["report"]}', logger='current')
    return {**report, 'runs': runs}
