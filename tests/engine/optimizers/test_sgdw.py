"""SGDW (mmgc.engine.optimizers.sgdw): SGD with decoupled weight decay and no
GC, SGDWGC's baseline twin, against the float64 reference of SGDWGC with no
projection (tests/reference.py) and against SGDWGC with GC off."""

from __future__ import annotations

import copy

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import OPTIMIZERS
from torch import nn

from mmgc import SGDW, SGDWGC
from mmgc.errors import ConfigError
from tests.reference import ReferenceSGDWGC

SHAPES = [(6, 3, 3, 3), (5, 4), (7,)]
HYPER = [
    dict(lr=0.1, momentum=0.9, weight_decay=1e-3),
    dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=5e-3),
    dict(lr=0.1, momentum=0.0, weight_decay=1e-2, maximize=True),
    dict(lr=0.1, momentum=0.9, weight_decay=0.0),
]


def _params(dtype=torch.float64) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in SHAPES]


def _grads(step: int, dtype=torch.float64) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=generator, dtype=dtype) for s in SHAPES]


@pytest.mark.parametrize('foreach', [False, True])
@pytest.mark.parametrize('hyper', HYPER, ids=str)
def test_sgdw_is_decoupled_decay_sgd(hyper, foreach):
    """Five steps equal the reference's ``w <- w - lr b - lr wd w_old`` with
    torch-SGD momentum on the raw gradient (no projection), in float64."""
    params = _params()
    reference = ReferenceSGDWGC(params, [None] * len(params), **hyper)
    optimizer = SGDW(params, foreach=foreach, **hyper)
    for step in range(5):
        grads = _grads(step)
        for param, grad in zip(params, grads):
            param.grad = grad.clone()
        optimizer.step()
        reference.step(grads)
        for param, expected in zip(params, reference.weights):
            torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-13)
    assert [g['weight_decay'] for g in optimizer.param_groups] == [hyper['weight_decay']]


def test_sgdw_equals_sgdwgc_without_gc():
    """SGDWGC with every group's gc off takes SGDW's steps, in float32."""
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)
    plain, twin = _params(torch.float32), _params(torch.float32)
    sgdw = SGDW(plain, **hyper)
    sgdwgc = SGDWGC([dict(params=twin, gc=False)], **hyper)
    for step in range(5):
        for a, b, grad in zip(plain, twin, _grads(step, torch.float32)):
            a.grad, b.grad = grad.clone(), grad.clone()
        sgdw.step()
        sgdwgc.step()
    for a, b in zip(plain, twin):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_group_decay_and_a_tensor_without_gradient():
    """Each group decays by its own ``weight_decay`` (MMEngine's multipliers set
    it per group); a tensor without a gradient is left alone, as torch does."""
    decayed, kept, idle = (nn.Parameter(torch.ones(3, dtype=torch.float64)) for _ in range(3))
    optimizer = SGDW(
        [dict(params=[decayed]), dict(params=[kept, idle], weight_decay=0.0)],
        lr=0.5,
        weight_decay=0.2,
    )
    decayed.grad, kept.grad = (
        torch.zeros(3, dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
    )
    optimizer.step()
    torch.testing.assert_close(decayed.detach(), torch.full((3,), 0.9, dtype=torch.float64))
    assert torch.equal(kept.detach(), torch.ones(3, dtype=torch.float64))
    assert torch.equal(idle.detach(), torch.ones(3, dtype=torch.float64))


def test_closure_loss_and_state_dict():
    """A closure runs first and its loss is returned; the state dict keeps each
    group's decay, and a loaded optimizer continues the run exactly."""
    weight = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = SGDW([weight], lr=0.1, momentum=0.9, weight_decay=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (weight**2).sum()
        loss.backward()
        return loss

    assert float(optimizer.step(closure)) == 5.0
    state = copy.deepcopy(optimizer.state_dict())  # its buffers, not shared
    assert state['param_groups'][0]['weight_decay'] == 0.1
    twin = nn.Parameter(weight.detach().clone())
    resumed = SGDW([twin], lr=0.1, momentum=0.9, weight_decay=0.1)
    resumed.load_state_dict(state)
    twin.grad = torch.tensor([0.5, 0.5], dtype=torch.float64)
    weight.grad = twin.grad.clone()
    optimizer.step()
    resumed.step()
    assert torch.equal(weight, twin)


def test_registered_and_built_by_mmengine():
    model = nn.Linear(3, 2)
    wrapper = build_optim_wrapper(
        model, dict(optimizer=dict(type='SGDW', lr=0.1, momentum=0.9, weight_decay=1e-3))
    )
    assert type(wrapper.optimizer) is SGDW and OPTIMIZERS.get('SGDW') is SGDW


def test_fused_is_refused_in_one_sentence():
    with pytest.raises(ConfigError, match=r'SGDW takes no fused=True .*; use fused=None or False'):
        SGDW([nn.Parameter(torch.ones(2))], lr=0.1, fused=True)


@pytest.mark.parametrize('variant', ['grad', 'update', 'sgdw'])
def test_gc_switch_makes_sgdw_sgdwgc(variant):
    """``--gc`` on an SGDW config trains SGDWGC (its decay stays decoupled), for
    every variant."""
    from mmengine.config import Config

    from mmgc import enable_gc

    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='SGDW', lr=0.1, weight_decay=1e-3))))
    enable_gc(cfg, variant=variant)
    assert cfg.optim_wrapper.optimizer.type == 'SGDWGC'


def test_gc_hooks_refuse_sgdw():
    """The GC constructor and the hooks refuse SGDW, whose decay no hook sees,
    naming SGDWGC among the valid ones: never a silently coupled decay."""
    from mmgc import attach_gc_hooks
    from mmgc.engine.optimizers import supports_gc

    assert not supports_gc(SGDW)
    model = nn.Conv2d(3, 4, 3)
    with pytest.raises(ConfigError, match=r"one of .*SGDWGC.*; got optimizer type 'SGDW'"):
        build_optim_wrapper(
            model,
            dict(
                optimizer=dict(type='SGDW', lr=0.1),
                constructor='GCOptimWrapperConstructor',
                gc=dict(layers=('conv',)),
            ),
        )
    with pytest.raises(ConfigError, match='cannot apply gradient centralization to SGDW'):
        attach_gc_hooks(SGDW(model.parameters(), lr=0.1))
