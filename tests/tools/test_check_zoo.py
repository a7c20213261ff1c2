"""GC switched on (``enable_gc``) for a sample of MMDetection's own zoo, on the CPU.

Each config of :data:`SAMPLE` is loaded from ``mmdet/.mim/configs`` with
pretrained weights off, its model built once on the CPU, and its optimizer
built twice: as the config says (the baseline) and after ``enable_gc``.
``tools/check_zoo.py`` (:func:`check_gc`, the same check the script runs over
the whole zoo) then asserts that

1. exactly the selected tensors get GC: every conv and FC weight of the
   model (or every conv weight), decided here by module type, with its
   output-unit dim, and nothing else;
2. every other setting of every parameter equals the baseline's (each key
   of its group: lr, weight decay, momentum / betas, layer-decay scales,
   group names, ...);
3. one step on random gradients keeps the invariant of the optimizer and
   variant (SGD: each output unit's weight sum, Eq. 3; an adaptive optimizer
   with GC on the gradient: zero-mean rows of the first moment; GC on the
   update: the weight sums), and weights without GC break it.

``AmpOptimWrapper`` configs: MMEngine's AMP wrapper asserts a GPU, so their
optimizer is built through ``GCOptimWrapperConstructor.build_optimizer``
with the AMP type kept in the config, and :func:`test_amp_wrapper_is_built_as_configured`
shows that the constructor's ``__call__`` hands that type to MMEngine (which
then refuses without a GPU). Not exercised here: the AMP step itself (see
``tests/engine/optimizers/test_amp.py``), forward passes, data.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

import pytest
import torch

from tests.conftest import load_tool

check_zoo = load_tool('check_zoo')

HAS_MMPRETRAIN = importlib.util.find_spec('mmpretrain') is not None
NEEDS_MMPRETRAIN = pytest.mark.skipif(
    not HAS_MMPRETRAIN,
    reason="MMDetection's ConvNeXt configs import mmpretrain (an optional package), absent here",
)
CONV_FC, CONV = ('conv', 'fc'), ('conv',)

#: (config, layers, variant): each kind of issue 20 at least once.
SAMPLE = [
    ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', CONV_FC, 'grad'),  # two-stage, SGD
    ('faster_rcnn/faster-rcnn_r50_fpn_amp-1x_coco.py', CONV, 'grad'),  # AMP, conv only
    ('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', CONV_FC, 'grad'),  # transposed conv
    ('cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', CONV_FC, 'grad'),
    ('retinanet/retinanet_r18_fpn_1x_coco.py', CONV_FC, 'grad'),  # one-stage
    ('fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', CONV_FC, 'grad'),  # bias lr/decay mults
    ('yolox/yolox_tiny_8xb8-300e_coco.py', CONV_FC, 'grad'),  # nesterov, no norm decay
    ('rtmdet/rtmdet_tiny_8xb32-300e_coco.py', CONV_FC, 'grad'),  # AdamW, bypass_duplicate
    ('detr/detr_r18_8xb2-500e_coco.py', CONV_FC, 'grad'),  # nn.MultiheadAttention
    ('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', CONV_FC, 'grad'),
    ('dino/dino-4scale_r50_8xb2-12e_coco.py', CONV_FC, 'grad'),
    ('swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', CONV_FC, 'grad'),  # Swin, AdamW
    # ConvNeXt: AMP, AdamW, MMDetection's LearningRateDecayOptimizerConstructor
    pytest.param(
        'convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
        CONV_FC,
        'grad',
        marks=NEEDS_MMPRETRAIN,
    ),
    ('centernet/centernet_r18_8xb16-crop512-140e_coco.py', CONV_FC, 'grad'),
    ('ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py', CONV_FC, 'grad'),  # depthwise
    ('yolof/yolof_r50-c5_8xb8-1x_coco.py', CONV, 'grad'),  # custom_keys lr_mult
    ('gn+ws/mask-rcnn_r50_fpn_gn-ws-all_2x_coco.py', CONV_FC, 'grad'),  # ConvWS2d
    ('dcnv2/faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py', CONV_FC, 'grad'),  # MMCV's DCNv2
    ('solov2/solov2-light_r18_fpn_ms-3x_coco.py', CONV_FC, 'grad'),
    ('atss/atss_r18_fpn_8xb8-amp-lsj-200e_coco.py', CONV, 'grad'),  # AMP, one-stage
    ('mask_rcnn/mask-rcnn_r18_fpn_8xb8-amp-lsj-200e_coco.py', CONV_FC, 'grad'),  # AMP, masks
    pytest.param(
        'convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',
        CONV,
        'update',
        marks=NEEDS_MMPRETRAIN,
    ),  # Cascade Mask R-CNN, layer decay, the authors' Adam(W)_GCC2
    ('rtmdet/rtmdet_tiny_8xb32-300e_coco.py', CONV_FC, 'update'),
    ('yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py', CONV_FC, 'sgdw'),
    ('yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py', CONV_FC, 'update'),  # SGDGC, 'update'
]


@functools.cache
def _loaded(config: str, import_custom_modules: bool = True):
    return check_zoo.load_config(check_zoo.zoo_dir() / config, import_custom_modules)


def _load(config: str, import_custom_modules: bool = True):
    """The zoo config, pretrained weights off (loaded once per session)."""
    return copy.deepcopy(_loaded(config, import_custom_modules))


def _id(case) -> str:
    values = case.values if hasattr(case, 'values') else case
    return f'{Path(values[0]).stem}-{"+".join(values[1])}-{values[2]}'


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(('config', 'layers', 'variant'), SAMPLE, ids=map(_id, SAMPLE))
def test_gc_on_zoo_config(config, layers, variant):
    cfg = _load(config)
    torch.manual_seed(0)
    model = check_zoo.build_model(cfg)
    result = check_zoo.check_gc(cfg, model, layers, variant)
    assert result['n_gc'] > 0 and result['n_checked'] == result['n_gc']
    assert result['constructor'] == cfg.optim_wrapper.get(
        'constructor', 'DefaultOptimWrapperConstructor'
    )


def test_sample_covers_each_kind():
    """The kinds issue 20 names, read from the sample's configs."""
    configs = {c.values[0] if hasattr(c, 'values') else c[0] for c in SAMPLE}
    loaded = {c: _load(c, import_custom_modules=False) for c in configs}
    optimizers = {cfg.optim_wrapper.optimizer.type for cfg in loaded.values()}
    wrappers = {cfg.optim_wrapper.get('type', 'OptimWrapper') for cfg in loaded.values()}
    constructors = {cfg.optim_wrapper.get('constructor') for cfg in loaded.values()}
    models = {cfg.model.type for cfg in loaded.values()}
    backbones = {cfg.model.backbone.type for cfg in loaded.values()}
    needs_mmpretrain = {c for c in configs if 'convnext' in c}
    assert len(configs - needs_mmpretrain) >= 20  # what runs without the optional package
    assert {'SGD', 'AdamW'} <= optimizers
    assert {'OptimWrapper', 'AmpOptimWrapper'} <= wrappers
    assert 'LearningRateDecayOptimizerConstructor' in constructors
    assert {'FasterRCNN', 'MaskRCNN', 'CascadeRCNN', 'RetinaNet', 'FCOS', 'YOLOX', 'RTMDet'} <= (
        models
    )
    assert {'DETR', 'DeformableDETR', 'DINO'} & models
    assert {'SwinTransformer', 'mmpretrain.ConvNeXt'} <= backbones


