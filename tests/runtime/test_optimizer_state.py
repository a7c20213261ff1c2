"""A plain optimizer's state mapped onto a GC optimizer's groups, by parameter.

The baseline optimizer is what MMEngine builds for a baseline config
(``torch.optim.SGD``, default constructor); the GC one what
``GCOptimWrapperConstructor`` builds for its twin. Models have frozen
stages, as every MMDetection R50/R101/X101 config has. The reference is the
baseline optimizer itself: after the mapping each parameter must hold its own
momentum buffer, and tensors without GC must then move exactly as the
baseline moves them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner
from torch import nn

import mmgc  # noqa: F401  (registers SGDGC and GCOptimWrapperConstructor)
from mmgc.runtime.checkpoint import install_safe_checkpoint_loader, safe_torch_load
from mmgc.runtime.optimizer_state import (
    PlainOptimizerStateHook,
    is_plain_state,
    plain_state_to_gc,
)

SGD = dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-3)
BASELINE = dict(type='OptimWrapper', optimizer=SGD)
GC = dict(
    type='OptimWrapper',
    optimizer=dict(SGD, type='SGDGC'),
    constructor='GCOptimWrapperConstructor',
    paramwise_cfg=dict(gc_layers=('conv', 'fc')),
)


class Net(BaseModel):
    """A frozen stem (conv + BN), a transposed conv, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.head = nn.Linear(4, 2)
        self.stem.requires_grad_(False)
        self.bn.requires_grad_(False)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.head(self.up(self.bn(self.stem(inputs)).relu()).mean((2, 3)))
        return dict(loss=out.square().mean()) if mode == 'loss' else out


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 6, 6, generator=gen), mode='loss')['loss'].backward()
        optimizer.step()


def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """name -> (group options, momentum buffer or None)."""
    names = _names(model)
    out = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            options = {k: v for k, v in group.items() if k != 'params'}
            out[names[id(p)]] = (options, optimizer.state[p].get('momentum_buffer'))
    return out


def _baseline_and_twin(optimizer_type: str = 'SGDGC'):
    """A trained baseline (model, SGD) and a GC twin with the same weights."""
    torch.manual_seed(0)
    model = Net()
    baseline = build_optim_wrapper(model, BASELINE).optimizer
    _train(model, baseline, 3, seed=1)
    twin = copy.deepcopy(model)
    gc = build_optim_wrapper(twin, dict(GC, optimizer=dict(SGD, type=optimizer_type))).optimizer
    return model, baseline, twin, gc


@pytest.mark.parametrize('optimizer_type', ['SGDGC', 'SGD'])
def test_buffers_go_to_their_parameters_and_the_run_continues(optimizer_type):
    model, baseline, twin, gc = _baseline_and_twin(optimizer_type)
    saved = copy.deepcopy(baseline.state_dict())
    assert len(saved['param_groups']) == 1 and len(gc.param_groups) == 3
    assert is_plain_state(saved, gc.param_groups)
    gc.load_state_dict(plain_state_to_gc(saved, gc.param_groups, twin))

    want, got = _by_name(model, baseline), _by_name(twin, gc)
    assert got.keys() == want.keys()  # the frozen stem is in both optimizers
    for name, (options, buffer) in want.items():
        got_options, got_buffer = got[name]
        for key in ('lr', 'initial_lr', 'momentum', 'weight_decay', 'dampening', 'nesterov'):
            assert got_options.get(key) == options.get(key), (name, key)
        if buffer is None:
            assert got_buffer is None, name  # frozen: never stepped
        else:
            torch.testing.assert_close(got_buffer, buffer, rtol=0, atol=0)
    gc_of = {name: (o['gc'], o['gc_dim']) for name, (o, _) in got.items()}
    assert gc_of == {
        'stem.weight': (True, 0),
        'stem.bias': (False, 0),
        'bn.weight': (False, 0),
        'bn.bias': (False, 0),
        'up.weight': (True, 1),
        'up.bias': (False, 0),
        'head.weight': (True, 0),
        'head.bias': (False, 0),
    }

    # The next step (same weights, same batch, so same gradients) moves the
    # tensors without GC as the baseline moves them, from their own buffers.
    _train(model, baseline, 1, seed=2)
    _train(twin, gc, 1, seed=2)
    for name in ('up.bias', 'head.bias'):
        torch.testing.assert_close(
            twin.get_parameter(name), model.get_parameter(name), rtol=1e-6, atol=1e-7
        )
    assert not torch.equal(twin.up.weight, model.up.weight)  # GC changed the weights' path


def test_a_saved_state_of_the_trainable_parameters_maps_too():
    """A baseline with paramwise_cfg holds only trainable tensors."""
    torch.manual_seed(0)
    model = Net()
    baseline = build_optim_wrapper(
        model, dict(BASELINE, paramwise_cfg=dict(norm_decay_mult=0.0))
    ).optimizer
    _train(model, baseline, 2, seed=1)
    gc = build_optim_wrapper(
        model, dict(GC, paramwise_cfg=dict(norm_decay_mult=0.0, gc_layers='conv'))
    ).optimizer
    saved = copy.deepcopy(baseline.state_dict())
    assert len(saved['param_groups']) == 4  # one per trainable tensor
    gc.load_state_dict(plain_state_to_gc(saved, gc.param_groups, model))
    for p in model.parameters():
        if p.requires_grad:
            torch.testing.assert_close(
                gc.state[p]['momentum_buffer'], baseline.state[p]['momentum_buffer']
            )


