"""GC on a GPU: every SGDGC path and GC through MMEngine's ``AmpOptimWrapper``,
each against the float64 reference (``tests/reference.py``).

Each test runs once per device: ``cuda`` (marked ``cuda``; skipped, with the
reason, where torch sees no GPU) and ``cpu``, its counterpart through the same
code, so CI runs every line that a GPU will. ``tools/check_gpu.sh`` runs the
``cuda`` ones on a GPU machine (``pytest -m cuda``) and the CPU ones with
``--device cpu``.

On the CPU, MMEngine's ``AmpOptimWrapper`` refuses to be built (it asserts an
accelerator), so the CPU counterpart builds the same optimizer through the same
constructor and runs ``AmpOptimWrapper``'s real ``backward``/``step`` over
torch's CPU ``GradScaler``; on CUDA the wrapper is built from its config.
"""

from __future__ import annotations

import functools

import pytest
import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper, build_optim_wrapper
from torch import nn
from torch.testing import assert_close

import mmgc  # noqa: F401  (registers SGDGC and GCOptimWrapperConstructor)
from mmgc import SGDGC
from mmgc.engine.optimizers.sgd_gc import torch_fused_sgd_on_cpu, torch_has_fused_sgd
from tests.reference import ReferenceAdamGC, ReferenceSGDGC

DEVICES = [pytest.param('cuda', marks=pytest.mark.cuda), 'cpu']
#: a power of two, so scaling and unscaling are exact
SCALE = 2.0**10
WD = 1e-2


class _Net(nn.Module):
    """A conv, a transposed conv (output units along dim 1) and an FC layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.deconv = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = torch.relu(self.deconv(x))
        return self.fc(x.flatten(1))


def _net(device: str) -> _Net:
    torch.manual_seed(0)
    return _Net().to(device)


def _out_dims(model: nn.Module) -> list[int | None]:
    """Each parameter's output-unit dim by module type (None: not centralized),
    written here independently of mmgc's selection."""
    dims = []
    for module in model.modules():
        for name, _ in module.named_parameters(recurse=False):
            if name != 'weight':
                dims.append(None)
            elif isinstance(module, nn.ConvTranspose2d):
                dims.append(1)
            else:
                dims.append(0)
    return dims


def _weight_sums(model: nn.Module) -> list[torch.Tensor]:
    """Each output unit's weight sum (what Eq. 3 keeps constant)."""
    return [
        model.conv.weight.detach().double().sum(dim=(1, 2, 3)).cpu(),
        model.deconv.weight.detach().double().sum(dim=(0, 2, 3)).cpu(),
        model.fc.weight.detach().double().sum(dim=1).cpu(),
    ]


def _has_fused_sgd(device: str) -> bool:
    return torch_fused_sgd_on_cpu() if device == 'cpu' else torch_has_fused_sgd()


@functools.cache
def _has_fused_adam(device: str, name: str) -> bool:
    """Whether this torch's fused ``name`` (Adam, AdamW) runs on ``device``
    (tried on one element)."""
    param = torch.zeros(1, device=device, requires_grad=True)
    try:
        opt = getattr(torch.optim, name)([param], lr=1.0, fused=True)
        param.grad = torch.ones_like(param)
        opt.step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return bool(param.item() != 0.0)


@functools.cache
def _has_autocast(device: str, dtype: torch.dtype) -> bool:
    """Whether autocast to ``dtype`` works on ``device`` here (torch 2.1 has
    no float16 autocast on the CPU)."""
    if device == 'cuda' and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return False
    a = torch.ones(2, 2, device=device)
    try:
        with torch.autocast(device, dtype=dtype):
            return (a @ a).dtype == dtype
    except RuntimeError:
        return False


def _skip_without(device: str, *, path: dict | None = None, dtype=None, adam=None) -> None:
    """A real skip where this torch lacks the feature a case needs (``adam``:
    the name of a fused Adam-family optimizer the case uses)."""
    if path and path.get('fused') and not _has_fused_sgd(device):
        pytest.skip(f'torch {torch.__version__} has no fused SGD for {device}')
    if adam and not _has_fused_adam(device, adam):
        pytest.skip(f'torch {torch.__version__} has no fused {adam} for {device}')
    if dtype is not None and not _has_autocast(device, dtype):
        pytest.skip(f'torch {torch.__version__} has no {dtype} autocast on {device}')
    if dtype is not None and device == 'cpu' and not hasattr(torch.amp, 'GradScaler'):
        pytest.skip(f'torch {torch.__version__} has no CPU GradScaler (torch.amp.GradScaler)')


