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

Steps are timed with ``torch.utils.benchmark.Timer`` (which synchronizes
CUDA). Memory is measured on CUDA with ``torch.cuda.max_memory_allocated``; on
the CPU (torch keeps no CPU allocator statistics) by a ``TorchDispatchMode``
that adds up the storage every aten op allocates and subtracts it when the
tensor is freed. Memory allocated outside aten ops (none in any variant here)
would not be seen.

The parameter groups are the real ones: MMEngine's default constructor for
``SGD`` (MMDetection's own optim_wrapper), :class:`mmgc.GCOptimWrapperConstructor`
with ``gc=dict(layers=('conv', 'fc'))`` for ``SGDGC``. lr 0.02, momentum 0.9, weight
decay 1e-4, as in the 1x schedules.

Writes ``step_<device>.md`` (the table) and ``step_<device>.png`` (a bar
chart) into ``--out-dir``, and with ``--output PATH`` all devices' tables
into one Markdown file. ``--models tiny`` is a small built-in conv net (no
MMDetection model is built), for a run of seconds.

``--host-cost`` measures instead what a CUDA step costs the host, with no GPU,
for the GPU's paths named explicitly (SGDGC ``fused=True`` is what its
default takes on CUDA). Per variant: the aten ops one steady-state step
dispatches, counted with a ``TorchDispatchMode`` on the model's trainable
tensors moved to the meta device (real shapes, no arithmetic; torch's fused
SGD gets a Meta kernel that does nothing, since torch has none); an estimate
of the CUDA kernels they launch (a ``_foreach_*`` / ``_fused_*`` op one
launch per chunk of tensors as torch's ``multi_tensor_apply`` packs them, or
one per tensor where a pair of its tensor lists differs in shape, CUDA's
fallback; any other op one); and the host time of a step
(``torch.utils.benchmark.Timer``, 1 thread; the median of 15 rounds of 20
steps, the variants taking turns) on a CPU skeleton of the same
tensors (same count, ndim and groups, at most 2 elements per dim: the ops
run but do next to no arithmetic).
``--baseline-tree DIR`` adds the SGDGC rows of another checkout's mmgc (e.g.
``git archive HEAD | tar -x -C DIR``), imported as ``mmgc_baseline``, to the
same run: before and after side by side, in both modes. Writes
``host_cost.md``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import math
import statistics
import sys
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
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mmgc  # noqa: E402,F401  (registers SGDGC)
from mmgc._compat import (  # noqa: E402
    skip_fused_sgd_device_check,
    torch_dispatch_mode,
    tree_flatten,
)
from mmgc.engine.optimizers import GCOptimWrapperConstructor  # noqa: E402
from mmgc.engine.optimizers.sgd_gc import (  # noqa: E402
    torch_fused_sgd_on_cpu,
    torch_has_fused_sgd,
)
from mmgc.ops import cpu_kernel  # noqa: E402

TorchDispatchMode = torch_dispatch_mode()

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


def _sgdgc(
    model: nn.Module, gc: bool = True, optimizer_cls: type | None = None, **kwargs
) -> torch.optim.Optimizer:
    """SGDGC on the GC constructor's groups; ``optimizer_cls``: another
    SGDGC class (a baseline tree's) on the same groups."""
    cfg = dict(type='OptimWrapper', optimizer=dict(type='SGDGC', **HYPER, **kwargs))
    opt = GCOptimWrapperConstructor(dict(cfg, gc=dict(layers=('conv', 'fc'))))(model).optimizer
    if optimizer_cls is not None:
        opt = optimizer_cls([dict(g) for g in opt.param_groups], **HYPER, **kwargs)
    if not gc:
        for group in opt.param_groups:
            group['gc'] = False
    return opt


#: The SGDGC class of ``--baseline-tree`` (None: no baseline rows).
BASELINE: dict[str, object] = {}


