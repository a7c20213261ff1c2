"""GC for optimizers other than SGDGC: each sees the centralized gradient,
checked against references written from the equations (tests/reference.py).
Mixed precision: test_amp.py; GC on the update: test_gc_update_variant.py."""

import inspect

import pytest
import torch
from mmengine.optim import OptimWrapper, build_optim_wrapper
from torch import nn
from torch.testing import assert_close

from mmgc import SGDGC
from mmgc.engine.optimizers.gc_step_hooks import attach_gc_hooks, supports_gc, uses_gc_hooks
from tests.reference import (
    ReferenceAdagradGC,
    ReferenceAdamGC,
    ReferenceRMSpropGC,
    ReferenceSGDGC,
)


def _layers():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).double()
    deconv = nn.ConvTranspose2d(4, 2, 2).double()
    return conv, deconv


def _groups(conv, deconv, **extra):
    return [
        dict(params=[conv.weight], gc=True, gc_dim=0, **extra),
        dict(params=[deconv.weight], gc=True, gc_dim=1, **extra),
        dict(params=[conv.bias, deconv.bias], gc=False, gc_dim=0, **extra),
    ]


WD = 1e-2
# (optimizer factory, reference factory): the reference sees decay the way
# the paper treats that optimizer
CASES = {
    'SGD': (
        lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, weight_decay=WD),
        lambda w, d: ReferenceSGDGC(w, d, lr=0.1, momentum=0.9, weight_decay=WD),
    ),
    'SGD-maximize-nesterov': (
        lambda g: torch.optim.SGD(
            g, lr=0.1, momentum=0.9, weight_decay=WD, nesterov=True, maximize=True
        ),
        lambda w, d: ReferenceSGDGC(
            w, d, lr=0.1, momentum=0.9, weight_decay=WD, nesterov=True, maximize=True
        ),
    ),
    'Adam': (
        lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=WD),
        lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, weight_decay=WD),
    ),
    'Adam-maximize': (
        lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=WD, maximize=True),
        lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, weight_decay=WD, maximize=True),
    ),
    'Adam-foreach': (
        lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=WD, foreach=True),
        lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, weight_decay=WD),
    ),
    'AdamW': (
        lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=WD),
        lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, weight_decay=WD, decoupled=True),
    ),
    'Adam-decoupled': (
        lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=WD, decoupled_weight_decay=True),
        lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, weight_decay=WD, decoupled=True),
    ),
    'Adagrad': (
        lambda g: torch.optim.Adagrad(g, lr=0.1, weight_decay=WD),
        lambda w, d: ReferenceAdagradGC(w, d, lr=0.1, weight_decay=WD),
    ),
    'RMSprop': (
        lambda g: torch.optim.RMSprop(g, lr=1e-2, weight_decay=WD),
        lambda w, d: ReferenceRMSpropGC(w, d, lr=1e-2, weight_decay=WD),
    ),
}


#: torch 2.1's Adam has no decoupled_weight_decay (AdamW covers the math there).
_ADAM_DECOUPLED = 'decoupled_weight_decay' in inspect.signature(torch.optim.Adam).parameters


@pytest.mark.parametrize(
    'case',
    [
        pytest.param(
            case,
            marks=pytest.mark.skipif(
                case == 'Adam-decoupled' and not _ADAM_DECOUPLED,
                reason=f'torch {torch.__version__} Adam has no decoupled_weight_decay',
            ),
        )
        for case in CASES
    ],
)
def test_optimizer_sees_centralized_gradient(case):
    make_opt, make_ref = CASES[case]
    conv, deconv = _layers()
    opt = make_opt(_groups(conv, deconv))
    attach_gc_hooks(opt)
    weights = [conv.weight, deconv.weight]
    ref = make_ref(weights, [0, 1])
    bias_twin = [
        conv.bias.detach().clone().requires_grad_(),
        deconv.bias.detach().clone().requires_grad_(),
    ]
    twin_opt = make_opt([dict(params=bias_twin)])  # biases: the plain optimizer
    for step in range(4):
        gen = torch.Generator().manual_seed(step)
        grads = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in weights]
        bias_grads = [
            torch.randn(b.shape, generator=gen, dtype=torch.float64)
            for b in (conv.bias, deconv.bias)
        ]
        for w, g in zip(weights, grads):
            w.grad = g.clone()
        for b, t, g in zip((conv.bias, deconv.bias), bias_twin, bias_grads):
            b.grad, t.grad = g.clone(), g.clone()
        opt.step()
        twin_opt.step()
        ref.step(grads)
        # the grads and the group's decay are put back after the step
        for w, g in zip(weights, grads):
            assert torch.equal(w.grad, g)
        assert all(group['weight_decay'] == WD for group in opt.param_groups)
        for w, expected in zip(weights, ref.weights):
            assert_close(w.detach(), expected, rtol=1e-10, atol=1e-12)
        for b, t in zip((conv.bias, deconv.bias), bias_twin):
            assert torch.equal(b.detach(), t.detach())


