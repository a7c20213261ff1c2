"""``gc_variant='update'`` (the authors' Adam_GC2 / Adam_GCC2 / AdamW_GCC2):
the optimizer's update is centralized after its step. Checked against
tests/reference.py's ReferenceGCOnUpdate, and the invariants of both variants:
GC on the update keeps each output unit's weight sum (Eq. 3) for every
optimizer; GC on the gradient gives an adaptive optimizer's first moment
zero-mean rows."""

import functools

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn
from torch.testing import assert_close

from mmgc.engine.optimizers.gc_step_hooks import attach_gc_hooks, supports_gc_variant
from tests.reference import (
    ReferenceAdagradGC,
    ReferenceAdamGC,
    ReferenceGCOnUpdate,
    ReferenceRMSpropGC,
    ReferenceSGDGC,
)

WD = 1e-2


def _layers(dtype=torch.float64):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).to(dtype)
    deconv = nn.ConvTranspose2d(4, 2, 2).to(dtype)
    return conv, deconv


def _groups(conv, deconv, variant='update'):
    return [
        dict(params=[conv.weight], gc=True, gc_dim=0, gc_variant=variant),
        dict(params=[deconv.weight], gc=True, gc_dim=1, gc_variant=variant),
        dict(params=[conv.bias, deconv.bias], gc=False),
    ]


#: name -> (optimizer factory, plain float64 reference factory(weights))
CASES = {
    'Adam': (
        lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=WD),
        lambda w: ReferenceAdamGC(w, [None] * len(w), lr=1e-2, weight_decay=WD),
    ),
    'AdamW': (
        lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=WD),
        lambda w: ReferenceAdamGC(w, [None] * len(w), lr=1e-2, weight_decay=WD, decoupled=True),
    ),
    'Adam-foreach-maximize': (
        lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=WD, foreach=True, maximize=True),
        lambda w: ReferenceAdamGC(w, [None] * len(w), lr=1e-2, weight_decay=WD, maximize=True),
    ),
    'RMSprop': (
        lambda g: torch.optim.RMSprop(g, lr=1e-2, weight_decay=WD),
        lambda w: ReferenceRMSpropGC(w, [None] * len(w), lr=1e-2, weight_decay=WD),
    ),
    'Adagrad': (
        lambda g: torch.optim.Adagrad(g, lr=0.1, weight_decay=WD),
        lambda w: ReferenceAdagradGC(w, [None] * len(w), lr=0.1, weight_decay=WD),
    ),
    'SGD': (
        lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, weight_decay=WD),
        lambda w: ReferenceSGDGC(w, [None] * len(w), lr=0.1, momentum=0.9, weight_decay=WD),
    ),
}


def _grads(step, params):
    gen = torch.Generator().manual_seed(step)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


@pytest.mark.parametrize('case', list(CASES))
def test_update_is_centralized_as_the_authors_define(case):
    make_opt, make_plain = CASES[case]
    conv, deconv = _layers()
    params = [conv.weight, deconv.weight, conv.bias, deconv.bias]
    opt = make_opt(_groups(conv, deconv))
    attach_gc_hooks(opt)
    ref = ReferenceGCOnUpdate(make_plain(params), [0, 1, None, None])
    for step in range(4):
        grads = _grads(step, params)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref.step(grads)
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)  # the optimizer stepped on the raw gradient
        for p, expected in zip(params, ref.weights):
            assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)


def test_sgd_update_variant_equals_grad_variant():
    """P commutes with SGD's momentum: both variants give the same weights."""
    weights = {}
    for variant in ('grad', 'update'):
        conv, deconv = _layers()
        params = [conv.weight, deconv.weight, conv.bias, deconv.bias]
        opt = torch.optim.SGD(
            _groups(conv, deconv, variant), lr=0.1, momentum=0.9, nesterov=True, weight_decay=WD
        )
        attach_gc_hooks(opt)
        for step in range(4):
            for p, g in zip(params, _grads(step, params)):
                p.grad = g
            opt.step()
        weights[variant] = [p.detach() for p in params]
    for a, b in zip(weights['grad'], weights['update']):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).double()


UPDATE_OPTIMIZERS = [
    dict(type='Adam', lr=1e-2, weight_decay=1e-2),
    dict(type='AdamW', lr=1e-2, weight_decay=0.05),
    dict(type='Adam', lr=1e-2, weight_decay=1e-2, amsgrad=True),
    dict(type='Adamax', lr=1e-2, weight_decay=1e-2),
    dict(type='NAdam', lr=1e-2, weight_decay=1e-2),
    dict(type='RAdam', lr=1e-2, weight_decay=1e-2),
    dict(type='Adagrad', lr=0.1, weight_decay=1e-2),
    dict(type='Adadelta', weight_decay=1e-2),
    dict(type='RMSprop', lr=1e-2, weight_decay=1e-2, momentum=0.9, centered=True),
    dict(type='Rprop', lr=1e-2),
    dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-2),
]


def _build(optimizer, variant):
    model = _model()
    wrapper = build_optim_wrapper(
        model,
        dict(type='OptimWrapper', optimizer=optimizer, constructor='GCOptimWrapperConstructor'),
    )
    for group in wrapper.optimizer.param_groups:
        if group['gc']:
            group['gc_variant'] = variant
    return model, wrapper


def _unit_sums(model):
    return [model[0].weight.detach().sum((1, 2, 3)), model[3].weight.detach().sum(1)]


def _train(model, wrapper, steps=5):
    for step in range(steps):
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(step)).double()
        wrapper.update_params(model(x).square().mean())