def load_baseline_tree(root: Path) -> None:
    """Import another checkout's ``mmgc`` (``root/mmgc``) as ``mmgc_baseline``
    and keep its module of SGDGC in :data:`BASELINE`. Its names are taken in
    MMEngine's registries by this mmgc, so it registers nothing."""
    from mmengine.registry import Registry

    def register_nothing(self, name=None, force=False, module=None):
        return module if module is not None else (lambda cls: cls)

    register = Registry.register_module
    Registry.register_module = register_nothing
    try:
        spec = importlib.util.spec_from_file_location(
            'mmgc_baseline',
            root / 'mmgc' / '__init__.py',
            submodule_search_locations=[str(root / 'mmgc')],
        )
        if spec is None:
            raise SystemExit(f'--baseline-tree {root}: no mmgc package there')
        package = importlib.util.module_from_spec(spec)
        sys.modules['mmgc_baseline'] = package
        spec.loader.exec_module(package)
    finally:
        Registry.register_module = register
    BASELINE['module'] = sys.modules['mmgc_baseline.engine.optimizers.sgd_gc']
    BASELINE['root'] = str(root)


def _baseline_cls() -> type | None:
    module = BASELINE.get('module')
    return None if module is None else module.SGDGC


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
    baseline = _baseline_cls()
    if baseline is not None:  # the same variants of --baseline-tree's SGDGC
        steps['SGDGC default [baseline]'] = _sgdgc(model, optimizer_cls=baseline).step
        steps['SGDGC foreach [baseline]'] = _sgdgc(model, optimizer_cls=baseline, foreach=True).step
        if fused:
            steps['SGDGC fused [baseline]'] = _sgdgc(model, optimizer_cls=baseline, fused=True).step
    return {name: step for name, step in steps.items() if step is not None}


def _timer(step: Callable[[], None]) -> Callable[[], float]:
    """One timed call of ``step``, in ms (``torch.utils.benchmark.Timer``,
    which synchronizes CUDA around it)."""
    timer = Timer(stmt='step()', globals=dict(step=step), num_threads=torch.get_num_threads())
    return lambda: timer.timeit(1).median * 1e3


def _peak_extra(step: Callable[[], None], device: torch.device) -> int:
    """The peak of the bytes one call of ``step`` allocates beyond what is
    held before it: CUDA's allocator statistics; on the CPU,
    :class:`AllocationTracker` (torch.profiler's per-op memory is no timeline:
    a free inside ``Optimizer.step`` counts against the step's own scope, at
    its start, so a foreach step's gradient-sized temporary nets to 0; its
    ``export_memory_timeline`` is deprecated in torch 2.13)."""
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
    if not name.startswith('SGDGC default') or 'GC off' in name:
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
    timers = {key: _timer(step) for key, step in steps.items()}
    # first call: buffers are allocated (and the kernel loaded) here
    first = {key: timer() for key, timer in timers.items()}
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
        for key, timer in timers.items():  # take turns: same load for all
            results[key].times_ms.append(timer())
        progress.update()
    sys.stdout.write('\n')
    for key, step in steps.items():
        results[key].peak_extra_bytes = _peak_extra(step, device)
        counts = count_ops(step, device)
        results[key].aten_ops, results[key].all_aten_ops, results[key].gpu_kernels = counts
    return list(results.values()), facts


# ---- the host cost of a CUDA step, measured on the meta device ----

#: torch's ``multi_tensor_apply`` (``ATen/native/cuda/MultiTensorApply.cuh``):
#: tensors per launch by the number of tensor lists, blocks per launch, and
#: elements per block.
_MAX_TENSORS = {1: 110, 2: 64, 3: 48, 4: 36, 5: 30}
_MAX_BLOCKS = 320
_CHUNK = 65536


#: Ops that launch no kernel: markers and allocations (views are found by ``is_view``).
_NO_KERNEL = ('empty', 'empty_like', 'empty_strided', 'lift_fresh')
#: Profiler markers, not ops of the step.
_MARKERS = ('_record_function_enter_new', '_record_function_exit')