PATHS = [
    pytest.param(dict(), id='default'),
    pytest.param(dict(foreach=True), id='foreach'),
    pytest.param(dict(foreach=False), id='for-loop'),
    pytest.param(dict(fused=True), id='fused'),
]
HYPER = [
    pytest.param(dict(momentum=0.9, weight_decay=WD), id='momentum-decay'),
    pytest.param(dict(momentum=0.9, weight_decay=WD, nesterov=True), id='nesterov'),
    pytest.param(dict(momentum=0.5, dampening=0.2, weight_decay=WD, maximize=True), id='damp-max'),
    pytest.param(dict(momentum=0.0, weight_decay=WD), id='plain'),
]


@pytest.mark.parametrize('hyper', HYPER)
@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('device', DEVICES)
def test_sgdgc_paths_match_reference_and_keep_weight_sums(device, path, hyper):
    """Five steps of SGDGC (gc_dim 1 for the transposed conv) against the
    reference, and Eq. 3: each output unit's weight sum stays where it began."""
    _skip_without(device, path=path)
    model = _net(device)
    params, dims = list(model.parameters()), _out_dims(model)
    groups = [dict(params=[p], gc=d is not None, gc_dim=d or 0) for p, d in zip(params, dims)]
    opt = SGDGC(groups, lr=0.1, **hyper, **path)
    ref = ReferenceSGDGC(params, dims, lr=0.1, **hyper)
    sums = _weight_sums(model)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.to(device)
        opt.step()
        ref.step(grads)
        for p, expected in zip(params, ref.weights):
            assert p.device.type == device
            assert_close(p.detach().cpu().double(), expected, rtol=1e-5, atol=1e-6)
    for now, before in zip(_weight_sums(model), sums):
        assert_close(now, before, rtol=0, atol=1e-5)


def _amp_wrapper(model: nn.Module, optimizer: dict, device: str, dtype: torch.dtype):
    """An ``AmpOptimWrapper`` over the optimizer that ``GCOptimWrapperConstructor``
    builds from ``optimizer`` (GC on conv and FC weights), loss scale ``SCALE``."""
    cfg = dict(
        type='AmpOptimWrapper',
        dtype=str(dtype).removeprefix('torch.'),  # a config holds names: 'float16', 'bfloat16'
        loss_scale=dict(init_scale=SCALE),
        optimizer=optimizer,
        constructor='GCOptimWrapperConstructor',
        paramwise_cfg=dict(gc_layers=('conv', 'fc')),
    )
    if device == 'cuda':
        wrapper = build_optim_wrapper(model, cfg)
        assert isinstance(wrapper, AmpOptimWrapper) and wrapper.cast_dtype == dtype
        assert wrapper.loss_scaler.get_scale() == SCALE  # a CUDA GradScaler, enabled
        return wrapper
    plain = {k: v for k, v in cfg.items() if k not in ('dtype', 'loss_scale')}
    optim = build_optim_wrapper(model, {**plain, 'type': 'OptimWrapper'}).optimizer
    wrapper = AmpOptimWrapper.__new__(AmpOptimWrapper)
    OptimWrapper.__init__(wrapper, optimizer=optim)
    wrapper._scale_update_param = None
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=SCALE)
    wrapper.cast_dtype = dtype
    return wrapper


def _forward_loss(model, wrapper, device: str, x: torch.Tensor, target: torch.Tensor):
    """The loss under autocast: MMEngine's ``optim_context`` on CUDA; on the
    CPU ``torch.autocast`` (MMEngine's CPU autocast takes bfloat16 only)."""
    if device == 'cuda':
        context = wrapper.optim_context(model)
    else:
        context = torch.autocast('cpu', dtype=wrapper.cast_dtype)
    with context:
        out = model(x)
        assert out.dtype == wrapper.cast_dtype
    return nn.functional.mse_loss(out.float(), target)


def _batch(device: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(4, 3, 6, 6, generator=gen)
    return x.to(device), torch.randn(4, 5, generator=gen).to(device)


OPTIMIZERS = {
    # SGDGC centralizes inside its step: GradScaler unscales before it
    'SGDGC': (
        dict(type='SGDGC', lr=0.1, momentum=0.9, weight_decay=WD),
        lambda w, d: ReferenceSGDGC(w, d, lr=0.1, momentum=0.9, weight_decay=WD),
    ),
    'SGDGC-foreach': (
        dict(type='SGDGC', lr=0.1, momentum=0.9, weight_decay=WD, foreach=True),
        lambda w, d: ReferenceSGDGC(w, d, lr=0.1, momentum=0.9, weight_decay=WD),
    ),
    'SGDGC-fused': (
        dict(type='SGDGC', lr=0.1, momentum=0.9, weight_decay=WD, fused=True),
        lambda w, d: ReferenceSGDGC(w, d, lr=0.1, momentum=0.9, weight_decay=WD),
    ),
    # torch's fused optimizers take the scale themselves (GradScaler does not
    # unscale for them): GC through the step hooks must still hand them the
    # centralized unscaled gradient, plus unscaled decay where decay is coupled
    'AdamW-fused': (
        dict(type='AdamW', lr=1e-2, weight_decay=WD, fused=True),
        lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, weight_decay=WD, decoupled=True),
    ),
    'Adam-fused': (
        dict(type='Adam', lr=1e-2, weight_decay=WD, fused=True),
        lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, weight_decay=WD),
    ),
    'SGD-fused': (
        dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=WD, fused=True),
        lambda w, d: ReferenceSGDGC(w, d, lr=0.1, momentum=0.9, weight_decay=WD),
    ),
}