def test_hooks_are_not_for_sgdgc_and_refuse_unsupported():
    p = nn.Parameter(torch.randn(2, 2))
    with pytest.raises(ValueError, match='SGDGC centralizes in its own step'):
        attach_gc_hooks(SGDGC([p], lr=0.1))
    with pytest.raises(
        ValueError,
        match=r'cannot apply gradient centralization to LBFGS; '
        r"supported: SGDGC and torch.optim \['ASGD'",
    ):
        attach_gc_hooks(torch.optim.LBFGS([p]))
    assert supports_gc(torch.optim.AdamW) and not supports_gc(torch.optim.SparseAdam)
    assert uses_gc_hooks(torch.optim.Adam([p])) and not uses_gc_hooks(SGDGC([p], lr=0.1))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


OPTIMIZERS = [
    dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    dict(type='Adam', lr=1e-3, weight_decay=1e-4),
    dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    dict(type='Adagrad', lr=0.01, weight_decay=1e-4),
    dict(type='RMSprop', lr=1e-3, weight_decay=1e-4),
    dict(type='Adamax', lr=1e-3, weight_decay=1e-4),
    dict(type='NAdam', lr=1e-3, weight_decay=1e-4),
    dict(type='RAdam', lr=1e-3, weight_decay=1e-4),
    dict(type='Adadelta', weight_decay=1e-4),
    dict(type='ASGD', lr=1e-2, weight_decay=1e-4),
    dict(type='Rprop', lr=1e-3),
]


def _build(optimizer):
    model = _model()
    wrapper = build_optim_wrapper(
        model,
        dict(
            type='OptimWrapper',
            optimizer=optimizer,
            constructor='GCOptimWrapperConstructor',
            paramwise_cfg=dict(gc_layers=('conv', 'fc')),
        ),
    )
    return model, wrapper


@pytest.mark.parametrize('optimizer', OPTIMIZERS, ids=lambda o: o['type'])
def test_every_registry_optimizer_sees_centralized_gradients(optimizer):
    model, wrapper = _build(optimizer)
    conv, bn, lin = model[0], model[1], model[3]
    seen = {}

    def record(opt, args, kwargs):  # runs after the GC pre-hook
        seen['conv'] = conv.weight.grad.sum((1, 2, 3))
        seen['fc'] = lin.weight.grad.sum(1)
        seen['bn'] = bn.weight.grad.clone()

    wrapper.optimizer.register_step_pre_hook(record)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    loss = model(x).square().mean()
    wrapper.backward(loss)
    raw_bn = bn.weight.grad.clone()
    raw_conv_sums = conv.weight.grad.sum((1, 2, 3))
    wrapper.step()
    assert_close(seen['conv'], torch.zeros(4), rtol=0, atol=1e-6)
    assert_close(seen['fc'], torch.zeros(3), rtol=0, atol=1e-6)
    assert raw_conv_sums.abs().max() > 1e-3  # the raw gradient was not centralized
    assert torch.equal(seen['bn'], raw_bn)  # norm parameters untouched


def test_sgd_through_hooks_keeps_weight_sums():
    """Eq. (3) for torch's SGD with GC hooks (an adaptive optimizer divides
    element-wise by its second moment, so there e^T w is not kept)."""
    model, wrapper = _build(dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-2))
    conv, lin = model[0], model[3]
    sums = (
        conv.weight.detach().double().sum((1, 2, 3)),
        lin.weight.detach().double().sum(1),
    )
    for step in range(5):
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        wrapper.update_params(model(x).square().mean())
    after = (
        conv.weight.detach().double().sum((1, 2, 3)),
        lin.weight.detach().double().sum(1),
    )
    for before, now in zip(sums, after):
        assert_close(now, before, rtol=0, atol=1e-5)


def _clip_case(wrapper_cls, **wrapper_kwargs):
    conv, deconv = _layers()
    opt = SGDGC(_groups(conv, deconv), lr=0.1, momentum=0.9, weight_decay=WD)
    return conv, deconv, opt, wrapper_cls(optimizer=opt, **wrapper_kwargs)


def test_clipping_happens_before_gc():
    """OptimWrapper clips the raw gradient, then GC runs inside the step."""
    conv, deconv, opt, wrapper = _clip_case(OptimWrapper, clip_grad=dict(max_norm=0.5))
    weights, biases = [conv.weight, deconv.weight], [conv.bias, deconv.bias]
    ref = ReferenceSGDGC(weights, [0, 1], lr=0.1, momentum=0.9, weight_decay=WD)
    gen = torch.Generator().manual_seed(0)
    grads = [
        10 * torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in weights + biases
    ]
    for p, g in zip(weights + biases, grads):
        p.grad = g.clone()
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = 0.5 / (float(total) + 1e-6)
    wrapper.step()
    ref.step([g * scale for g in grads[:2]])
    for w, expected in zip(weights, ref.weights):
        assert_close(w.detach(), expected, rtol=1e-9, atol=1e-12)