def cuda_launches(func, args: tuple, kwargs: dict) -> int:
    """An estimate of the CUDA kernels one aten op launches: a ``_foreach_*``
    or ``_fused_*`` op one per ``multi_tensor_apply`` launch (tensors or
    blocks full), or one per tensor where its tensor lists differ in shape
    (CUDA's fallback runs the op tensor by tensor); any other op one."""
    name = func.overloadpacket.__name__
    if func.is_view or name in _NO_KERNEL:
        return 0
    if not name.startswith(('_foreach_', '_fused_')):
        return 1
    lists = [
        a
        for a in (*args, *kwargs.values())
        if isinstance(a, (list, tuple)) and a and all(isinstance(t, Tensor) for t in a)
    ]
    if not lists:
        return 1
    first = lists[0]
    for other in lists[1:]:
        if len(other) != len(first) or any(
            t.shape != r.shape or t.stride() != r.stride() for t, r in zip(other, first)
        ):
            return len(first)
    depth = min(len(lists), max(_MAX_TENSORS))
    blocks = sum(math.ceil(t.numel() / _CHUNK) for t in first)
    return max(math.ceil(len(first) / _MAX_TENSORS[depth]), math.ceil(blocks / _MAX_BLOCKS), 1)


class OpCounter(TorchDispatchMode):
    """The aten ops dispatched (below autograd: what a device runs; the
    profiler's markers left out), by name, and the CUDA launches they would
    make (:func:`cuda_launches`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, int] = {}
        self.launches = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket.__name__)
        if name not in _MARKERS:
            self.ops[name] = self.ops.get(name, 0) + 1
            self.launches += cuda_launches(func, args, kwargs)
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())


_META_FUSED: list = []


def _meta_fused_sgd() -> bool:
    """Give torch's fused SGD a Meta kernel that does nothing (torch has
    none), and let ``torch.optim.SGD(fused=True)`` take meta tensors (its
    device check is skipped for them:
    :func:`mmgc._compat.skip_fused_sgd_device_check`), so its path runs on
    the meta device; False where this torch has no fused SGD."""
    if not torch_has_fused_sgd():
        return False
    if not _META_FUSED:
        lib = torch.library.Library('aten', 'IMPL')
        for overload in ('_fused_sgd_', '_fused_sgd_.tensor_lr'):
            lib.impl(overload, lambda *args, **kwargs: None, 'Meta')
        _META_FUSED.append(lib)  # the registration lives as long as the library object
        skip_fused_sgd_device_check('meta')
    return True


@dataclass
class HostCost:
    """One variant's host cost of a steady-state step."""

    name: str
    ops: int
    launches: int
    host_ms: float
    top_ops: str


#: Host time: rounds of steps, the variants taking turns; the median round counts.
HOST_ROUNDS, HOST_STEPS = 15, 20


def _skeleton_twin(opt: torch.optim.Optimizer) -> Callable[[], None]:
    """The step of a twin of ``opt`` on CPU tensors of the same count, ndim,
    groups and options, but at most 2 elements per dim: every op runs and
    does next to no arithmetic, so its time is the host's (Python, dispatch)."""
    groups, twins = [], {}
    for group in opt.param_groups:
        params = []
        for p in group['params']:
            if id(p) not in twins:
                twin = nn.Parameter(torch.randn([min(n, 2) for n in p.shape]))
                twin.grad = None if p.grad is None else torch.randn_like(twin)
                twins[id(p)] = twin
            params.append(twins[id(p)])
        groups.append({**group, 'params': params})
    return type(opt)(groups, lr=HYPER['lr']).step


