"""GC under mixed precision: torch's CPU GradScaler stepping fused and unfused
optimizers, bf16/fp16 autocast, and MMEngine's AmpOptimWrapper.step, checked
against the float64 references of tests/reference.py (``P(g + wd w)``, then the
optimizer's own update, on the unscaled gradient)."""

import inspect
import warnings

import pytest
import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper, build_optim_wrapper
from torch import nn
from torch.testing import assert_close

from mmgc.engine.optimizers.gc_step_hooks import attach_gc_hooks
from tests.conftest import cpu_fused, fused_cases, needs_scaler
from tests.reference import ReferenceAdagradGC, ReferenceAdamGC, ReferenceSGDGC


def _gc_wrapper(model: nn.Module, name: str, fused: bool, options: dict) -> OptimWrapper:
    """What the GC constructor builds for ``torch.optim.<name>`` on ``model``."""
    optimizer = dict(type=name, **_fused(fused), **options)
    cfg = dict(type='OptimWrapper', optimizer=optimizer, constructor='GCOptimWrapperConstructor')
    return build_optim_wrapper(model, cfg)


def _fused(fused: bool) -> dict:
    """``fused=True``, or nothing (torch 2.1's SGD takes no ``fused`` at all)."""
    return dict(fused=True) if fused else {}


WD = 0.1  # large, so that a decay off by the loss scale is far outside the tolerance
SCALE = 1024.0
#: name -> (optimizer options, reference factory(weights, out_dims))
CASES = {
    'SGD': (
        dict(lr=0.1, momentum=0.9, weight_decay=WD),
        lambda w, d: ReferenceSGDGC(w, d, lr=0.1, momentum=0.9, weight_decay=WD),
    ),
    'Adam': (
        dict(lr=1e-2, weight_decay=WD),
        lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, weight_decay=WD),
    ),
    'AdamW': (
        dict(lr=1e-2, weight_decay=WD),
        lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, weight_decay=WD, decoupled=True),
    ),
    'Adagrad': (
        dict(lr=0.1, weight_decay=WD),
        lambda w, d: ReferenceAdagradGC(w, d, lr=0.1, weight_decay=WD),
    ),
}


def _conv_deconv():
    """A seeded conv's and transposed conv's weights and biases, and their
    groups: GC on the conv's dim 0 and the deconv's dim 1, the biases off."""
    torch.manual_seed(0)
    conv, deconv = nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 2, 2)
    params = [conv.weight, deconv.weight, conv.bias, deconv.bias]
    groups = [
        dict(params=[params[0]], gc=True, gc_dim=0),
        dict(params=[params[1]], gc=True, gc_dim=1),
        dict(params=params[2:], gc=False),
    ]
    return params, groups


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _params(model):
    """Conv and FC weights (GC, output units on dim 0), then their biases."""
    conv, fc = model[0], model[3]
    return [conv.weight, fc.weight, conv.bias, fc.bias], [0, 0, None, None]


def _state(optimizer):
    return {
        id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
        for p, s in optimizer.state.items()
    }


def _assert_same(a, b):
    assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _scaled_steps(gc_opt, twin_opt, gc_params, twin_params, ref, scaler, twin_scaler):
    """Four steps (finite, inf, finite, finite) through ``GradScaler.step``:
    GC's weights follow the reference, its ``.grad`` is left as the plain
    optimizer leaves it, and the inf step changes nothing."""
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        grads = [torch.randn(p.shape, generator=gen) for p in gc_params]
        if step == 1:  # (a skipped first step: test_fused_sgd_skipped_first_step_*)
            grads[0][0, 0, 0, 0] = float('inf')
        scale = scaler.get_scale()
        assert scale == twin_scaler.get_scale()
        for p, t, g in zip(gc_params, twin_params, grads):
            p.grad, t.grad = g * scale, g * scale
        before, state = [p.detach().clone() for p in gc_params], _state(gc_opt)
        for s, opt in ((scaler, gc_opt), (twin_scaler, twin_opt)):
            s.scale(torch.ones(()))  # what backward(scaler.scale(loss)) starts
            s.step(opt)
            s.update()
        for p, t in zip(gc_params, twin_params):
            _assert_same(p.grad, t.grad)  # .grad as torch leaves it
        if step == 1:
            for p, b in zip(gc_params, before):
                assert torch.equal(p.detach(), b)
            after = _state(gc_opt)
            assert after.keys() == state.keys()
            for key, entries in state.items():
                for name, value in entries.items():
                    _assert_same(after[key][name], value)
            assert scaler.get_scale() == scale / 2  # the scaler backed off
            continue
        ref.step(grads)
        for p, expected in zip(gc_params, ref.weights):
            assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