@pytest.mark.parametrize(
    'optimizer', UPDATE_OPTIMIZERS, ids=lambda o: o['type'] + ('-amsgrad' if 'amsgrad' in o else '')
)
def test_update_variant_keeps_unit_weight_sums(optimizer):
    """Eq. (3) for every optimizer the update variant supports; the same run
    with GC on the gradient moves the sums of an adaptive optimizer."""
    drift = {}
    for variant in ('update', 'grad'):
        model, wrapper = _build(optimizer, variant)
        before, weight = _unit_sums(model), model[0].weight.detach().clone()
        _train(model, wrapper, steps=8)  # RAdam is SGD-like for its first 5 steps
        after = _unit_sums(model)
        assert (model[0].weight.detach() - weight).abs().max() > 1e-4  # it trained
        drift[variant] = max(float((a - b).abs().max()) for a, b in zip(after, before))
    assert drift['update'] < 1e-12
    if optimizer['type'] != 'SGD':
        assert drift['grad'] > 1e-6  # the invariant is the update variant's, not GC's alone


ADAPTIVE = [
    dict(type='Adam', lr=1e-2, weight_decay=1e-2),
    dict(type='AdamW', lr=1e-2, weight_decay=0.05),
    dict(type='Adamax', lr=1e-2, weight_decay=1e-2),
    dict(type='NAdam', lr=1e-2, weight_decay=1e-2),
    dict(type='RAdam', lr=1e-2, weight_decay=1e-2),
]


@pytest.mark.parametrize('optimizer', ADAPTIVE, ids=lambda o: o['type'])
def test_grad_variant_first_moment_rows_have_zero_mean(optimizer):
    """GC on the gradient: ``m = beta1 m + (1 - beta1) P(g + wd w)``, so each
    output unit's row of the first moment sums to zero."""
    model, wrapper = _build(optimizer, 'grad')
    _train(model, wrapper)
    conv, fc = model[0].weight, model[3].weight
    state = wrapper.optimizer.state
    assert_close(state[conv]['exp_avg'].sum((1, 2, 3)), torch.zeros(4, dtype=torch.float64))
    assert_close(state[fc]['exp_avg'].sum(1), torch.zeros(3, dtype=torch.float64))
    assert state[conv]['exp_avg'].abs().max() > 1e-6


def test_unknown_or_undefined_variant_is_refused():
    conv, deconv = _layers()
    with pytest.raises(
        ValueError,
        match=r"param group 0: gc_variant must be one of \('grad', 'update'\); got 'updates'",
    ):
        attach_gc_hooks(torch.optim.Adam(_groups(conv, deconv, 'updates')))
    with pytest.raises(
        ValueError, match=r"gc_variant='update' is not defined for ASGD .*\['grad'\]"
    ):
        attach_gc_hooks(torch.optim.ASGD(_groups(conv, deconv, 'update')))
    assert supports_gc_variant(torch.optim.ASGD, 'grad')
    assert not supports_gc_variant(torch.optim.ASGD, 'update')
    assert supports_gc_variant(torch.optim.AdamW, 'update')

    # a group added after the hooks: refused at the step, before anything changes
    opt = torch.optim.Adam(_groups(conv, deconv, 'grad'), lr=1e-2, weight_decay=WD)
    attach_gc_hooks(opt)
    extra = nn.Parameter(torch.randn(2, 3, dtype=torch.float64))
    opt.add_param_group(dict(params=[extra], gc=True, gc_variant=3))
    params = [conv.weight, deconv.weight, conv.bias, deconv.bias, extra]
    grads = _grads(0, params)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r'param group 3: gc_variant must be one of .*; got 3'):
        opt.step()
    for p, b, g in zip(params, before, grads):
        assert torch.equal(p.detach(), b) and torch.equal(p.grad, g)
    assert all(group['weight_decay'] == WD for group in opt.param_groups[:3])


needs_scaler = pytest.mark.skipif(
    not hasattr(torch.amp, 'GradScaler'),
    reason=f'torch {torch.__version__} has no CPU GradScaler (torch.amp.GradScaler)',
)


@functools.cache
def _cpu_fused(name):
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.zeros(2)
    try:
        getattr(torch.optim, name)([p], lr=0.1, fused=True).step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


@needs_scaler
@pytest.mark.parametrize(
    'name, fused',
    [
        pytest.param(
            name,
            fused,
            marks=pytest.mark.skipif(
                fused and not _cpu_fused(name),
                reason=f'torch {torch.__version__} has no CPU fused {name}',
            ),
            id=f'{name}-fused={fused}',
        )
        for name in ('Adam', 'AdamW')
        for fused in (True, False)
    ],
)
def test_update_variant_under_grad_scaler(name, fused):
    """GradScaler(1024): a step taken is the reference's on the unscaled
    gradient; a step skipped for inf changes no weight, state or sum."""
    _, make_plain = CASES[name]
    conv, deconv = _layers(torch.float32)
    params = [conv.weight, deconv.weight, conv.bias, deconv.bias]
    fused_kw = dict(fused=True) if fused else {}
    opt = getattr(torch.optim, name)(_groups(conv, deconv), lr=1e-2, weight_decay=WD, **fused_kw)
    attach_gc_hooks(opt)
    ref = ReferenceGCOnUpdate(make_plain(params), [0, 1, None, None])
    scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
    for step in range(4):
        grads = _grads(step, params)
        if step == 2:
            grads[1][0, 0, 0, 0] = float('nan')
        scaler.scale(torch.ones(()))
        for p, g in zip(params, grads):
            p.grad = g * scaler.get_scale()
        before = [p.detach().clone() for p in params]
        scaler.step(opt)
        scaler.update()
        if step == 2:
            assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
            assert all(int(s['step']) == 2 for s in opt.state.values())
            continue
        ref.step(grads)
        for p, expected in zip(params, ref.weights):
            assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)