def host_cost(name: str) -> tuple[list[HostCost], dict]:
    """Aten ops and estimated CUDA launches of one steady-state step of each
    GPU path (on the meta device: real shapes, no arithmetic), and its host
    time (on a CPU skeleton of the same tensors, :func:`_skeleton_twin`)."""
    model = build_model(name, torch.device('cpu')).to('meta')
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.grad = torch.empty_like(p)
    fused = _meta_fused_sgd()
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        baseline = _baseline_cls()
        optimizers = {
            'SGD fused': _sgd(model, fused=True) if fused else None,
            'SGD foreach': _sgd(model, foreach=True),
            'SGDGC fused (the CUDA default)': _sgdgc(model, fused=True) if fused else None,
            'SGDGC foreach': _sgdgc(model, foreach=True),
        }
        if baseline is not None:
            if fused:
                optimizers['SGDGC fused (the CUDA default) [baseline]'] = _sgdgc(
                    model, optimizer_cls=baseline, fused=True
                )
            optimizers['SGDGC foreach [baseline]'] = _sgdgc(
                model, optimizer_cls=baseline, foreach=True
            )
        optimizers = {k: v for k, v in optimizers.items() if v is not None}
        twins = {k: _skeleton_twin(opt) for k, opt in optimizers.items()}
    finally:
        logger.setLevel(level)
    counters = {}
    for variant, opt in optimizers.items():
        for _ in range(2):  # momentum buffers exist from here on
            opt.step()
            twins[variant]()
        with OpCounter() as counter:
            opt.step()
        counters[variant] = counter
    # the variants take turns, round by round, so that a change of load hits all alike
    timers = {
        k: Timer(stmt='step()', globals=dict(step=t), num_threads=1) for k, t in twins.items()
    }
    rounds: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(HOST_ROUNDS):
        for variant, timer in timers.items():
            rounds[variant].append(timer.timeit(HOST_STEPS).mean * 1e3)
    results = []
    for variant, counter in counters.items():
        top = sorted(counter.ops.items(), key=lambda kv: -kv[1])[:4]
        top_ops = ', '.join(f'{op} {n}' for op, n in top)
        host = statistics.median(rounds[variant])
        results.append(HostCost(variant, counter.total, counter.launches, host, top_ops))
    weights = sum(p.ndim > 1 for p in trainable)
    facts = dict(tensors=len(trainable), weights=weights, fused_check=_fused_check_cost())
    return results, facts


def _fused_check_cost() -> dict[str, float]:
    """Microseconds per call of ``torch_has_fused_sgd`` (the CUDA default
    path asks it once per tensor per step), here and in the baseline."""
    checks = {'this tree': torch_has_fused_sgd}
    module = BASELINE.get('module')
    if module is not None:
        checks['baseline'] = module.torch_has_fused_sgd
    return {
        k: Timer('f()', globals=dict(f=f)).blocked_autorange(min_run_time=0.5).median * 1e6
        for k, f in checks.items()
    }


def format_host_cost(name: str, results: list[HostCost], facts: dict) -> str:
    lines = [
        f'### Host cost of one CUDA step: {name} ({facts["tensors"]} trainable tensors, '
        f'{facts["weights"]} of them conv/FC weights): ops on the meta device, host '
        f'time on a CPU skeleton of the same tensors (1 thread)',
        '',
        '| variant | aten ops | est. CUDA launches | host ms | most frequent ops |',
        '|---|---:|---:|---:|---|',
    ]
    for r in results:
        lines.append(f'| {r.name} | {r.ops} | {r.launches} | {r.host_ms:.2f} | {r.top_ops} |')
    per_call = facts['fused_check']
    cost = ', '.join(
        f'{where} {us:.2f} us a call, {us * facts["tensors"] / 1e3:.2f} ms a step'
        for where, us in per_call.items()
    )
    lines += [
        '',
        f'torch_has_fused_sgd(), asked once per tensor per step by the default path on '
        f'CUDA tensors (not on meta, so not in the host ms above): {cost}.',
    ]
    if BASELINE:
        lines.append(f'[baseline]: the SGDGC of {BASELINE["root"]}, in the same run.')
    return '\n'.join(lines)


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
    parser.add_argument(
        '--host-cost',
        action='store_true',
        help='measure the host cost of a CUDA step on the meta device instead (no GPU needed)',
    )
    parser.add_argument(
        '--baseline-tree',
        default=None,
        help="another checkout's root whose SGDGC rows join the same run (before/after)",
    )
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 1:
        parser.error(f'--iters and --warmup must be >= 1; got {args.iters}, {args.warmup}')
    return args


