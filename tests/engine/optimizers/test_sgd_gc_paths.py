"""Every SGDGC path (mmgc's CPU kernel, the generic path on torch's fused,
foreach and for-loop kernels, the differentiable path) against the float64
references, with coupled and decoupled decay; the generic path's memory; the
paper's Eq. 3 invariant and what decoupled decay makes of it."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mmgc import SGDGC
from mmgc.engine.optimizers.sgd_gc import torch_fused_sgd_on_cpu
from mmgc.ops.cpu_kernel import cpu_kernel_supports
from tests.reference import ReferenceSGDGC, ReferenceSGDWGC

NEEDS_CPU_FUSED = pytest.mark.skipif(
    not torch_fused_sgd_on_cpu(), reason=f'torch {torch.__version__} has no fused SGD for the CPU'
)


class Plain(torch.Tensor):
    """A tensor subclass without ``__torch_dispatch__`` (mmgc's kernel must not
    take it; torch's ops keep the type)."""


#: How the tensors are handed to SGDGC; 'default-*' leave foreach/fused unset.
PATHS = [
    pytest.param(dict(foreach=False), 'plain', id='for-loop'),
    pytest.param(dict(foreach=True), 'plain', id='foreach'),
    pytest.param(dict(fused=True), 'plain', id='fused', marks=NEEDS_CPU_FUSED),
    pytest.param(dict(), 'plain', id='default-kernel'),  # mmgc's kernel (coupled decay)
    # the default path's generic route: torch's fused SGD where it runs on the
    # CPU (channels-last conv weights), else torch's own choice (a
    # non-contiguous gradient, a tensor subclass)
    pytest.param(dict(), 'channels-last', id='default-generic-channels-last'),
    pytest.param(dict(), 'strided-grad', id='default-generic-strided'),
    pytest.param(dict(), 'subclass', id='default-generic-subclass'),
    pytest.param(dict(differentiable=True), 'plain', id='differentiable'),
]
HYPER = [
    dict(momentum=0.0, weight_decay=0.0),
    dict(momentum=0.0, weight_decay=0.05, maximize=True),
    dict(momentum=0.9, weight_decay=0.01),
    dict(momentum=0.9, weight_decay=0.01, nesterov=True),
    dict(momentum=0.9, dampening=0.3, weight_decay=1e-3),
    dict(momentum=0.5, weight_decay=0.01, maximize=True, nesterov=True),
    dict(momentum=1e-5, dampening=0.2, weight_decay=0.01),  # buffer corrected after the step
    dict(momentum=0.9, weight_decay=0.01, tensor_lr=True),
]
# (shape, out_dim): conv, deconv (dim 1), linear, a bias (not centralized)
SHAPES = [((6, 4, 3, 3), 0), ((3, 5, 2, 2), 1), ((5, 7), 0), ((6,), None)]


def _hyper_id(hyper):
    return '-'.join(f'{k}={v}' for k, v in hyper.items())


def _as(kind, tensor):
    if kind == 'subclass':
        return tensor.as_subclass(Plain)
    if kind == 'channels-last' and tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def _grad(kind, values):
    if kind == 'strided-grad' and values.dim() > 1:  # same values, not contiguous
        return values.transpose(0, -1).contiguous().transpose(0, -1)
    return _as(kind, values.clone())


@pytest.mark.parametrize('decoupled', [False, True], ids=['l2', 'decoupled'])
@pytest.mark.parametrize('hyper', HYPER, ids=_hyper_id)
@pytest.mark.parametrize(('impl', 'kind'), PATHS)
def test_path_matches_reference(impl, kind, hyper, decoupled):
    hyper = dict(hyper)
    tensor_lr = hyper.pop('tensor_lr', False)
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s, _ in SHAPES]
    dims = [d for _, d in SHAPES]
    params = [nn.Parameter(_as(kind, w.clone()), requires_grad=False) for w in start]
    lr = torch.tensor(0.1, dtype=torch.float64) if tensor_lr else 0.1
    weight_decay = hyper.pop('weight_decay')
    wd = torch.tensor(weight_decay, dtype=torch.float64) if tensor_lr else weight_decay
    groups = [dict(params=[p], gc=d is not None, gc_dim=d or 0) for p, d in zip(params, dims)]
    opt = SGDGC(groups, lr=lr, weight_decay=wd, decoupled_weight_decay=decoupled, **hyper, **impl)
    reference = ReferenceSGDWGC if decoupled else ReferenceSGDGC
    ref = reference(start, dims, lr=0.1, weight_decay=weight_decay, **hyper)
    for step in range(4):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s, _ in SHAPES]
        if step == 0:  # the deconv's first gradient comes later: buffers born in step 2
            grads[1] = None
        for p, g in zip(params, grads):
            p.grad = None if g is None else _grad(kind, g)
        kept = [None if p.grad is None else p.grad.clone() for p in params]
        opt.step()
        ref.step(grads)
        for p, before in zip(params, kept):  # p.grad is left as it was
            assert (p.grad is None) == (before is None)
            assert p.grad is None or torch.equal(p.grad, before)
        for p, expected in zip(params, ref.weights):
            assert_close(p.detach().as_subclass(torch.Tensor), expected, rtol=1e-12, atol=1e-12)
    if kind == 'subclass':
        assert all(type(p) is Plain for p in params)


