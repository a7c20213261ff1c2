"""GC for optimizers other than SGDGC: each sees the centralized gradient,
checked against references written from the equations (tests/reference.py).
Then ``gc_variant='update'`` (the authors' Adam_GC2 / Adam_GCC2 / AdamW_GCC2):
the optimizer's update is centralized after its step. Checked against
tests/reference.py's ReferenceGCOnUpdate, and the invariants of both variants:
GC on the update keeps each output unit's weight sum (Eq. 3) for every
optimizer; GC on the gradient gives an adaptive optimizer's first moment
zero-mean rows. Mixed precision: test_amp.py."""

import inspect

import pytest
import torch
from mmengine.optim import OptimWrapper, build_optim_wrapper
from torch import nn
from torch.testing import assert_close

from mmgc import SGDGC
from mmgc.engine.optimizers.capability import gc_variants_of, supports_gc, why_not_variant
from mmgc.engine.optimizers.gc_step_hooks import attach_gc_hooks, uses_gc_hooks
from tests.conftest import fused_cases, needs_scaler, step_with_reference
from tests.reference import (
    ReferenceAdagradGC,
    ReferenceAdamGC,
    ReferenceGCOnUpdate,
    ReferenceRMSpropGC,
    ReferenceSGDGC,
    centralized_direction,
    project,
    unit_mean_ratio,
)


def _layers(dtype=torch.float64):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).to(dtype)
    deconv = nn.ConvTranspose2d(4, 2, 2).to(dtype)
    return conv, deconv


def _groups(conv, deconv, variant=None, **extra):
    """The conv weight (GC on dim 0), the deconv weight (dim 1), the biases
    (no GC); ``variant``: the GC groups' ``gc_variant``."""
    gc = dict(extra, gc=True) if variant is None else dict(extra, gc=True, gc_variant=variant)
    return [
        dict(params=[conv.weight], gc_dim=0, **gc),
        dict(params=[deconv.weight], gc_dim=1, **gc),
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


def _hooked(case: str):
    """The case's optimizer on :func:`_layers` with the GC hooks, and its reference."""
    make_opt, make_ref = CASES[case]
    conv, deconv = _layers()
    opt = make_opt(_groups(conv, deconv))
    attach_gc_hooks(opt)
    weights = [conv.weight, deconv.weight]
    return conv, deconv, weights, opt, make_ref(weights, [0, 1])


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
    conv, deconv, weights, opt, ref = _hooked(case)
    bias_twin = [
        conv.bias.detach().clone().requires_grad_(),
        deconv.bias.detach().clone().requires_grad_(),
    ]
    twin_opt = CASES[case][0]([dict(params=bias_twin)])  # biases: the plain optimizer
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
        r"supported: SGDGC, MMPretrain's LARS and Lamb \(variant update\) and torch.optim \['ASGD'",
    ):
        attach_gc_hooks(torch.optim.LBFGS([p]))
    assert supports_gc(torch.optim.AdamW) and not supports_gc(torch.optim.SparseAdam)
    assert uses_gc_hooks(torch.optim.Adam([p])) and not uses_gc_hooks(SGDGC([p], lr=0.1))


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).to(dtype)


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


def _build(optimizer, dtype=torch.float32, variant=None):
    """A seeded conv-BN-linear model and the wrapper the GC constructor builds
    for it (conv and FC weights); ``variant``: its GC groups' ``gc_variant``
    (None: the constructor's old form sets none)."""
    model = _model(dtype)
    cfg = dict(type='OptimWrapper', optimizer=optimizer, constructor='GCOptimWrapperConstructor')
    wrapper = build_optim_wrapper(model, dict(cfg, paramwise_cfg=dict(gc_layers=('conv', 'fc'))))
    for group in wrapper.optimizer.param_groups:
        if group['gc'] and variant is not None:
            group['gc_variant'] = variant
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


