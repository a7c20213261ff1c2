"""SGDGC and the GC constructor on a real MMDetection Mask R-CNN (ResNet-18),
built from a config that inherits MMDetection's and uses the README snippet."""

import math

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import mmgc  # noqa: F401  (registers SGDGC and GCOptimWrapperConstructor)
from mmgc import SGDGC

mmdet = pytest.importorskip('mmdet')

CONFIG = """
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGDGC', lr=0.02, momentum=0.9, weight_decay=1e-4),
    constructor='GCOptimWrapperConstructor',
    paramwise_cfg=dict(gc_layers=('conv', 'fc')))
# ResNet-18 from scratch, narrower heads: the same modules as R50 Mask R-CNN
width = 64
model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=128, num_classes=3),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=3)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))))
"""


def _batch(seed: int, size: int = 96):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(2):
        image = torch.randint(0, 255, (3, size, size), generator=gen, dtype=torch.uint8)
        boxes, masks = [], []
        for _ in range(2):
            x0, y0 = torch.randint(0, size // 2, (2,), generator=gen).tolist()
            w, h = torch.randint(16, size // 2, (2,), generator=gen).tolist()
            boxes.append([x0, y0, x0 + w, y0 + h])
            mask = torch.zeros(size, size, dtype=torch.uint8)
            mask[y0 : y0 + h, x0 : x0 + w] = 1
            image[:, y0 : y0 + h, x0 : x0 + w] = 200  # a visible object
            masks.append(mask.numpy())
        instances = InstanceData(
            bboxes=torch.tensor(boxes, dtype=torch.float32),
            labels=torch.randint(0, 3, (2,), generator=gen),
            masks=BitmapMasks(masks, size, size),
        )
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                scale_factor=(1.0, 1.0),
            )
        )
        sample.gt_instances = instances
        inputs.append(image)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


BASELINE_OPTIM = """
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4))
"""


def _build(tmp_path, gc: bool):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    path = tmp_path / 'mask_rcnn_r18_fpn.py'
    path.write_text(CONFIG if gc else CONFIG + BASELINE_OPTIM)
    cfg = Config.fromfile(str(path))
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
        model.init_weights()
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    return model, wrapper


def _conv_fc_weights(model):
    return {
        f'{name}.weight': (
            mod.weight,
            1 if isinstance(mod, torch.nn.ConvTranspose2d) else 0,
        )
        for name, mod in model.named_modules()
        if isinstance(mod, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))
        and mod.weight.requires_grad
    }


def _train_and_measure(model, wrapper, weights, steps=3):
    """Train ``steps`` iterations; return, per weight, whether every output
    unit's weight sum stayed within float32 rounding of its initial value,
    and whether the weight moved at all."""
    initial = {n: p.detach().double().sum(_dims(p, d)) for n, (p, d) in weights.items()}
    start = {n: p.detach().clone() for n, (p, _) in weights.items()}
    model.train()
    for step in range(steps):
        losses = model.train_step(_batch(step), wrapper)
        assert all(math.isfinite(float(v)) for v in losses.values()), losses
        assert float(losses['loss']) > 0
    eps = torch.finfo(torch.float32).eps
    kept, moved = {}, {}
    for name, (p, dim) in weights.items():
        dims = _dims(p, dim)
        after = p.detach().double().sum(dims)
        bound = steps * eps * p.detach().abs().double().sum(dims) + 1e-12
        kept[name] = bool(torch.all((after - initial[name]).abs() <= bound))
        moved[name] = not torch.equal(p.detach(), start[name])
    return kept, moved


@pytest.mark.slow
def test_mask_rcnn_trains_with_gc_and_keeps_weight_sums(tmp_path):
    model, wrapper = _build(tmp_path, gc=True)
    optimizer = wrapper.optimizer
    assert isinstance(optimizer, SGDGC)
    # lean groups: at most one per distinct setting, never one per tensor
    assert len(optimizer.param_groups) <= 3

    names = {id(p): n for n, p in model.named_parameters()}
    centralized = {
        names[id(p)]: g['gc_dim']
        for g in optimizer.param_groups
        if g['gc']
        for p in g['params']
        if p.dim() > 1 and p.requires_grad  # frozen weights are kept too, with GC flags
    }
    weights = _conv_fc_weights(model)
    # every trainable conv and FC weight, with its output-unit dim, nothing else
    assert centralized == {n: d for n, (_, d) in weights.items()}
    assert centralized['roi_head.mask_head.upsample.weight'] == 1  # the deconv

    kept, moved = _train_and_measure(model, wrapper, weights)
    assert all(kept.values()), [n for n, ok in kept.items() if not ok]
    assert sum(moved.values()) > 0.9 * len(moved)


@pytest.mark.slow
def test_mask_rcnn_baseline_drifts(tmp_path):
    """The control: with torch's SGD the same sums leave the bound."""
    model, wrapper = _build(tmp_path, gc=False)
    assert type(wrapper.optimizer) is torch.optim.SGD
    kept, moved = _train_and_measure(model, wrapper, _conv_fc_weights(model))
    drifted = [n for n, ok in kept.items() if not ok and moved[n]]
    assert len(drifted) > 0.8 * len(kept)


def _dims(p, out_dim):
    return tuple(d for d in range(p.dim()) if d != out_dim)