def test_subclass_takes_the_generic_path_bit_for_bit():
    """A ``class T(torch.Tensor)`` weight is not handed to mmgc's kernel: the
    default step is the generic path on torch's for-loop, to the bit."""
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(16, 8, 3, 3, generator=gen)
    sub = nn.Parameter(start.clone().as_subclass(Plain))
    plain = nn.Parameter(start.clone())
    assert not cpu_kernel_supports(sub, sub.detach().clone(), None, False)
    assert cpu_kernel_supports(plain, plain.detach().clone(), None, False)
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    ours, loop = SGDGC([sub], **hyper), SGDGC([plain], **hyper, foreach=False)
    for _ in range(3):
        grad = torch.randn(start.shape, generator=gen)
        sub.grad, plain.grad = grad.clone().as_subclass(Plain), grad.clone()
        ours.step()
        loop.step()
    assert type(sub) is Plain and type(ours.state[sub]['momentum_buffer']) is Plain
    assert torch.equal(sub.detach().as_subclass(torch.Tensor), plain.detach())


@pytest.mark.parametrize(
    'view',
    [
        lambda t: t._neg_view(),  # negative bit: the memory holds -values
        lambda t: torch.empty(2 * t.shape[0], *t.shape[1:])[::2].copy_(t),  # strided
    ],
    ids=['neg-bit', 'strided'],
)
def test_kernel_refuses_views_it_cannot_address(view):
    w = torch.randn(4, 3)
    assert cpu_kernel_supports(w, torch.randn(4, 3), None, False)
    assert not cpu_kernel_supports(w, view(torch.randn(4, 3)), None, False)
    assert not cpu_kernel_supports(w, torch.randn(4, 3), view(torch.randn(4, 3)), False)


class _LargestAllocation(TorchDispatchMode):
    """Bytes of the storages aten ops allocate: the largest, and the peak of
    those alive at once."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.live = 0
        self.peak = 0
        self._sizes = {}

    def _free(self, key):
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        kwargs = kwargs or {}
        leaves = tree_flatten((args, kwargs))[0]
        inputs = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage().data_ptr()
            if key == 0 or key in inputs or key in self._sizes:
                continue
            size = t.untyped_storage().nbytes()
            self._sizes[key] = size
            self.largest = max(self.largest, size)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, key)
        return out


def _steady_step_allocations(make_optimizer, channels_last=False):
    """Allocations of the third step (buffers exist) on four conv/FC weights."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(16, 32, 3), nn.Conv2d(32, 32, 3), nn.Linear(64, 48), nn.Linear(48, 40)
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    weights = [m.weight for m in model]
    opt = make_optimizer(weights)
    for step in range(3):
        for w in weights:
            w.grad = torch.randn_like(w)
        if step < 2:
            opt.step()
    with _LargestAllocation() as tracker:
        opt.step()
    return tracker, min(w.numel() * w.element_size() for w in weights)


HYPER_MEMORY = [
    dict(momentum=0.9, weight_decay=1e-4),
    dict(momentum=0.9, weight_decay=1e-4, nesterov=True),
    dict(momentum=0.0, weight_decay=1e-4, maximize=True),
    dict(momentum=0.9, weight_decay=1e-4, decoupled_weight_decay=True),
]


@pytest.mark.parametrize('hyper', HYPER_MEMORY, ids=_hyper_id)
@pytest.mark.parametrize(
    'impl',
    [
        pytest.param(dict(fused=True), id='fused', marks=NEEDS_CPU_FUSED),
        # channels-last conv weights are not the kernel's: the default hands
        # them to torch's fused SGD
        pytest.param(dict(channels_last=True), id='default-channels-last', marks=NEEDS_CPU_FUSED),
    ],
)
def test_generic_path_on_fused_sgd_allocates_no_full_size_tensor(impl, hyper):
    """With torch's fused SGD the generic path allocates only per-unit means:
    no tensor as large as the smallest centralized weight."""
    impl = dict(impl)
    channels_last = impl.pop('channels_last', False)
    tracker, smallest = _steady_step_allocations(
        lambda ws: SGDGC(ws, lr=0.1, **hyper, **impl), channels_last=channels_last
    )
    assert tracker.largest < smallest / 8, (tracker.largest, smallest)