def test_clipping_happens_before_gc():
    """OptimWrapper clips the raw gradient, then GC runs inside the step."""
    conv, deconv = _layers()
    opt = SGDGC(_groups(conv, deconv), lr=0.1, momentum=0.9, weight_decay=WD)
    wrapper = OptimWrapper(optimizer=opt, clip_grad=dict(max_norm=0.5))
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


# --- gc_variant='update': GC on the optimizer's update ---


#: GC on the update: CASES' optimizers, and Adam with foreach and maximize;
#: their references step on the raw gradient (out_dims None: no GC inside).
UPDATE_CASES = {name: CASES[name] for name in ('Adam', 'AdamW', 'RMSprop', 'Adagrad', 'SGD')}
UPDATE_CASES['Adam-foreach-maximize'] = (
    lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=WD, foreach=True, maximize=True),
    lambda w, d: ReferenceAdamGC(w, d, lr=1e-2, weight_decay=WD, maximize=True),
)


def _on_update(make_ref, params):
    """``make_ref``'s reference without GC, its updates centralized after each
    step (the conv weight on dim 0, the deconv weight on dim 1)."""
    return ReferenceGCOnUpdate(make_ref(params, [None] * len(params)), [0, 1, None, None])


def _grads(step, params):
    gen = torch.Generator().manual_seed(step)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


@pytest.mark.parametrize('case', list(UPDATE_CASES))
def test_update_is_centralized_as_the_authors_define(case):
    make_opt, make_ref = UPDATE_CASES[case]
    conv, deconv = _layers()
    params = [conv.weight, deconv.weight, conv.bias, deconv.bias]
    opt = make_opt(_groups(conv, deconv, 'update'))
    attach_gc_hooks(opt)
    ref = _on_update(make_ref, params)
    for step in range(4):
        grads = _grads(step, params)
        step_with_reference(opt, ref, params, grads)
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


#: The optimizers among UPDATE_OPTIMIZERS that keep a first moment, exp_avg.
FIRST_MOMENT = ('Adam', 'AdamW', 'Adamax', 'NAdam', 'RAdam')


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
    with GC on the gradient keeps the sums of SGD only, and moves those of an
    adaptive optimizer, whose first moment ``m = beta1 m + (1 - beta1) P(g +
    wd w)`` has rows of zero sum instead."""
    drift = {}
    for variant in ('update', 'grad'):
        model, wrapper = _build(optimizer, torch.float64, variant)
        before, weight = _unit_sums(model), model[0].weight.detach().clone()
        _train(model, wrapper, steps=8)  # RAdam is SGD-like for its first 5 steps
        after = _unit_sums(model)
        assert (model[0].weight.detach() - weight).abs().max() > 1e-4  # it trained
        drift[variant] = max(float((a - b).abs().max()) for a, b in zip(after, before))
    assert drift['update'] < 1e-12
    if optimizer['type'] == 'SGD':  # Eq. 3 for GC on SGD's gradient too
        assert drift['grad'] < 1e-12
    else:
        assert drift['grad'] > 1e-6  # the invariant is the update variant's, not GC's alone
    if optimizer['type'] in FIRST_MOMENT:  # the 'grad' run's state
        state = wrapper.optimizer.state
        for w, dims in ((model[0].weight, (1, 2, 3)), (model[3].weight, (1,))):
            rows = state[w]['exp_avg'].sum(dims)
            assert_close(rows, torch.zeros_like(rows))
        assert state[model[0].weight]['exp_avg'].abs().max() > 1e-6


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
    assert gc_variants_of(torch.optim.ASGD) == ('grad',)
    assert gc_variants_of(torch.optim.AdamW) == ('grad', 'update')

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


@needs_scaler
@pytest.mark.parametrize('name, fused', fused_cases('Adam', 'AdamW'))
def test_update_variant_under_grad_scaler(name, fused):
    """GradScaler(1024): a step taken is the reference's on the unscaled
    gradient; a step skipped for inf changes no weight, state or sum."""
    _, make_ref = UPDATE_CASES[name]
    conv, deconv = _layers(torch.float32)
    params = [conv.weight, deconv.weight, conv.bias, deconv.bias]
    fused_kw = dict(fused=True) if fused else {}
    opt = getattr(torch.optim, name)(
        _groups(conv, deconv, 'update'), lr=1e-2, weight_decay=WD, **fused_kw
    )
    attach_gc_hooks(opt)
    ref = _on_update(make_ref, params)
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


# --- step(closure), and no half-taken step (issue 28) ---


def _closure_cases():
    for case in CASES:
        if case == 'Adam-decoupled' and not _ADAM_DECOUPLED:
            continue
        yield case


@pytest.mark.parametrize('form', ['positional', 'keyword'])
@pytest.mark.parametrize('case', list(_closure_cases()))
def test_closure_gradients_are_centralized(case, form):
    """step(closure) recomputes the gradients inside the step, after the pre
    hook: the hooks centralize what the closure computed (the reference
    steps on it), and p.grad keeps the closure's raw gradient."""
    conv, deconv, weights, opt, ref = _hooked(case)
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        grads = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in weights]

        def closure(grads=grads):
            opt.zero_grad()
            for w, g in zip(weights, grads):
                w.grad = g.clone()
            return torch.tensor(1.0)

        for w in weights:  # stale gradients, which the closure replaces
            w.grad = torch.full_like(w, 100.0)
        loss = opt.step(closure) if form == 'positional' else opt.step(closure=closure)
        assert float(loss) == 1.0
        ref.step(grads)
        for w, g in zip(weights, grads):
            assert torch.equal(w.grad, g)
        assert all(group['weight_decay'] == WD for group in opt.param_groups)
        for w, expected in zip(weights, ref.weights):
            assert_close(w.detach(), expected, rtol=1e-10, atol=1e-12)


