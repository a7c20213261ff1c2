"""GC for MMPretrain's LARS and Lamb (the optimizers of its self-supervised
configs): the ``update`` variant only (their trust ratios read the raw
gradient), through mmgc's step hooks and the GC constructor. The oracle is
the plain optimizer itself: from the same state, the GC step is ``P`` of its
step, in float64, and each output unit's weight sum stays put (Eq. 3)."""

from __future__ import annotations

import copy

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch import nn

from mmgc import attach_gc_hooks
from mmgc.engine.optimizers import supports_gc
from mmgc.errors import ConfigError
from tests.conftest import codebase_installed

pytestmark = codebase_installed('mmpretrain')

HYPER = {
    'LARS': dict(lr=0.1, momentum=0.9, weight_decay=1e-4, eta=1e-3),
    'Lamb': dict(lr=1e-2, weight_decay=0.05),
}


def _optimizer_cls(name: str) -> type:
    from mmpretrain.engine import optimizers

    return getattr(optimizers, name)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)).double()


def _centred(tensor: torch.Tensor) -> torch.Tensor:
    return tensor - tensor.mean(dim=tuple(range(1, tensor.ndim)), keepdim=True)


def _grads(model: nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(4, 3, 6, 6, generator=generator, dtype=torch.float64)
    model.zero_grad()
    model(x).square().mean().backward()


@pytest.mark.parametrize('name', HYPER)
def test_update_variant_is_p_of_the_plain_step(name):
    """Each step from a common state: the GC model's weight update is ``P`` of
    the plain optimizer's update for the conv and FC weights and equal to it
    for the biases; the weights' per-unit sums never move over five steps."""
    cls = _optimizer_cls(name)
    assert supports_gc(cls)
    model = _model()
    sums = {
        n: p.detach().sum(dim=tuple(range(1, p.ndim)))
        for n, p in model.named_parameters()
        if p.ndim > 1
    }
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim == 1]
    groups = [
        dict(params=weights, gc=True, gc_dim=0, gc_variant='update'),
        dict(params=others, gc=False),
    ]
    optimizer = cls(groups, **HYPER[name])
    attach_gc_hooks(optimizer)
    for step in range(5):
        _grads(model, step)
        plain_model = copy.deepcopy(model)
        plain = cls(
            [
                dict(params=[p for p in plain_model.parameters() if p.ndim > 1]),
                dict(params=[p for p in plain_model.parameters() if p.ndim == 1]),
            ],
            **HYPER[name],
        )
        plain.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        for p, q in zip(model.parameters(), plain_model.parameters()):
            q.grad = p.grad.clone()  # deepcopy leaves the gradients behind
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
        plain.step()
        for p, q, b in zip(model.parameters(), plain_model.parameters(), before):
            taken, plain_step = b - p.detach(), b - q.detach()
            expected = _centred(plain_step) if p.ndim > 1 else plain_step
            torch.testing.assert_close(taken, expected, rtol=1e-10, atol=1e-14)
            assert p.ndim == 1 or not torch.allclose(plain_step, expected)  # GC did something
        for n, p in model.named_parameters():
            if p.ndim > 1:
                torch.testing.assert_close(p.detach().sum(dim=tuple(range(1, p.ndim))), sums[n])


@pytest.mark.parametrize('name', HYPER)
def test_the_grad_variant_is_refused_naming_update(name):
    """The default variant is refused in one sentence, by the hooks and by the
    constructor, naming the variant these optimizers take."""
    model = _model()
    optimizer = _optimizer_cls(name)(
        [dict(params=list(model.parameters()), gc_variant='grad')], **HYPER[name]
    )
    refused = rf"gc_variant='grad' is not defined for {name} \(its trust ratio reads the raw"
    with pytest.raises(ConfigError, match=refused + r" gradient\); use one of \['update'\]"):
        attach_gc_hooks(optimizer)
    cfg = dict(
        optimizer=dict(type=name, **HYPER[name]),
        constructor='GCOptimWrapperConstructor',
        gc=dict(layers=('conv', 'fc')),
    )
    refused = (
        rf"GC variant 'grad' is not defined for optimizer type '{name}' \(its trust ratio "
        r'reads the raw gradient\), which takes'
    )
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # as in an MMPretrain run
        with pytest.raises(ConfigError, match=refused + r" \['update'\]"):
            build_optim_wrapper(model, copy.deepcopy(cfg))
        cfg['gc']['variant'] = 'update'
        wrapper = build_optim_wrapper(model, cfg)  # MMPretrain's registry, mmgc's constructor
    assert type(wrapper.optimizer).__name__ == name
    variants = {g['gc_variant'] for g in wrapper.optimizer.param_groups if g['gc']}
    assert variants == {'update'}
