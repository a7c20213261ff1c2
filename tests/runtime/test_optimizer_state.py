"""A plain optimizer's state mapped onto a GC optimizer's groups, by parameter.

The baseline optimizer is what MMEngine builds for a baseline config
(``torch.optim.SGD``, default constructor); the GC one what
``GCOptimWrapperConstructor`` builds for its twin. Models have frozen
stages, as every MMDetection R50/R101/X101 config has. The reference is the
baseline optimizer itself: after the mapping each parameter must hold its own
momentum buffer, and tensors without GC must then move exactly as the
baseline moves them.

At the end, a baseline checkpoint resumed into its GC twin, on the real
configs: ``configs/mmdet/baselines/mask_rcnn_r50_fpn.py`` (MMDetection's Mask R-CNN R50-FPN:
stem and stage 1 frozen, BN in eval mode) and ``configs/mmdet/mask_rcnn_r50_fpn_gc.py``
are run with ``tools/train.py`` as subprocesses, as a user runs them, shrunk
only in what cannot run on a CPU in seconds: no pretrained backbone
(``init_cfg=None``), the first two 64x64 images of the shared shapes dataset
(``indices=2``), one iteration per epoch, no validation. The baseline trains epoch 1; the GC twin
resumes from its ``epoch_1.pth`` and trains epoch 2.
``OptimStateDumpHook`` (tests/data/fault_hooks.py) records the optimizer
the resumed run starts with.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch import nn

import mmgc  # noqa: F401  (registers SGDGC and GCOptimWrapperConstructor)
from mmgc.runtime.checkpoint import install_safe_checkpoint_loader, safe_torch_load
from mmgc.runtime.optimizer_state import (
    PlainOptimizerStateHook,
    is_plain_state,
    plain_state_to_gc,
)
from tests.conftest import ToyData

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

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.head(self.up(self.bn(self.stem(inputs)).relu()).mean((2, 3)))
        return dict(loss=out.square().mean()) if mode == 'loss' else out


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 6, 6, generator=gen), mode='loss')['loss'].backward()
        optimizer.step()


def _by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """name -> (group options, momentum buffer or None)."""
    names = {id(p): n for n, p in model.named_parameters()}
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
    assert not is_plain_state(gc.state_dict(), gc.param_groups)  # a GC checkpoint
    assert not is_plain_state(saved, baseline.param_groups)  # a plain run resumed as such
    assert not is_plain_state(None, gc.param_groups)
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


def test_hook_in_a_runner_resumes_and_leaves_weight_only_loads_alone(tmp_path, toy_runner):
    install_safe_checkpoint_loader()  # as the tools do: MMEngine's loads on every torch

    def run(work_dir, optim_wrapper, epochs, hooks=(), **load):
        return toy_runner(
            tmp_path / work_dir,
            model=Net(),
            data=ToyData(4),
            optim_wrapper=optim_wrapper,
            epochs=epochs,
            hooks=[PlainOptimizerStateHook(), *hooks],
            default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
            cfg=dict(resume=load.get('resume', False)),  # as Runner.from_cfg records it
            **load,
        )

    base = run('base', BASELINE, 1)
    checkpoint = tmp_path / 'base' / 'epoch_1.pth'
    saved = safe_torch_load(str(checkpoint))['optimizer']
    (indices,) = [g['params'] for g in saved['param_groups']]
    names = [n for n, _ in base.model.named_parameters()]

    seen = _Buffers()
    resumed = run('gc', GC, 2, [seen], resume=True, load_from=str(checkpoint))
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
    run('ft', GC, 1, [fine_tune], load_from=str(other))
    assert fine_tune.buffers == {}  # the optimizer starts afresh
    with pytest.raises(ValueError, match='it holds 7 parameters, and the model has 8'):
        run('ro', GC, 2, resume=True, load_from=str(other))


# --- a baseline checkpoint resumed into its GC twin, on the real configs ---


SHRINK = """
_base_ = '{base}'
custom_imports = dict(imports=['mmgc', 'fault_hooks'], allow_failed_imports=False)
model = dict(backbone=dict(init_cfg=None))
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        indices=2,
        data_root='{data_root}/',
        metainfo=dict(classes=('circle', 'triangle', 'square', 'star')),
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = val_evaluator = val_cfg = None
test_dataloader = test_evaluator = test_cfg = None
train_cfg = dict(max_epochs={epochs})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
custom_hooks = [dict(type='OptimStateDumpHook')]
randomness = dict(seed=0)
"""


def _config(tools, tmp_path: Path, name: str, base: str, data_root: str, epochs: int) -> Path:
    path = tmp_path / f'{name}.py'
    path.write_text(SHRINK.format(base=tools.root / base, data_root=data_root, epochs=epochs))
    return path


def _train_tool(tools, config: Path, work_dir: Path, *extra: str) -> str:
    args = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir, *extra]
    return tools.output(tools.ok(tools.run(args, timeout=600)))


@pytest.mark.slow
def test_the_gc_twin_holds_the_baselines_parameters_frozen_ones_with_gc(tools):
    """The real R50-FPN twins, built in-process: the same tensors in both
    optimizers, and each frozen conv weight already set up for GC."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    gc_cfg = Config.fromfile(str(tools.root / 'configs/mmdet/mask_rcnn_r50_fpn_gc.py'))
    base_cfg = Config.fromfile(str(tools.root / 'configs/mmdet/baselines/mask_rcnn_r50_fpn.py'))
    gc_cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(gc_cfg.model)
        baseline = build_optim_wrapper(model, base_cfg.optim_wrapper).optimizer
        gc = build_optim_wrapper(model, gc_cfg.optim_wrapper).optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    (base_group,) = baseline.param_groups
    gc_of = {names[id(p)]: (g['gc'], g['gc_dim']) for g in gc.param_groups for p in g['params']}
    assert sorted(gc_of) == sorted(names[id(p)] for p in base_group['params'])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert 'backbone.conv1.weight' in frozen and 'backbone.layer1.2.conv3.weight' in frozen
    assert 'backbone.layer2.0.conv1.weight' not in frozen
    modules = dict(model.named_modules())
    frozen_convs = set()
    for name in frozen:
        owner, _, leaf = name.rpartition('.')
        if leaf == 'weight' and isinstance(modules[owner], torch.nn.Conv2d):
            frozen_convs.add(name)
        assert gc_of[name] == ((True, 0) if name in frozen_convs else (False, 0)), name
    assert len(frozen_convs) == 1 + 3 * 3 + 1  # the stem, stage 1's 3 blocks, its downsample
    assert gc_of['roi_head.mask_head.upsample.weight'] == (True, 1)
    assert len(gc.param_groups) == 3