def test_amp_wrapper_is_built_as_configured():
    """``__call__`` builds the config's own ``AmpOptimWrapper`` (with its
    ``loss_scale``): MMEngine's, which needs a GPU; on the CPU it refuses."""
    from mmengine.optim import AmpOptimWrapper, build_optim_wrapper
    from torch import nn

    from mmgc.engine.optimizers.gc_switch import enable_gc

    cfg = _load('faster_rcnn/faster-rcnn_r50_fpn_amp-1x_coco.py')
    enable_gc(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2))
    if torch.cuda.is_available():
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        assert type(wrapper) is AmpOptimWrapper
    else:
        with pytest.raises(AssertionError, match='only available training on gpu'):
            build_optim_wrapper(model, cfg.optim_wrapper)


@pytest.mark.parametrize(
    ('error', 'reason'),
    [
        (ValueError('not a training config (no model or no optim_wrapper)'), 'not a training'),
        (
            ModuleNotFoundError("No module named 'lap'", name='lap'),
            "missing optional package 'lap'",
        ),
        (RuntimeError('skimage is not installed, please install it'), "package 'skimage'"),
        (
            ImportError("Failed to import custom modules from {'imports': ['mmpretrain.models']}"),
            "missing optional package 'mmpretrain'",
        ),
        (
            ModuleNotFoundError("No module named 'projects'", name='projects.example'),
            "MMDetection's projects/ folder",
        ),
        (KeyError('DINOv2 is not in the mmdet::model registry. Please check'), 'DINOv2'),
        (NotImplementedError('to reduce GPU memory: pip install fairscale.'), "'fairscale'"),
        (AssertionError('only available on gpu'), 'needs CUDA'),
        (MemoryError('too large to check on this CPU (400 M params)'), 'too large'),
    ],
)
def test_why_a_config_does_not_build(error, reason):
    """The script's grouping of the configs that do not build here."""
    assert reason in check_zoo.why_not(error)


def test_check_zoo_script_on_three_configs(tmp_path, capsys):
    """``tools/check_zoo.py``'s ``main`` (in this process): a config that works,
    the same again (checked once), and one that is not a training config."""
    import json

    out = tmp_path / 'zoo.jsonl'
    root = check_zoo.zoo_dir()
    configs = [
        root / 'yolox/yolox_tiny_8xb8-300e_coco.py',
        root / 'yolox/yolox_tiny_8xb8-300e_coco.py',
        root / '_base_/datasets/coco_detection.py',
    ]
    assert check_zoo.main([*map(str, configs), '--out', str(out), '--workers', '0']) == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r['status'] for r in results] == ['ok', 'ok', 'skip']
    assert results[1]['same_as'] == 'yolox/yolox_tiny_8xb8-300e_coco.py'
    assert results[2]['reason'].startswith('not a training config')
    printed = capsys.readouterr().out
    assert (
        '2 of 3 configs work with GC (conv/fc, grad); 0 fail the check; 1 do not build' in printed
    )