@pytest.mark.parametrize('hyper', HYPER_MEMORY, ids=_hyper_id)
@pytest.mark.parametrize('foreach', [False, True], ids=['for-loop', 'foreach'])
def test_generic_path_peak_memory_is_torch_sgds(foreach, hyper):
    """On torch's for-loop and foreach kernels the step's peak is what
    ``torch.optim.SGD`` with the same kernel allocates (its own temporaries
    for the decay), plus the per-unit means: no copy of the gradients."""
    ours, _ = _steady_step_allocations(lambda ws: SGDGC(ws, lr=0.1, foreach=foreach, **hyper))
    torch_hyper = {k: v for k, v in hyper.items() if k != 'decoupled_weight_decay'}
    if hyper.get('decoupled_weight_decay'):
        torch_hyper['weight_decay'] = 0.0
    theirs, smallest = _steady_step_allocations(
        lambda ws: torch.optim.SGD(ws, lr=0.1, foreach=foreach, **torch_hyper)
    )
    assert ours.peak <= theirs.peak + smallest / 8, (ours.peak, theirs.peak)


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 2),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 5),
    )


def _train(model, opt, steps):
    for step in range(steps):
        x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


INVARIANT_PATHS = [
    pytest.param(dict(foreach=False), id='for-loop'),
    pytest.param(dict(foreach=True), id='foreach'),
    pytest.param(dict(fused=True), id='fused', marks=NEEDS_CPU_FUSED),
    pytest.param(dict(), id='default'),
]


@pytest.mark.parametrize('decoupled', [False, True], ids=['l2', 'decoupled'])
@pytest.mark.parametrize('impl', INVARIANT_PATHS)
def test_weight_sums(impl, decoupled):
    """L2 decay (Eq. 3): each output unit's weight sum stays at its start.
    Decoupled decay: P removes the gradient's part of the sum and the decay
    scales it, e^T w_t = (1 - lr wd)^t e^T w_0."""
    model = _conv_net()
    conv, deconv, linear = model[0], model[2], model[4]
    lr, wd, steps = 0.1, 0.05, 8
    opt = SGDGC(
        [
            dict(params=[conv.weight, linear.weight]),
            dict(params=[deconv.weight], gc_dim=1),
            dict(params=[conv.bias, deconv.bias, linear.bias], gc=False),
        ],
        lr=lr,
        momentum=0.9,
        weight_decay=wd,
        nesterov=True,
        decoupled_weight_decay=decoupled,
        **impl,
    )
    sums = [(conv.weight, (1, 2, 3)), (deconv.weight, (0, 2, 3)), (linear.weight, (1,))]
    before = [w.detach().double().sum(dims) for w, dims in sums]
    conv_start = conv.weight.detach().clone()
    _train(model, opt, steps)
    scale = (1 - lr * wd) ** steps if decoupled else 1.0
    for (w, dims), start in zip(sums, before):
        after = w.detach().double().sum(dims)
        # float32 rounding of each updated element, summed over a unit, per step
        bound = steps * torch.finfo(torch.float32).eps * w.detach().abs().double().sum(dims)
        assert torch.all((after - scale * start).abs() <= bound), after - scale * start
    assert (conv.weight.detach() - conv_start).abs().max() > 1e-3  # it trained


@pytest.mark.parametrize('hyper', HYPER[2:7], ids=_hyper_id)
@pytest.mark.parametrize(('impl', 'kind'), PATHS)
def test_inherited_uncentralized_buffer_is_kept(impl, kind, hyper):
    """A buffer that is not centralized (e.g. mapped from a baseline SGD run)
    enters the momentum as it is: b = mu b + (1 - tau) P r, on every path."""
    gen = torch.Generator().manual_seed(5)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s, _ in SHAPES]
    inherited = [torch.randn(s, generator=gen, dtype=torch.float64) for s, _ in SHAPES]
    dims = [d for _, d in SHAPES]
    params = [nn.Parameter(_as(kind, w.clone()), requires_grad=False) for w in start]
    groups = [dict(params=[p], gc=d is not None, gc_dim=d or 0) for p, d in zip(params, dims)]
    opt = SGDGC(groups, lr=0.1, **hyper, **impl)
    ref = ReferenceSGDGC(start, dims, lr=0.1, **hyper)
    for p, b in zip(params, inherited):
        opt.state[p]['momentum_buffer'] = _as(kind, b.clone())
    ref.buffers = [b.clone() for b in inherited]
    for _ in range(2):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s, _ in SHAPES]
        for p, g in zip(params, grads):
            p.grad = _grad(kind, g)
        opt.step()
        ref.step(grads)
    for p, expected in zip(params, ref.weights):
        assert_close(p.detach().as_subclass(torch.Tensor), expected, rtol=1e-12, atol=1e-12)
    for p, expected in zip(params, ref.buffers):
        buffer = opt.state[p]['momentum_buffer'].as_subclass(torch.Tensor)
        assert_close(buffer, expected, rtol=1e-12, atol=1e-12)