@pytest.mark.slow
def test_baseline_checkpoint_resumes_into_its_gc_twin(tools, shapes, tmp_path):
    root = shapes['data_root']
    base_dir, gc_dir = tmp_path / 'baseline', tmp_path / 'gc'
    base_config = _config(
        tools, tmp_path, 'base', 'configs/mmdet/baselines/mask_rcnn_r50_fpn.py', root, 1
    )
    _train_tool(tools, base_config, base_dir)
    baseline = safe_torch_load(str(base_dir / 'epoch_1.pth'))
    saved = baseline['optimizer']
    (saved_group,) = saved['param_groups']
    assert 'gc' not in saved_group
    base_start = torch.load(base_dir / 'optim_at_start.pth', weights_only=True)
    names = base_start['names']
    # MMEngine's default constructor: every parameter, frozen ones included
    assert saved_group['params'] == list(range(len(names)))
    frozen = [
        n for n in names if n.startswith(('backbone.conv1.', 'backbone.bn1.', 'backbone.layer1.'))
    ]
    assert frozen and not any(names.index(n) in saved['state'] for n in frozen)

    gc_config = _config(tools, tmp_path, 'gc', 'configs/mmdet/mask_rcnn_r50_fpn_gc.py', root, 2)
    log = _train_tool(tools, gc_config, gc_dir, '--resume', base_dir / 'epoch_1.pth')
    assert 'resumed epoch: 1, iter: 1' in log
    assert 'Resuming SGDGC from the state of a plain optimizer' in log

    start = torch.load(gc_dir / 'optim_at_start.pth', weights_only=True)
    assert start['optimizer'] == 'SGDGC' and start['names'] == names
    assert sum(g['size'] for g in start['groups']) == len(names)  # frozen ones too
    assert sorted((g['gc'], g['gc_dim']) for g in start['groups']) == [
        (False, 0),
        (True, 0),
        (True, 1),  # the mask head's transposed conv
    ]
    for group in start['groups']:
        for key in ('lr', 'initial_lr', 'momentum', 'weight_decay', 'dampening', 'nesterov'):
            assert group[key] == saved_group[key], key
    # every buffer on its own parameter (position i = i-th of model.parameters())
    assert saved['state'] and start['buffers'].keys() == {names[i] for i in saved['state']}
    for index, state in saved['state'].items():
        torch.testing.assert_close(
            start['buffers'][names[index]], state['momentum_buffer'], rtol=0, atol=0
        )

    final = safe_torch_load(str(gc_dir / 'epoch_2.pth'))
    assert final['meta']['epoch'] == 2 and final['meta']['iter'] == 2
    before, after = baseline['state_dict'], final['state_dict']
    assert torch.equal(after['backbone.conv1.weight'], before['backbone.conv1.weight'])
    assert not torch.equal(
        after['backbone.layer2.0.conv1.weight'], before['backbone.layer2.0.conv1.weight']
    )
    assert len(final['optimizer']['param_groups']) == 3
    assert any(g['gc'] for g in final['optimizer']['param_groups'])
