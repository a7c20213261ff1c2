"""The AdamW example configs: GC twin and baseline differ only in
the optim wrapper, and the GC one trains a real Mask R-CNN step with AdamW
seeing centralized gradients."""

import math

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import mmgc  # noqa: F401
from tests.conftest import ROOT, detection_batch

CONFIGS = ROOT / 'configs' / 'adamw'
GC = CONFIGS / 'mask_rcnn_r50_fpn_adamw_gc.py'
BASE = CONFIGS / 'baselines' / 'mask_rcnn_r50_fpn_adamw.py'


def test_twins_differ_only_in_the_optimizer():
    gc, base = Config.fromfile(str(GC)).to_dict(), Config.fromfile(str(BASE)).to_dict()
    assert {k for k in gc.keys() | base.keys() if gc.get(k) != base.get(k)} == {
        'optim_wrapper',
        'custom_imports',
    }
    assert gc['optim_wrapper']['optimizer'] == base['optim_wrapper']['optimizer']
    assert gc['optim_wrapper']['optimizer']['type'] == 'AdamW'
    assert gc['optim_wrapper']['gc'] == dict(layers=('conv', 'fc'))
    paramwise = gc['optim_wrapper']['paramwise_cfg']
    assert (
        paramwise['norm_decay_mult']
        == 0.0
        == base['optim_wrapper']['paramwise_cfg']['norm_decay_mult']
    )
    assert 'constructor' not in base['optim_wrapper']


@pytest.mark.slow
def test_gc_adamw_trains_a_step_with_centralized_gradients():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(str(GC))
    cfg.model.backbone.init_cfg = None
    # thinner heads and smaller samples, the same module types
    cfg.model.roi_head.bbox_head.num_classes = 3
    cfg.model.roi_head.mask_head.num_classes = 3
    cfg.model.train_cfg.rcnn.sampler.num = 64
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
        model.init_weights()
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    optimizer = wrapper.optimizer
    assert type(optimizer) is torch.optim.AdamW
    norms = [g for g in optimizer.param_groups if g['weight_decay'] == 0.0]
    assert norms and not any(g['gc'] for g in norms)  # norm_decay_mult kept, no GC on norms

    conv = model.backbone.layer2[0].conv1.weight
    seen = {}

    def record(opt, args, kwargs):  # after the GC pre-hook
        seen['sums'] = conv.grad.sum((1, 2, 3))

    optimizer.register_step_pre_hook(record)
    model.train()
    losses = model.train_step(detection_batch(0), wrapper)
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert seen['sums'].abs().max() < 1e-6
