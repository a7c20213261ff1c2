"""The demo configs of the other codebases (configs/mmseg/demo,
configs/mmpretrain/demo) read the shapes where
``mmgc.runtime.shapes_tasks`` renders them, with the classes it writes, in
their codebase's scope; ``enable_gc`` (``--gc``) puts GC on their optimizer."""

from __future__ import annotations

import pytest
import torch
from mmengine.config import Config

from mmgc import enable_gc
from mmgc.runtime.shapes_tasks import SEG_CLASSES, render_classification, render_segmentation
from tests.conftest import ROOT, codebase_installed

SEG = ROOT / 'configs/mmseg/demo/fcn_r18_shapes.py'
CLS = ROOT / 'configs/mmpretrain/demo/resnet18_shapes.py'


def _datasets(cfg: Config) -> dict:
    return {s: cfg[f'{s}_dataloader'].dataset for s in ('train', 'val', 'test')}


@codebase_installed('mmseg')
def test_the_segmentation_demo_reads_the_rendered_label_maps(shapes):
    rendered = render_segmentation(shapes)
    cfg = Config.fromfile(str(SEG))
    assert cfg.default_scope == 'mmseg'
    for split, dataset in _datasets(cfg).items():
        split = 'train' if split == 'train' else 'val'
        assert dataset.data_prefix == dict(
            img_path=rendered[f'{split}_img_path'], seg_map_path=rendered[f'{split}_seg_map_path']
        )
        assert tuple(dataset.metainfo.classes) == SEG_CLASSES == rendered['classes']
    assert cfg.model.decode_head.num_classes == len(SEG_CLASSES)


@codebase_installed('mmpretrain')
def test_the_classification_demo_reads_the_rendered_crops(shapes):
    rendered = render_classification(shapes)
    cfg = Config.fromfile(str(CLS))
    assert cfg.default_scope == 'mmpretrain'
    for split, dataset in _datasets(cfg).items():
        split = 'train' if split == 'train' else 'val'
        assert dataset.ann_file == rendered[f'{split}_ann_file']
        assert dataset.data_prefix == rendered[f'{split}_data_prefix']
        assert tuple(dataset.metainfo.classes) == rendered['classes']
    assert cfg.model.head.num_classes == len(rendered['classes'])


@pytest.mark.parametrize(
    'path, scope',
    [
        pytest.param(SEG, 'mmseg', marks=codebase_installed('mmseg')),
        pytest.param(CLS, 'mmpretrain', marks=codebase_installed('mmpretrain')),
    ],
)
def test_gc_switch_on_each_demo_centralizes_every_conv_weight(path, scope):
    """``--gc --gc-layers conv`` on the full-size demo: the GC groups hold exactly
    the model's conv weights (built with the codebase's own classes)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope

    from mmgc.runtime.codebases import CODEBASES, prepare_codebase

    cfg = Config.fromfile(str(path))
    enable_gc(cfg, layers=('conv',))
    prepare_codebase(CODEBASES[scope])
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    groups = wrapper.optimizer.param_groups  # (not the wrapper's: it adds base_param_settings)
    centralized = {id(p) for g in groups if g.get('gc') for p in g['params']}
    convs = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert centralized == convs and convs