def _compile_line() -> str:
    """The CPU kernel's compile cost and whether it loaded."""
    try:
        seconds = cpu_kernel.time_cpu_kernel_compile()
        compile_note = f'{seconds:.2f} s (g++, from scratch)'
    except RuntimeError as err:
        compile_note = f'failed: {err}'
    build = cpu_kernel.cpu_kernel_build()
    return (
        f'CPU kernel compile cost (first use on a machine, cached '
        f'after): {compile_note}; kernel loaded: {build.library is not None}'
        f'; torch threads: {torch.get_num_threads()}'
    )


def _model_lines(model: str, results: tuple, baseline: str) -> list[str]:
    """The first-step cost and the ratio against the authors' optimizers."""
    rows, facts = results
    first = facts['first_step_ms']
    by_name = {r.name: r for r in rows}
    ours = by_name['SGDGC default'].median_ms
    ratios = ', '.join(
        f'{by_name[n].median_ms / ours:.2f}x faster than {n}'
        for n in by_name
        if n.startswith('authors')
    )
    return [
        f'{model}: {facts["tensors"]} trainable tensors, '
        f'{facts["numel"] / 1e6:.1f} M parameters; first step (buffers '
        f'allocated, kernel loaded) ms: {baseline} {first[baseline]:.1f}, '
        f'SGDGC default {first["SGDGC default"]:.1f}',
        f'{model}: SGDGC default is {ratios}',
    ]


def bench_device(device: torch.device, args: argparse.Namespace, out_dir: Path) -> tuple:
    """Every model on ``device``: its results and the report's section."""
    lines = [f'## One optimizer step on {device.type}']
    if device.type == 'cpu':
        lines.append(_compile_line())
    model_results = {m: bench_model(m, device, args.iters, args.warmup) for m in args.models}
    baseline = baseline_name(device)
    for model, results in model_results.items():
        lines += _model_lines(model, results, baseline)
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
    text = '\n\n'.join(lines[:1] + [format_table(model_results, device)] + lines[1:])
    print_log('\n' + text, logger='current')
    (out_dir / f'step_{device.type}.md').write_text(text + '\n')
    if not args.no_plot:
        plot(model_results, device, out_dir / f'step_{device.type}.png')
    print_log(f'wrote {out_dir}/step_{device.type}.md', logger='current')
    return model_results, text


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    MMLogger.get_instance('mmgc_bench', log_level='INFO')
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.baseline_tree:
        load_baseline_tree(Path(args.baseline_tree).resolve())
    if args.host_cost:
        texts = [format_host_cost(m, *host_cost(m)) for m in args.models]
        text = f'## Host cost of a CUDA step (torch {torch.__version__})\n\n' + '\n\n'.join(texts)
        print_log('\n' + text, logger='current')
        (out_dir / 'host_cost.md').write_text(text + '\n')
        if args.output:
            Path(args.output).write_text(text + '\n')
        return {}
    report, texts = {}, []
    for dev_name in devices:
        device = torch.device(dev_name)
        if device.type == 'cuda' and not torch.cuda.is_available():
            raise SystemExit(f'--device {dev_name}: CUDA is not available')
        report[device.type], text = bench_device(device, args, out_dir)
        texts.append(text)
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text('\n\n'.join(texts) + '\n')
        print_log(f'wrote {output}', logger='current')
    return report


if __name__ == '__main__':
    main()