@needs_scaler
@pytest.mark.parametrize('name, fused', fused_cases(*CASES))
def test_grad_scaler_through_constructor(name, fused):
    options, make_ref = CASES[name]
    model, twin = _model(), _model()
    wrapper = _gc_wrapper(model, name, fused, options)
    params, out_dims = _params(model)
    twin_params, _ = _params(twin)
    twin_opt = getattr(torch.optim, name)(twin_params, **_fused(fused), **options)
    assert getattr(wrapper.optimizer, '_step_supports_amp_scaling', False) == fused
    _scaled_steps(
        wrapper.optimizer,
        twin_opt,
        params,
        twin_params,
        make_ref(params, out_dims),
        torch.amp.GradScaler('cpu', init_scale=SCALE),
        torch.amp.GradScaler('cpu', init_scale=SCALE),
    )
    for p in params[:2]:  # GC on the gradient: the first moment's rows have zero mean
        if 'exp_avg' in wrapper.optimizer.state[p]:
            rows = wrapper.optimizer.state[p]['exp_avg'].flatten(1).sum(1)
            assert_close(rows, torch.zeros_like(rows), rtol=0, atol=1e-6)


@needs_scaler
@pytest.mark.skipif(not cpu_fused('SGD'), reason=f'torch {torch.__version__} has no CPU fused SGD')
def test_fused_sgd_skipped_first_step_creates_no_momentum():
    """torch's fused SGD, asked by GradScaler to skip its first step, would
    keep uninitialized momentum buffers; with the GC hooks it creates none,
    ``.grad`` stays as handed over, and the next step is the reference's
    first (momentum buffer = the centralized gradient)."""
    options, make_ref = CASES['SGD']
    model = _model()
    wrapper = _gc_wrapper(model, 'SGD', True, options)
    params, out_dims = _params(model)
    ref = make_ref(params, out_dims)
    scaler = torch.amp.GradScaler('cpu', init_scale=SCALE)
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        if step == 0:
            grads[2][0] = float('inf')  # a bias, in the gc=False group
        scaler.scale(torch.ones(()))
        handed = [g * scaler.get_scale() for g in grads]
        for p, g in zip(params, handed):
            p.grad = g.clone()
        before = [p.detach().clone() for p in params]
        scaler.step(wrapper.optimizer)
        scaler.update()
        if step == 0:
            for p, b, g in zip(params, before, handed):
                assert torch.equal(p.detach(), b)
                _assert_same(p.grad, g)
            assert all('momentum_buffer' not in s for s in wrapper.optimizer.state.values())
            assert scaler.get_scale() == SCALE / 2
            continue
        ref.step(grads)
        for p, expected in zip(params, ref.weights):
            assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


_ADAM_DECOUPLED = 'decoupled_weight_decay' in inspect.signature(torch.optim.Adam).parameters
#: attach_gc_hooks on hand-made groups, with a transposed conv (gc_dim=1).
DIRECT = {
    'SGD-nesterov-maximize': (
        'SGD',
        dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True, weight_decay=WD),
        lambda w, d: ReferenceSGDGC(
            w, d, lr=0.1, momentum=0.9, nesterov=True, maximize=True, weight_decay=WD
        ),
    ),
    'Adam-maximize': (
        'Adam',
        dict(lr=1e-2, maximize=True, weight_decay=WD),
        lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, maximize=True, weight_decay=WD),
    ),
    'Adam-decoupled': (
        'Adam',
        dict(lr=1e-2, decoupled_weight_decay=True, weight_decay=WD),
        lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, decoupled=True, weight_decay=WD),
    ),
}


