"""A baseline checkpoint resumed into its GC twin, on the real configs.

``configs/baselines/mask_rcnn_r50_fpn.py`` (MMDetection's Mask R-CNN R50-FPN:
stem and stage 1 frozen, BN in eval mode) and ``configs/mask_rcnn_r50_fpn_gc.py``
are run with ``tools/train.py`` as subprocesses, as a user runs them, shrunk
only in what cannot run on a CPU in seconds: no pretrained backbone
(``init_cfg=None``), the first two 64x64 images of the shared shapes dataset
(``indices=2``), one iteration per epoch, no validation. The baseline trains epoch 1; the GC twin
resumes from its ``epoch_1.pth`` and trains epoch 2.
``OptimStateDumpHook`` (tests/data/fault_hooks.py) records the optimizer
the resumed run starts with.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from mmgc.runtime.checkpoint import safe_torch_load

pytestmark = pytest.mark.slow

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


def _train(tools, config: Path, work_dir: Path, *extra: str) -> str:
    args = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir, *extra]
    return tools.output(tools.ok(tools.run(args, timeout=600)))


def test_the_gc_twin_holds_the_baselines_parameters_frozen_ones_with_gc(tools):
    """The real R50-FPN twins, built in-process: the same tensors in both
    optimizers, and each frozen conv weight already set up for GC."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    gc_cfg = Config.fromfile(str(tools.root / 'configs/mask_rcnn_r50_fpn_gc.py'))
    base_cfg = Config.fromfile(str(tools.root / 'configs/baselines/mask_rcnn_r50_fpn.py'))
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


def test_baseline_checkpoint_resumes_into_its_gc_twin(tools, shapes, tmp_path):
    root = shapes['data_root']
    base_dir, gc_dir = tmp_path / 'baseline', tmp_path / 'gc'
    base_config = _config(
        tools, tmp_path, 'base', 'configs/baselines/mask_rcnn_r50_fpn.py', root, 1
    )
    _train(tools, base_config, base_dir)
    baseline = safe_torch_load(str(base_dir / 'epoch_1.pth'))
    saved = baseline['optimizer']
    (saved_group,) = saved['param_groups']
    base_start = torch.load(base_dir / 'optim_at_start.pth', weights_only=True)
    names = base_start['names']
    # MMEngine's default constructor: every parameter, frozen ones included
    assert saved_group['params'] == list(range(len(names)))
    frozen = [
        n for n in names if n.startswith(('backbone.conv1.', 'backbone.bn1.', 'backbone.layer1.'))
    ]
    assert frozen and not any(names.index(n) in saved['state'] for n in frozen)

    gc_config = _config(tools, tmp_path, 'gc', 'configs/mask_rcnn_r50_fpn_gc.py', root, 2)
    log = _train(tools, gc_config, gc_dir, '--resume', base_dir / 'epoch_1.pth')
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
    assert start['buffers'].keys() == {names[i] for i in saved['state']}
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
