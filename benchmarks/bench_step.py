"""Time one optimizer step, with and without Gradient Centralization, on the
trainable parameters of real MMDetection models.

Usage::

    python benchmarks/bench_step.py                       # CPU (+ CUDA if any)
    python benchmarks/bench_step.py --models mask_rcnn_r50 --iters 50
    python benchmarks/bench_step.py --device cuda --out-dir work_dirs/bench
    python benchmarks/bench_step.py --models tiny --iters 3 --output step.md  # CI

For each model (built from MMDetection's config with ``init_cfg=None``,
random gradients) and device, every variant below takes ``--warmup`` steps,
then ``--iters`` timed steps; the variants take turns step by step, so a
change of machine load hits all of them alike. Reported: the median step
time, its ratio to torch's fused SGD without GC, the peak memory a
steady-state step allocates beyond what it holds before (momentum buffers
exist by then, as in training), and the ops one steady-state step runs,
counted with ``torch.profiler``: the aten ops the step calls (top-level
``aten::`` events; nested ones, such as the per-tensor ops inside a foreach
fallback, are not counted) and, on CUDA, the GPU kernels it launches.

Memory is measured on CUDA with ``torch.cuda.max_memory_allocated``; on the
CPU (torch keeps no CPU allocator statistics) by a ``TorchDispatchMode`` that
adds up the storage every aten op allocates and subtracts it when the tensor
is freed. Memory allocated outside aten ops (none in any variant here) would
not be seen.

The parameter groups are the real ones: MMEngine's default constructor for
``SGD`` (MMDetection's own optim_wrapper), :class:`mmgc.GCOptimWrapperConstructor`
with ``gc_layers=('conv', 'fc')`` for ``SGDGC``. lr 0.02, momentum 0.9, weight
decay 1e-4, as in the 1x schedules.

Writes ``step_<device>.md`` (the table) and ``step_<device>.png`` (a bar
chart) into ``--out-dir``, and with ``--output PATH`` all devices' tables
into one Markdown file. ``--models tiny`` is a small built-in conv net (no
MMDetection model is built), for a run of seconds.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.utils import ProgressBar
from torch import Tensor, nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mmgc  # noqa: E402,F401  (registers SGDGC)
from mmgc.engine.optimizers import GCOptimWrapperConstructor  # noqa: E402
from mmgc.engine.optimizers.sgd_gc import (  # noqa: E402
    torch_fused_sgd_on_cpu,
    torch_has_fused_sgd,
)
from mmgc.ops import cpu_kernel  # noqa: E402

MODEL_CONFIGS = {
    'mask_rcnn_r50': 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'mask_rcnn_x101_64x4d': 'mmdet::mask_rcnn/mask-rcnn_x101-64x4d_fpn_1x_coco.py',
    'faster_rcnn_r50': 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
}
HYPER = dict(lr=0.02, momentum=0.9, weight_decay=1e-4)


def baseline_name(device: torch.device) -> str:
    """torch's fastest SGD without GC on ``device``: fused where this torch
    has a fused SGD for it, else foreach (torch 2.1 has no fused SGD)."""
    fused = torch_fused_sgd_on_cpu() if device.type == 'cpu' else torch_has_fused_sgd()
    return 'SGD fused' if fused else 'SGD foreach'


@dataclass
class Result:
    """One variant's numbers on one model and device."""

    name: str
    times_ms: list[float] = field(default_factory=list)
    peak_extra_bytes: int = 0
    aten_ops: int = 0
    all_aten_ops: int = 0
    gpu_kernels: int | None = None
    note: str = ''

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


class AllocationTracker(TorchDispatchMode):
    """Live bytes of the storages aten ops allocate, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, Tensor)
        }
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in inputs or key in self._sizes:
                continue
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, key)
        return out


def config_path(name: str) -> str:
    """``mmdet::x/y.py`` as a file path (other paths are returned as given)."""
    if not name.startswith('mmdet::'):
        return name
    import mmdet

    path = Path(mmdet.__file__).parent / '.mim' / 'configs' / name[len('mmdet::') :]
    if not path.is_file():
        raise FileNotFoundError(f'{name}: no config at {path}')
    return str(path)


def tiny_model() -> nn.Module:
    """A small conv net (conv, BN, grouped conv, deconv, FC) for quick runs."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3),
        nn.BatchNorm2d(32),
        nn.Conv2d(32, 64, 3, groups=4),
        nn.ConvTranspose2d(64, 32, 2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
    )