def test_closure_with_the_update_variant():
    """GC on the update needs nothing from the closure: the update the
    optimizer makes from the closure's gradient is centralized."""
    conv, deconv = _layers()
    opt = torch.optim.Adam(_groups(conv, deconv, variant='update'), lr=1e-2)
    attach_gc_hooks(opt)
    weights = [conv.weight, deconv.weight]
    ref = ReferenceGCOnUpdate(ReferenceAdamGC(weights, [None, None], lr=1e-2), [0, 1])
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        grads = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in weights]

        def closure(grads=grads):
            for w, g in zip(weights, grads):
                w.grad = g.clone()

        opt.step(closure)
        ref.step(grads)
        for w, expected in zip(weights, ref.weights):
            assert_close(w.detach(), expected, rtol=1e-10, atol=1e-12)


def test_lbfgs_cannot_take_gc():
    """LBFGS evaluates its closure inside the step (which the hooks could
    centralize), but holds one parameter group only, so GC cannot be given per
    tensor: it is refused, by the hooks and by the constructor."""
    conv, deconv = _layers()
    with pytest.raises(ValueError, match="doesn't support per-parameter options"):
        torch.optim.LBFGS(_groups(conv, deconv))  # torch's own rule
    with pytest.raises(ValueError, match='cannot apply gradient centralization to LBFGS'):
        attach_gc_hooks(torch.optim.LBFGS(conv.parameters()))
    assert not supports_gc(torch.optim.LBFGS)


def test_closure_under_the_fused_amp_path_is_refused():
    """GradScaler's fused path (grad_scale / found_inf set on the optimizer)
    takes no closure; a step(closure) there is refused in one sentence
    before anything changes."""
    conv, deconv = _layers()
    opt = torch.optim.SGD(_groups(conv, deconv), lr=0.1, momentum=0.9, weight_decay=WD)
    attach_gc_hooks(opt)
    opt.grad_scale = torch.tensor(1024.0)
    weights = [conv.weight, deconv.weight]
    before = [w.detach().clone() for w in weights]
    with pytest.raises(
        ValueError, match=r'SGD.step\(closure\) with .*cannot be centralized'
    ) as info:
        opt.step(lambda: None)
    assert str(info.value).count('. ') == 0
    assert all(torch.equal(w.detach(), b) for w, b in zip(weights, before))


