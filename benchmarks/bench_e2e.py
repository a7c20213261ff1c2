"""Per-iteration training time with and without Gradient Centralization,
measured side by side in one process on a real (shrunk) MMDetection config.

Usage::

    python benchmarks/bench_e2e.py                 # the demo twins, 20 iters
    python benchmarks/bench_e2e.py --iters 40 --out-dir work_dirs/bench

The GC config and its baseline twin (by default the demo's Mask R-CNN R18-FPN
on 128x128 synthetic shapes, ``configs/demo/``) are built into models with
identical initial weights. Each iteration, one training batch is fed to every
variant in turn (the order rotates), each doing exactly what MMEngine's train
loop does per iteration, ``model.train_step(batch, optim_wrapper)``: forward,
backward, optimizer step, zero_grad. Variants:

- ``SGD (baseline)``: the baseline config's optimizer, MMDetection's
  ``torch.optim.SGD`` with torch's default kernel (the for-loop on the CPU);
- ``SGD fused``: the same with ``fused=True``, torch's fastest;
- ``SGDGC (GC config)``: the GC config as written (SGDGC's default path).

Reported: median iteration time, median optimizer-step time (timed with
torch's optimizer step hooks), and GC's overhead over each baseline, both as
the difference of median iteration times (noisy: the forward/backward time
varies with the number of proposals) and as the difference of median step
times divided by the baseline's iteration time (the part GC changes).
Written to ``--out-dir``: ``e2e.md`` (the table) and ``e2e.png`` (the two
medians per variant as bars).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger, print_log
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.utils import ProgressBar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mmgc  # noqa: E402,F401  (registers SGDGC)
from mmgc.runtime.shapes import make_shapes_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GC_CONFIG = ROOT / 'configs/demo/mask_rcnn_r18_fpn_shapes_gc.py'
BASE_CONFIG = ROOT / 'configs/demo/baselines/mask_rcnn_r18_fpn_shapes.py'


class StepTimer:
    """Times ``optimizer.step`` with torch's step hooks."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.times_ms: list[float] = []
        self._start = 0.0
        optimizer.register_step_pre_hook(self._pre)
        optimizer.register_step_post_hook(self._post)

    def _pre(self, *_) -> None:
        self._start = time.perf_counter()

    def _post(self, *_) -> None:
        self.times_ms.append((time.perf_counter() - self._start) * 1e3)


def _load(config: Path, data_root: str) -> Config:
    cfg = Config.fromfile(str(config))
    root = data_root.rstrip('/') + '/'
    cfg.train_dataloader.dataset.data_root = root
    return cfg


def build_variants(
    base_cfg: Config, gc_cfg: Config
) -> dict[str, tuple[torch.nn.Module, object, StepTimer]]:
    """Models with identical initial weights and their optim wrappers."""
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    base_model = MODELS.build(base_cfg.model)
    base_model.init_weights()
    fused_cfg = copy.deepcopy(base_cfg.optim_wrapper)
    fused_cfg.optimizer.fused = True
    plan = [
        ('SGD (baseline)', base_cfg, base_cfg.optim_wrapper),
        ('SGD fused', base_cfg, fused_cfg),
        ('SGDGC (GC config)', gc_cfg, gc_cfg.optim_wrapper),
    ]
    variants = {}
    for name, cfg, wrapper_cfg in plan:
        model = MODELS.build(cfg.model)
        model.load_state_dict(base_model.state_dict())
        model.train()
        wrapper = build_optim_wrapper(model, copy.deepcopy(wrapper_cfg))
        variants[name] = (model, wrapper, StepTimer(wrapper.optimizer))
    return variants