@needs_scaler
@pytest.mark.parametrize(
    'case',
    [
        pytest.param(
            case,
            marks=[
                pytest.mark.skipif(
                    not cpu_fused(DIRECT[case][0]),
                    reason=f'torch {torch.__version__} has no CPU fused {DIRECT[case][0]}',
                ),
                pytest.mark.skipif(
                    case == 'Adam-decoupled' and not _ADAM_DECOUPLED,
                    reason=f'torch {torch.__version__} Adam has no decoupled_weight_decay',
                ),
            ],
        )
        for case in DIRECT
    ],
)
def test_grad_scaler_fused_with_attach_gc_hooks(case):
    name, options, make_ref = DIRECT[case]
    (params, groups), (twin_params, twin_groups) = _conv_deconv(), _conv_deconv()
    opt = getattr(torch.optim, name)(groups, fused=True, **options)
    attach_gc_hooks(opt)
    twin_opt = getattr(torch.optim, name)(twin_groups, fused=True, **options)
    _scaled_steps(
        opt,
        twin_opt,
        params,
        twin_params,
        make_ref(params, [0, 1, None, None]),
        torch.amp.GradScaler('cpu', init_scale=SCALE),
        torch.amp.GradScaler('cpu', init_scale=SCALE),
    )


def _cpu_amp_wrapper(opt, **kwargs):
    """MMEngine's AmpOptimWrapper refuses to build without a GPU; its
    backward/step/optim_context are plain code over a GradScaler and
    ``mmengine.runner.amp.autocast``, so run those real methods with torch's
    CPU GradScaler (what a CUDA run does with the CUDA one)."""
    wrapper = AmpOptimWrapper.__new__(AmpOptimWrapper)
    OptimWrapper.__init__(wrapper, optimizer=opt, **kwargs)
    wrapper._scale_update_param = None
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=SCALE)
    wrapper.cast_dtype = torch.bfloat16  # CPU autocast in MMEngine: bf16 only
    return wrapper


@needs_scaler
@pytest.mark.parametrize('clip', [True, False], ids=['clip', 'no-clip'])
@pytest.mark.parametrize('name, fused', fused_cases('SGD', 'AdamW', 'Adam'))
def test_mmengine_amp_optim_wrapper(name, fused, clip):
    """MMEngine's AmpOptimWrapper (backward, step, optim_context: bf16 CPU
    autocast). With clipping it calls ``unscale_`` first (so a fused kernel
    gets ``grad_scale=None``) and clips; without, ``GradScaler.step`` hands a
    fused kernel the scale. Either way GC sees the unscaled (clipped)
    gradient."""
    options, make_ref = CASES[name]
    model = _model()
    inner = _gc_wrapper(model, name, fused, options)
    wrapper = _cpu_amp_wrapper(inner.optimizer, clip_grad=dict(max_norm=0.05) if clip else None)
    params, out_dims = _params(model)
    ref = make_ref(params, out_dims)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(4, 3, 8, 8, generator=gen)
        with wrapper.optim_context(model):
            out = model(x)
            assert out.dtype == torch.bfloat16  # MMEngine's autocast is on
            loss = out.float().square().mean()
        wrapper.backward(loss)
        scale = wrapper.loss_scaler.get_scale()
        grads = [p.grad.double() / scale for p in params]
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        coef = min(1.0, 0.05 / (float(total) + 1e-6)) if clip else 1.0
        assert coef < 1 or not clip  # the clipping acts
        wrapper.step()
        wrapper.zero_grad()
        ref.step([g * coef for g in grads])
        for p, expected in zip(params, ref.weights):
            assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