def _skip_optimizer(device: str, name: str, dtype=None) -> None:
    optimizer = OPTIMIZERS[name][0]
    sgd = optimizer['type'] in ('SGDGC', 'SGD')
    path = {'fused': True} if sgd and optimizer.get('fused') else None
    adam = None if sgd else optimizer['type']
    _skip_without(device, path=path, dtype=dtype, adam=adam)


def _amp_setup(device: str, name: str, dtype: torch.dtype):
    """The net on ``device``, its AMP wrapper of optimizer ``name`` (skipped
    where the device cannot run it), its parameters and their reference."""
    _skip_optimizer(device, name, dtype)
    optimizer, make_ref = OPTIMIZERS[name]
    model = _net(device)
    wrapper = _amp_wrapper(model, dict(optimizer), device, dtype)
    params = list(model.parameters())
    return model, wrapper, params, make_ref(params, _out_dims(model))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
@pytest.mark.parametrize('name', list(OPTIMIZERS))
@pytest.mark.parametrize('device', DEVICES)
def test_amp_gc_sees_the_unscaled_gradient(device, name, dtype):
    """Three AMP steps through ``AmpOptimWrapper``: the weights equal the
    reference stepped on the unscaled gradient (``P(g + wd w)`` for SGDGC,
    ``P(g)`` with decoupled decay for AdamW)."""
    model, wrapper, params, ref = _amp_setup(device, name, dtype)
    for step in range(3):
        loss = _forward_loss(model, wrapper, device, *_batch(device, step))
        wrapper.backward(loss)
        scale = wrapper.loss_scaler.get_scale()
        assert scale == SCALE  # no overflow in this small net: nothing skipped
        unscaled = [p.grad.detach().cpu().double() / scale for p in params]
        wrapper.step()
        wrapper.zero_grad()
        ref.step(unscaled)
        rtol, atol = (1e-5, 1e-6) if name.startswith('SGD') else (1e-4, 1e-5)
        for p, expected in zip(params, ref.weights):
            assert_close(p.detach().cpu().double(), expected, rtol=rtol, atol=atol)


def _state_copy(optimizer: torch.optim.Optimizer) -> list[dict]:
    return [
        {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for s in optimizer.state.values()
    ]


@pytest.mark.parametrize('name', ['SGDGC', 'SGDGC-fused', 'AdamW-fused', 'Adam-fused', 'SGD-fused'])
@pytest.mark.parametrize('device', DEVICES)
def test_amp_inf_step_changes_nothing(device, name):
    """One good step (state exists), then a step whose gradient holds an inf:
    weights and optimizer state stay bit for bit, the scale backs off, and a
    further good step still equals the reference."""
    dtype = torch.float16 if device == 'cuda' else torch.bfloat16
    model, wrapper, params, ref = _amp_setup(device, name, dtype)

    def good_step(step: int) -> None:
        wrapper.backward(_forward_loss(model, wrapper, device, *_batch(device, step)))
        unscaled = [
            p.grad.detach().cpu().double() / wrapper.loss_scaler.get_scale() for p in params
        ]
        wrapper.step()
        wrapper.zero_grad()
        ref.step(unscaled)

    good_step(0)
    weights = [p.detach().clone() for p in params]
    state = _state_copy(wrapper.optimizer)
    wrapper.backward(_forward_loss(model, wrapper, device, *_batch(device, 1)))
    model.conv.weight.grad[0, 0, 0, 0] = float('inf')
    grads = [p.grad.clone() for p in params]
    wrapper.step()
    for p, w, g in zip(params, weights, grads):
        assert torch.equal(p.detach(), w)
        # the gradient is left as the step found it (unscaled where GradScaler unscales)
        assert torch.equal(p.grad, g) or torch.equal(p.grad, g / SCALE)
    after = _state_copy(wrapper.optimizer)
    assert len(after) == len(state)
    for s0, s1 in zip(state, after):
        assert s0.keys() == s1.keys()
        for key in s0:
            assert torch.equal(torch.as_tensor(s0[key]), torch.as_tensor(s1[key])), key
    wrapper.zero_grad()
    assert wrapper.loss_scaler.get_scale() == SCALE / 2
    good_step(2)
    rtol, atol = (1e-5, 1e-6) if name.startswith('SGD') else (1e-4, 1e-5)
    for p, expected in zip(params, ref.weights):
        assert_close(p.detach().cpu().double(), expected, rtol=rtol, atol=atol)