def build_model(name: str, device: torch.device) -> nn.Module:
    """An MMDetection model from its config, without pretrained weights
    (``tiny``: :func:`tiny_model`)."""
    if name == 'tiny':
        return tiny_model().to(device)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(config_path(MODEL_CONFIGS.get(name, name)))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    return model.to(device)


def _sgd(model: nn.Module, **kwargs) -> torch.optim.Optimizer:
    cfg = dict(type='OptimWrapper', optimizer=dict(type='SGD', **HYPER, **kwargs))
    return DefaultOptimWrapperConstructor(cfg)(model).optimizer


def _sgdgc(model: nn.Module, gc: bool = True, **kwargs) -> torch.optim.Optimizer:
    cfg = dict(type='OptimWrapper', optimizer=dict(type='SGDGC', **HYPER, **kwargs))
    opt = GCOptimWrapperConstructor(cfg, dict(gc_layers=('conv', 'fc')))(model)
    if not gc:
        for group in opt.optimizer.param_groups:
            group['gc'] = False
    return opt.optimizer


def _authors(model: nn.Module, **kwargs) -> Callable[[], None]:
    """The authors' SGD_GC: per tensor, decay into the gradient, then GC of
    every ndim > 1 tensor over all dims but 0; then torch's SGD (no decay)."""
    opt = _sgd(model, **kwargs)
    for group in opt.param_groups:
        group['weight_decay'] = 0.0
    params = [p for group in opt.param_groups for p in group['params']]
    wd = HYPER['weight_decay']

    def step() -> None:
        for p in params:
            g = p.grad
            if g is None:  # frozen (the default constructor keeps them)
                continue
            g.add_(p, alpha=wd)
            if g.dim() > 1:
                g.add_(-g.mean(dim=tuple(range(1, g.dim())), keepdim=True))
        opt.step()

    return step