def _autocast_works(dtype) -> bool:
    with warnings.catch_warnings():  # torch 2.1 warns, then raises or runs in float32
        warnings.simplefilter('ignore')
        try:
            with torch.autocast('cpu', dtype=dtype):
                return nn.Linear(2, 2)(torch.ones(1, 2)).dtype == dtype
        except RuntimeError:
            return False


@pytest.mark.parametrize(
    'dtype, scaled',
    [
        pytest.param(
            dtype,
            scaled,
            marks=[
                pytest.mark.skipif(
                    not _autocast_works(dtype),
                    reason=f'torch {torch.__version__} has no CPU autocast to {dtype}',
                ),
                *([needs_scaler] if scaled else []),
            ],
            id=str(dtype).removeprefix('torch.') + ('-GradScaler' if scaled else ''),
        )
        for dtype, scaled in (
            (torch.bfloat16, False),
            (torch.bfloat16, True),
            (torch.float16, True),
        )
    ],
)
@pytest.mark.parametrize('name, fused', fused_cases('SGD', 'AdamW', 'Adam'))
def test_autocast_forward(dtype, scaled, name, fused):
    """A conv + linear model run forward in ``torch.autocast('cpu', dtype)``,
    backward (on the loss scaled by ``GradScaler``, then its step, where
    ``scaled``): the float32 weights follow the float64 reference on the
    unscaled gradients."""
    options, make_ref = CASES[name]
    model = _model()
    wrapper = _gc_wrapper(model, name, fused, options)
    scaler = torch.amp.GradScaler('cpu', init_scale=SCALE) if scaled else None
    params, out_dims = _params(model)
    ref = make_ref(params, out_dims)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(4, 3, 8, 8, generator=gen)
        with torch.autocast('cpu', dtype=dtype):
            out = model(x)
        assert out.dtype == dtype
        loss = out.float().square().mean()
        (scaler.scale(loss) if scaled else loss).backward()
        assert all(p.grad.dtype == torch.float32 for p in params)
        grads = [p.grad.double() / (scaler.get_scale() if scaled else 1.0) for p in params]
        if scaled:
            scaler.step(wrapper.optimizer)
            scaler.update()
        else:
            wrapper.optimizer.step()
        wrapper.zero_grad()
        ref.step(grads)
        for p, expected in zip(params, ref.weights):
            assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


@needs_scaler
def test_amp_skipped_step_centralizes_and_updates_nothing():
    """MMEngine's AmpOptimWrapper.step over an unfused optimizer: GradScaler
    unscales, finds the inf and never calls step(); the next step is GC's."""
    options, make_ref = CASES['SGD']
    params, groups = _conv_deconv()
    opt = torch.optim.SGD(groups, **options)
    attach_gc_hooks(opt)
    wrapper = _cpu_amp_wrapper(opt)
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=4.0)
    wrapper.loss_scaler.scale(torch.ones(()))  # what wrapper.backward(loss) does
    before = [p.detach().clone() for p in params]
    bad = [torch.randn_like(p) for p in params]
    bad[0][0, 0, 0, 0] = float('inf')
    for p, g in zip(params, bad):
        p.grad = g.clone()
    wrapper.step()
    for p, b, g in zip(params, before, bad):
        assert torch.equal(p.detach(), b)
        assert torch.equal(p.grad, g / 4.0)  # unscaled, never centralized
    assert opt.state == {} or all('momentum_buffer' not in s for s in opt.state.values())
    assert wrapper.loss_scaler.get_scale() == 2.0  # the scaler backed off

    # a finite step: GC sees the unscaled gradient
    good = [torch.randn_like(p) for p in params]
    wrapper.loss_scaler.scale(torch.ones(()))
    for p, g in zip(params, good):
        p.grad = g * wrapper.loss_scaler.get_scale()
    ref = make_ref(params[:2], [0, 1])
    wrapper.step()
    ref.step(good[:2])
    for w, expected in zip(params[:2], ref.weights):
        assert_close(w.detach().double(), expected, rtol=1e-5, atol=1e-6)