@pytest.mark.parametrize('closure', [False, True], ids=['no-closure', 'closure'])
def test_sparse_gradient_refuses_before_anything_changes(closure):
    """A sparse gradient in a gc=True group is refused before any .grad or
    group option is replaced and before any weight moves."""
    conv, _ = _layers()
    emb = nn.Embedding(10, 3, sparse=True).double()
    opt = torch.optim.SGD(
        [dict(params=[conv.weight], gc=True), dict(params=emb.parameters(), gc=True)],
        lr=0.1,
        weight_decay=WD,
    )
    attach_gc_hooks(opt)
    grad = torch.randn(conv.weight.shape, dtype=torch.float64)

    def make_grads():
        conv.weight.grad = grad
        emb.weight.grad = None
        emb(torch.tensor([1, 2])).sum().backward()

    make_grads()
    before = conv.weight.detach().clone(), emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match=r'cannot centralize a sparse gradient .*\(10, 3\)'):
        opt.step(make_grads) if closure else opt.step()
    assert conv.weight.grad is grad and emb.weight.grad.is_sparse
    assert all(group['weight_decay'] == WD for group in opt.param_groups)
    assert torch.equal(conv.weight.detach(), before[0])
    assert torch.equal(emb.weight.detach(), before[1])


@pytest.mark.parametrize('foreach', [False, True], ids=['for-loop', 'foreach'])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_gradient_is_formed_in_float32(dtype, foreach):
    """float16/bfloat16 weights: the optimizer sees P(g + wd w) formed in
    float32 and rounded once (here checked against the float64 projection
    rounded to the dtype), even where the gradient's per-unit mean is 100
    times its centred part; the momentum buffer's per-unit mean stays at
    rounding level."""
    torch.manual_seed(0)
    weight = nn.Parameter((0.05 * torch.randn(16, 8, 3, 3, dtype=torch.float64)).to(dtype))
    opt = torch.optim.SGD(
        [dict(params=[weight], gc=True, gc_dim=0)],
        lr=1e-2,
        momentum=0.9,
        weight_decay=WD,
        foreach=foreach,
    )
    attach_gc_hooks(opt)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(weight.grad.clone()))
    eps = torch.finfo(dtype).eps
    for step in range(5):
        gen = torch.Generator().manual_seed(step)
        centred = project(torch.randn(weight.shape, generator=gen, dtype=torch.float64), 0)
        offsets = torch.randn(16, 1, 1, 1, generator=gen, dtype=torch.float64).sign()
        grad = (centred + 100 * centred.square().mean().sqrt() * offsets).to(dtype)
        weight.grad = grad
        expected = centralized_direction(grad, weight, 0, weight_decay=WD).to(dtype)
        opt.step()
        scale = float(expected.abs().max())
        assert_close(seen[-1], expected, rtol=eps, atol=eps * scale)
        assert torch.equal(weight.grad, grad)
    assert unit_mean_ratio(opt.state[weight]['momentum_buffer'], 0) < 1e-2


@pytest.mark.parametrize(
    ('optimizer_cls', 'variant', 'why'),
    [
        (torch.optim.AdamW, 'update', ''),
        (torch.optim.ASGD, 'update', 'its averaged weights follow the uncentralized step'),
        (torch.optim.AdamW, 'sgdw', "'sgdw' is SGD with decoupled decay, SGDWGC"),
        (torch.optim.LBFGS, 'grad', 'it cannot take gradient centralization'),
    ],
)
def test_why_an_optimizer_does_not_take_a_variant(optimizer_cls, variant, why):
    """The one answer the constructor's and the hooks' refusals give (LARS and
    Lamb's, 'its trust ratio reads the raw gradient', in test_lars_lamb.py)."""
    assert why_not_variant(optimizer_cls, variant) == why