def test_states_that_do_not_fit_are_refused():
    model, baseline, twin, gc = _baseline_and_twin()
    saved = baseline.state_dict()

    fewer = copy.deepcopy(saved)
    fewer['param_groups'][0]['params'] = fewer['param_groups'][0]['params'][:-1]
    with pytest.raises(ValueError, match=r'it holds 7 parameters, and the model has 8 \(4 with'):
        plain_state_to_gc(fewer, gc.param_groups, twin)

    other = copy.deepcopy(saved)
    head = [n for n, _ in model.named_parameters()].index('head.weight')
    other['state'][head]['momentum_buffer'] = torch.zeros(3, 3)
    with pytest.raises(
        ValueError,
        match=r"momentum_buffer of 'head.weight' has shape \(3, 3\), the parameter \(2, 4\)",
    ):
        plain_state_to_gc(other, gc.param_groups, twin)

    mixed = copy.deepcopy(saved)
    group = mixed['param_groups'][0]
    mixed['param_groups'] = [
        dict(group, params=group['params'][:4]),
        dict(group, params=group['params'][4:], lr=0.5),
    ]
    with pytest.raises(ValueError, match=r'GC parameter group \d holds parameters whose saved'):
        plain_state_to_gc(mixed, gc.param_groups, twin)


def test_state_for_a_parameter_the_gc_optimizer_does_not_hold_is_refused():
    """A frozen stem left out of the GC optimizer (an MMEngine option) while
    the saved state has a momentum buffer for it."""
    torch.manual_seed(0)
    model = Net()
    model.stem.requires_grad_(True)
    baseline = build_optim_wrapper(model, BASELINE).optimizer
    _train(model, baseline, 1, seed=1)
    model.stem.requires_grad_(False)
    gc = build_optim_wrapper(model, dict(GC, paramwise_cfg=dict(bias_lr_mult=1.0))).optimizer
    with pytest.raises(
        ValueError, match=r"state for 'stem.weight', which the GC optimizer does not"
    ):
        plain_state_to_gc(baseline.state_dict(), gc.param_groups, model)


def test_gc_states_and_plain_runs_are_not_plain_states():
    model, baseline, twin, gc = _baseline_and_twin()
    assert not is_plain_state(gc.state_dict(), gc.param_groups)  # a GC checkpoint
    assert not is_plain_state(baseline.state_dict(), baseline.param_groups)  # plain run
    assert not is_plain_state(None, gc.param_groups)


class _Buffers(Hook):
    """Records the momentum buffers, by name, when training starts."""

    def before_train(self, runner) -> None:
        optimizer = runner.optim_wrapper.optimizer
        self.groups = [(g['gc'], g['gc_dim']) for g in optimizer.param_groups]
        self.buffers = {
            n: optimizer.state[p]['momentum_buffer'].clone()
            for n, p in runner.model.named_parameters()
            if 'momentum_buffer' in optimizer.state[p]
        }


def _runner(work_dir, name, optim_wrapper, epochs, hooks=(), **load):
    data = [
        dict(inputs=torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(i)))
        for i in range(4)
    ]
    return Runner(
        model=Net(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=data,
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2,
            collate_fn=dict(type='default_collate'),
        ),
        optim_wrapper=optim_wrapper,
        train_cfg=dict(by_epoch=True, max_epochs=epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        custom_hooks=[PlainOptimizerStateHook(), *hooks],
        randomness=dict(seed=0),
        cfg=dict(resume=load.get('resume', False)),  # as Runner.from_cfg records it
        **load,
    )


def test_hook_in_a_runner_resumes_and_leaves_weight_only_loads_alone(tmp_path):
    install_safe_checkpoint_loader()  # as the tools do: MMEngine's loads on every torch
    base = _runner(tmp_path / 'base', 'optimizer_state_base', BASELINE, 1)
    base.train()
    checkpoint = tmp_path / 'base' / 'epoch_1.pth'
    saved = safe_torch_load(str(checkpoint))['optimizer']
    (indices,) = [g['params'] for g in saved['param_groups']]
    names = [n for n, _ in base.model.named_parameters()]

    seen = _Buffers()
    resumed = _runner(
        tmp_path / 'gc', 'optimizer_state_gc', GC, 2, [seen], resume=True, load_from=str(checkpoint)
    )
    resumed.train()
    assert resumed.train_loop.epoch == 2
    assert sorted(seen.groups) == [(False, 0), (True, 0), (True, 1)]
    assert (
        seen.buffers.keys()
        == {names[i] for i in indices if i in saved['state']}
        == {'up.weight', 'up.bias', 'head.weight', 'head.bias'}
    )
    for index in saved['state']:
        torch.testing.assert_close(
            seen.buffers[names[index]], saved['state'][index]['momentum_buffer'], rtol=0, atol=0
        )

    # Weights only (no resume): the optimizer state is not used, so one that
    # does not fit this model (here: a tensor short) must not stop the run.
    full = safe_torch_load(str(checkpoint))
    full['optimizer']['param_groups'][0]['params'].pop()
    other = tmp_path / 'other.pth'
    torch.save(full, other)
    fine_tune = _Buffers()
    loaded = _runner(
        tmp_path / 'ft', 'optimizer_state_ft', GC, 1, [fine_tune], load_from=str(other)
    )
    loaded.train()
    assert fine_tune.buffers == {}  # the optimizer starts afresh
    resume_other = _runner(
        tmp_path / 'ro', 'optimizer_state_ro', GC, 2, resume=True, load_from=str(other)
    )
    with pytest.raises(ValueError, match='it holds 7 parameters, and the model has 8'):
        resume_other.train()