def variants(model: nn.Module, device: torch.device) -> dict[str, Callable]:
    """Each variant's step function (optimizers built now, state empty)."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the constructors' per-parameter notes
    try:
        return _variants(model, device)
    finally:
        logger.setLevel(level)


def _variants(model: nn.Module, device: torch.device) -> dict[str, Callable]:
    fused = baseline_name(device) == 'SGD fused'
    steps = {
        'SGD fused': _sgd(model, fused=True).step if fused else None,
        'SGD foreach': _sgd(model, foreach=True).step,
        'SGD for-loop': _sgd(model, foreach=False).step,
        'authors GC + SGD for-loop': _authors(model, foreach=False),
        'authors GC + SGD fused': _authors(model, fused=True) if fused else None,
        'SGDGC for-loop': _sgdgc(model, foreach=False).step,
        'SGDGC foreach': _sgdgc(model, foreach=True).step,
        'SGDGC fused': _sgdgc(model, fused=True).step if fused else None,
        'SGDGC default': _sgdgc(model).step,
        # with GC off, SGDGC's default path hands every CPU tensor to torch's
        # fused SGD where torch has one for the CPU (other devices: torch's default)
        'SGDGC default, GC off': _sgdgc(model, gc=False).step,
    }
    return {name: step for name, step in steps.items() if step is not None}


def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    if device.type == 'cuda':
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def cuda_time(step: Callable[[], None]) -> float:
            torch.cuda.synchronize(device)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end)

        return cuda_time

    def cpu_time(step: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        step()
        return (time.perf_counter() - t0) * 1e3

    return cpu_time


def _peak_extra(step: Callable[[], None], device: torch.device) -> int:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with AllocationTracker() as tracker:
        step()
    return tracker.peak


def count_ops(step: Callable[[], None], device: torch.device) -> tuple[int, int, int | None]:
    """The aten ops one call of ``step`` runs (``torch.profiler``'s
    ``aten::`` events: top-level ones, and all, nested included) and, on
    CUDA, the GPU kernels it launches."""
    activities = [ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        step()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
    top, nested, kernels = 0, 0, 0
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            kernels += 1
        elif event.name.startswith('aten::'):
            nested += 1
            parent = event.cpu_parent
            while parent is not None and not parent.name.startswith('aten::'):
                parent = parent.cpu_parent
            top += parent is None
    return top, nested, kernels if device.type == 'cuda' else None


def _path_note(name: str, device: torch.device) -> str:
    if name != 'SGDGC default':
        return ''
    if device.type == 'cpu' and cpu_kernel.load_cpu_kernel() is not None:
        return 'mmgc CPU kernel'
    if baseline_name(device) == 'SGD fused':
        return "torch's fused SGD + per-unit means"
    return "torch's default kernel + per-unit means"


def bench_model(
    name: str, device: torch.device, iters: int, warmup: int
) -> tuple[list[Result], dict]:
    """Time every variant on one model; return the results and model facts."""
    logger = MMLogger.get_current_instance()
    model = build_model(name, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator(device=device).manual_seed(0)
    for p in trainable:
        p.grad = torch.randn(p.shape, generator=gen, device=device, dtype=p.dtype)
    numel = sum(p.numel() for p in trainable)
    facts = dict(tensors=len(trainable), numel=numel, grad_bytes=numel * 4)
    steps = variants(model, device)
    results = {key: Result(key, note=_path_note(key, device)) for key in steps}
    timer = _timer(device)
    # first call: buffers are allocated (and the kernel loaded) here
    first = {key: timer(step) for key, step in steps.items()}
    facts['first_step_ms'] = first
    for _ in range(warmup - 1):
        for step in steps.values():
            step()
    print_log(
        f'{name} on {device}: {len(trainable)} tensors, {numel / 1e6:.1f} M '
        f'parameters; {len(steps)} variants x {iters} steps',
        logger=logger,
    )
    progress = ProgressBar(iters)
    for _ in range(iters):
        for key, step in steps.items():  # take turns: same load for all
            results[key].times_ms.append(timer(step))
        progress.update()
    sys.stdout.write('\n')
    for key, step in steps.items():
        results[key].peak_extra_bytes = _peak_extra(step, device)
        counts = count_ops(step, device)
        results[key].aten_ops, results[key].all_aten_ops, results[key].gpu_kernels = counts
    return list(results.values()), facts


def format_table(model_results: dict[str, tuple[list[Result], dict]], device: torch.device) -> str:
    """A Markdown table: one row per variant, one column block per model."""
    names = list(model_results)
    ops = 'aten ops (all) / GPU kernels' if device.type == 'cuda' else 'aten ops (all)'
    head = '| variant |' + ''.join(f' {m}: ms | ratio | extra MB (x grad) | {ops} |' for m in names)
    sep = '|---|' + '---:|---:|---:|---:|' * len(names)
    rows = [head, sep]
    variant_names = [r.name for r in model_results[names[0]][0]]
    for vname in variant_names:
        cells = []
        for m in names:
            results, facts = model_results[m]
            by_name = {r.name: r for r in results}
            r, base = by_name[vname], by_name[baseline_name(device)]
            extra = r.peak_extra_bytes / 2**20
            rel = r.peak_extra_bytes / facts['grad_bytes']
            count = f'{r.aten_ops} ({r.all_aten_ops})'
            count += '' if r.gpu_kernels is None else f' / {r.gpu_kernels}'
            cells.append(
                f' {r.median_ms:.1f} | {r.median_ms / base.median_ms:.2f} | '
                f'{extra:.0f} ({rel:.2f}) | {count} |'
            )
        label = vname + (f' [{by_name[vname].note}]' if by_name[vname].note else '')
        rows.append(f'| {label} |' + ''.join(cells))
    return '\n'.join(rows)


def plot(
    model_results: dict[str, tuple[list[Result], dict]],
    device: torch.device,
    path: Path,
) -> None:
    """Horizontal bars of the median step time, one panel per model."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(model_results), figsize=(6 * len(model_results), 4.5), squeeze=False
    )
    for ax, (model, (results, _)) in zip(axes[0], model_results.items()):
        labels = [r.name for r in results][::-1]
        values = [r.median_ms for r in results][::-1]
        colours = [
            'tab:green'
            if n.startswith('SGDGC default')
            else 'tab:red'
            if n.startswith('authors')
            else 'tab:blue'
            if n.startswith('SGD ')
            else 'tab:gray'
            for n in labels
        ]
        ax.barh(labels, values, color=colours)
        ax.set_xlabel(f'ms per step ({device.type}, median)')
        ax.set_title(model)
        for y, v in enumerate(values):
            ax.text(v, y, f' {v:.1f}', va='center', fontsize=8)
    fig.suptitle(f'one optimizer step, {device.type}, {torch.get_num_threads()} torch threads')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--models',
        nargs='+',
        default=['mask_rcnn_r50', 'mask_rcnn_x101_64x4d'],
        help=f'names ({", ".join(MODEL_CONFIGS)}, tiny) or config paths',
    )
    parser.add_argument('--iters', type=int, default=30, help='timed steps')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps')
    parser.add_argument(
        '--device',
        nargs='+',
        default=None,
        help='cpu and/or cuda; default: cpu, plus cuda when available',
    )
    parser.add_argument(
        '--threads', type=int, default=None, help='torch CPU threads (default: all)'
    )
    parser.add_argument('--out-dir', default='work_dirs/benchmarks')
    parser.add_argument(
        '--output', default=None, help="also write every device's Markdown table to this file"
    )
    parser.add_argument('--no-plot', action='store_true', help='skip the bar charts')
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 1:
        parser.error(f'--iters and --warmup must be >= 1; got {args.iters}, {args.warmup}')
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    MMLogger.get_instance('mmgc_bench', log_level='INFO')
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report, texts = {}, []
    for dev_name in devices:
        device = torch.device(dev_name)
        if device.type == 'cuda' and not torch.cuda.is_available():
            raise SystemExit(f'--device {dev_name}: CUDA is not available')
        lines = [f'## One optimizer step on {device.type}']
        if device.type == 'cpu':
            try:
                seconds = cpu_kernel.time_cpu_kernel_compile()
                compile_note = f'{seconds:.2f} s (g++, from scratch)'
            except RuntimeError as err:
                compile_note = f'failed: {err}'
            build = cpu_kernel.cpu_kernel_build()
            lines.append(
                f'CPU kernel compile cost (first use on a machine, cached '
                f'after): {compile_note}; kernel loaded: {build.library is not None}'
                f'; torch threads: {torch.get_num_threads()}'
            )
        model_results = {}
        for model in args.models:
            model_results[model] = bench_model(model, device, args.iters, args.warmup)
        table = format_table(model_results, device)
        baseline = baseline_name(device)
        for model, (_, facts) in model_results.items():
            first = facts['first_step_ms']
            lines.append(
                f'{model}: {facts["tensors"]} trainable tensors, '
                f'{facts["numel"] / 1e6:.1f} M parameters; first step (buffers '
                f'allocated, kernel loaded) ms: {baseline} {first[baseline]:.1f}, '
                f'SGDGC default {first["SGDGC default"]:.1f}'
            )
            by_name = {r.name: r for r in model_results[model][0]}
            ours = by_name['SGDGC default'].median_ms
            lines.append(
                f'{model}: SGDGC default is '
                + ', '.join(
                    f'{by_name[n].median_ms / ours:.2f}x faster than {n}'
                    for n in by_name
                    if n.startswith('authors')
                )
            )
        measured = 'CUDA allocator' if device.type == 'cuda' else 'aten allocations'
        lines.append(
            f'Median of {args.iters} steps after {args.warmup} warm-up steps; '
            f'ratio = time / {baseline} (no GC); extra = peak bytes allocated '
            f'during a steady-state step ({measured}), '
            f'x grad = in units of all trainable gradients; ops of one '
            f'steady-state step (torch.profiler: top-level aten ops, in brackets '
            f'all aten ops, nested ones included'
            f'{"; CUDA kernels launched" if device.type == "cuda" else ""}).'
        )
        text = '\n\n'.join(lines[:1] + [table] + lines[1:])
        print_log('\n' + text, logger='current')
        (out_dir / f'step_{device.type}.md').write_text(text + '\n')
        if not args.no_plot:
            plot(model_results, device, out_dir / f'step_{device.type}.png')
        report[device.type] = model_results
        texts.append(text)
        print_log(f'wrote {out_dir}/step_{device.type}.md', logger='current')
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text('\n\n'.join(texts) + '\n')
        print_log(f'wrote {output}', logger='current')
    return report


if __name__ == '__main__':
    main()