def plot(med_iter: dict[str, float], med_step: dict[str, float], path: Path, title: str) -> Path:
    """Bars of the median iteration and optimizer-step times, per variant."""
    from matplotlib.figure import Figure

    names = list(med_iter)
    fig = Figure(figsize=(8, 3.6), layout='constrained')
    axes = fig.subplots(1, 2)
    for ax, values, label in (
        (axes[0], med_iter, 'median iteration (ms)'),
        (axes[1], med_step, 'median optimizer step (ms)'),
    ):
        heights = [values[n] for n in names]
        bars = ax.bar(range(len(names)), heights, color=['tab:blue', 'tab:cyan', 'tab:red'])
        ax.bar_label(bars, fmt='%.1f', fontsize=8)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel(label)
        ax.set_ylim(0, max(heights) * 1.15)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--gc-config', default=str(GC_CONFIG))
    parser.add_argument('--baseline-config', default=str(BASE_CONFIG))
    parser.add_argument(
        '--data-root',
        default='work_dirs/benchmarks/shapes',
        help='synthetic shapes data (written here if missing)',
    )
    parser.add_argument('--iters', type=int, default=20, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--out-dir', default='work_dirs/benchmarks')
    return parser


def time_iterations(variants: dict, loader: Any, warmup: int, iters: int) -> dict[str, list[float]]:
    """Each variant's ``train_step`` on the same batches, interleaved (the
    first variant rotates each iteration); ms of the timed iterations."""
    names = list(variants)
    iter_ms: dict[str, list[float]] = {n: [] for n in names}
    progress = ProgressBar(warmup + iters)
    batches = iter(loader)
    for it in range(warmup + iters):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        for name in names[it % len(names) :] + names[: it % len(names)]:
            model, wrapper, _ = variants[name]
            data = copy.deepcopy(batch)
            t0 = time.perf_counter()
            model.train_step(data, optim_wrapper=wrapper)
            if it >= warmup:
                iter_ms[name].append((time.perf_counter() - t0) * 1e3)
        progress.update()
    sys.stdout.write('\n')
    return iter_ms


def table(med_iter: dict[str, float], med_step: dict[str, float]) -> list[str]:
    """The markdown rows: each variant's medians and GC's overhead over it."""
    gc = 'SGDGC (GC config)'
    rows = [
        '| variant | iteration ms | optimizer step ms | GC overhead, iteration '
        'medians | GC overhead, step medians / iteration |',
        '|---|---:|---:|---:|---:|',
    ]
    for n in med_iter:
        if n == gc:
            rows.append(f'| {n} | {med_iter[n]:.0f} | {med_step[n]:.1f} | | |')
            continue
        by_iter = (med_iter[gc] - med_iter[n]) / med_iter[n] * 100
        by_step = (med_step[gc] - med_step[n]) / med_iter[n] * 100
        rows.append(
            f'| {n} | {med_iter[n]:.0f} | {med_step[n]:.1f} | {by_iter:+.2f}% | {by_step:+.2f}% |'
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error(f'need --iters >= 1, --warmup >= 0; got {args.iters}, {args.warmup}')
    logger = MMLogger.get_instance('mmgc_bench_e2e', log_level='INFO')
    if args.threads:
        torch.set_num_threads(args.threads)
    init_default_scope('mmdet')
    base_cfg = _load(Path(args.baseline_config), args.data_root)
    gc_cfg = _load(Path(args.gc_config), args.data_root)
    make_shapes_dataset(args.data_root, num_train=32, num_val=4, image_size=base_cfg.image_size)
    level = logger.level
    logger.setLevel('ERROR')  # the constructors' per-parameter notes
    variants = build_variants(base_cfg, gc_cfg)
    logger.setLevel(level)
    loader = Runner.build_dataloader(base_cfg.train_dataloader, seed=0)
    print_log(
        f'{len(variants)} variants x {args.warmup + args.iters} iterations '
        f'(batch {base_cfg.train_dataloader.batch_size}, '
        f'{base_cfg.image_size}px, {torch.get_num_threads()} threads)',
        logger='current',
    )
    iter_ms = time_iterations(variants, loader, args.warmup, args.iters)
    med_iter = {n: statistics.median(ms) for n, ms in iter_ms.items()}
    med_step = {n: statistics.median(variants[n][2].times_ms[args.warmup :]) for n in variants}
    text = (
        f'## End to end: {Path(args.gc_config).name} vs its baseline\n\n'
        + '\n'.join(table(med_iter, med_step))
        + f'\n\nMedians of {args.iters} iterations after {args.warmup} warm-up '
        f'ones, variants interleaved; {torch.get_num_threads()} CPU threads. '
        'Overhead = (GC - baseline) / baseline iteration time.'
    )
    print_log('\n' + text, logger='current')
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'e2e.md').write_text(text + '\n')
    title = f'{Path(args.gc_config).name} vs its baseline, {torch.get_num_threads()} threads'
    plot(med_iter, med_step, out / 'e2e.png', title)
    print_log(f'wrote {out / "e2e.md"} and {out / "e2e.png"}', logger='current')
    return dict(iteration_ms=med_iter, step_ms=med_step)


if __name__ == '__main__':
    main()
