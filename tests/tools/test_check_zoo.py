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

from tests.conftest import codebase_installed, load_tool

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


#: (codebase, config, layers, variant) of MMSegmentation's and MMPretrain's zoos (issue 29).
OTHER_SAMPLE = [
    ('mmseg', 'pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py', CONV_FC, 'grad'),
    ('mmseg', 'deeplabv3plus/deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024.py', CONV, 'grad'),
    ('mmseg', 'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py', CONV_FC, 'grad'),  # AdamW
    ('mmseg', 'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py', CONV_FC, 'update'),
    ('mmseg', 'mask2former/mask2former_r50_8xb2-90k_cityscapes-512x1024.py', CONV_FC, 'grad'),
    ('mmseg', 'fastscnn/fast_scnn_8xb4-160k_cityscapes-512x1024.py', CONV_FC, 'sgdw'),
    ('mmpretrain', 'resnet/resnet18_8xb16_cifar10.py', CONV, 'grad'),  # SGD, the paper's kind
    ('mmpretrain', 'vgg/vgg11bn_8xb32_in1k.py', CONV_FC, 'grad'),
    ('mmpretrain', 'mobilenet_v3/mobilenet-v3-small_8xb128_in1k.py', CONV_FC, 'grad'),  # RMSprop
    ('mmpretrain', 'simclr/simclr_resnet50_16xb256-coslr-200e_in1k.py', CONV_FC, 'update'),  # LARS
    ('mmpretrain', 'resnet/resnet50_8xb256-rsb-a3-100e_in1k.py', CONV_FC, 'update'),  # Lamb
    ('mmpretrain', 'swin_transformer/swin-tiny_16xb64_in1k.py', CONV_FC, 'grad'),  # AdamW
    ('mmpretrain', 'mae/mae_vit-base-p16_8xb512-amp-coslr-300e_in1k.py', CONV_FC, 'update'),
]


@functools.cache
def _loaded(config: str, import_custom_modules: bool = True, codebase: str = 'mmdet'):
    return check_zoo.load_config(check_zoo.zoo_dir(codebase) / config, import_custom_modules)


def _load(config: str, import_custom_modules: bool = True, codebase: str = 'mmdet'):
    """The zoo config, pretrained weights off (loaded once per session)."""
    return copy.deepcopy(_loaded(config, import_custom_modules, codebase))


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


@pytest.mark.parametrize(
    ('codebase', 'config', 'layers', 'variant'),
    [pytest.param(*case, marks=codebase_installed(case[0])) for case in OTHER_SAMPLE],
    ids=[f'{c[0]}-{_id(c[1:])}' for c in OTHER_SAMPLE],
)
def test_gc_on_other_codebases_zoo_config(codebase, config, layers, variant):
    """The same check on MMSegmentation's and MMPretrain's own configs, each
    built in its ``default_scope`` (MMSegmentation's Mask2Former head is
    MMDetection's, through MMSegmentation's registry)."""
    cfg = _load(config, codebase=codebase)
    assert cfg.default_scope == codebase
    torch.manual_seed(0)
    result = check_zoo.check_gc(cfg, check_zoo.build_model(cfg), layers, variant)
    assert result['n_gc'] > 0 and result['n_checked'] == result['n_gc']


def _tiny_optimizer(kind: str, variant: str, with_gc: bool):
    """A conv + FC net's optimizer of ``kind`` (its weights in a GC group), with
    mmgc's GC or without; and the weights GC must get (``id -> dim``)."""
    from torch import nn

    from mmgc.engine.optimizers.gc_step_hooks import attach_gc_hooks
    from mmgc.engine.optimizers.sgd_gc import SGDGC

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    weights = [net[0].weight, net[2].weight]
    gc = dict(gc=with_gc, gc_dim=0, gc_variant=variant)
    groups = [dict(params=weights, **gc), dict(params=[net[0].bias, net[2].bias], gc=False)]
    if kind == 'SGDGC':
        optimizer = SGDGC(groups, lr=0.1, momentum=0.9, weight_decay=1e-2)
    else:
        options = dict(lr=1e-2, weight_decay=1e-2) | (
            dict(momentum=0.9) if kind == 'RMSprop' else {}
        )
        optimizer = getattr(torch.optim, kind)(groups, **options)
        if with_gc:
            attach_gc_hooks(optimizer)
    return optimizer, {id(w): 0 for w in weights}


@pytest.mark.parametrize(
    ('kind', 'variant', 'broken'),
    [
        ('SGDGC', 'grad', 'breaks the sums invariant'),
        ('Adam', 'grad', 'breaks the moment invariant'),
        ('Adam', 'update', 'breaks the sums invariant'),
        ('RMSprop', 'grad', r'steps .* away from RMSprop on P\(g \+ wd w\)'),
    ],
)
def test_the_step_check_fails_a_step_without_gc(kind, variant, broken):
    """The oracle of each kind (weight sums, the first moment's rows, the plain
    optimizer replayed on ``P(g + wd w)``) passes mmgc's step and fails the same
    optimizer with GC off."""
    optimizer, expected = _tiny_optimizer(kind, variant, with_gc=True)
    assert check_zoo.check_step(optimizer, expected, variant) == 2
    optimizer, expected = _tiny_optimizer(kind, variant, with_gc=False)
    with pytest.raises(AssertionError, match=broken):
        check_zoo.check_step(optimizer, expected, variant)


@codebase_installed('mmpretrain')
def test_lars_with_the_grad_variant_is_counted_as_refused(tmp_path, capsys):
    """MMPretrain's LARS takes GC on the update only: with ``grad`` the check
    counts the config as refused (mmgc's one sentence saying why), not failed."""
    import json

    out = tmp_path / 'zoo.jsonl'
    config = check_zoo.zoo_dir('mmpretrain') / 'simclr/simclr_resnet50_16xb256-coslr-200e_in1k.py'
    args = [str(config), '--codebase', 'mmpretrain', '--out', str(out), '--workers', '0']
    assert check_zoo.main(args) == 0
    (result,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert result['status'] == 'refused'
    assert "(its trust ratio reads the raw gradient), which takes ['update']" in result['reason']
    printed = capsys.readouterr().out
    assert '0 of 1 configs work with GC (conv/fc, grad); 0 fail the check; 1 are refused' in printed


def test_a_missing_codebase_ends_in_one_sentence(monkeypatch, capsys):
    monkeypatch.setattr(check_zoo.importlib.util, 'find_spec', lambda name: None)
    assert check_zoo.main(['--codebase', 'mmseg']) == 2
    err = capsys.readouterr().err
    assert err == (
        "check_zoo.py: MMSegmentation is not installed: pip install 'mmsegmentation>=1.2.2,<1.3' "
        'ftfy regex.\n'
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
        (MemoryError('too large to check on this CPU (over 300 M params)'), 'too large'),
        (
            ImportError(
                'RAMOpenset requires extra multi-modal dependencies, please install it by '
                '`pip install "mmpretrain[multimodal]"` or `pip install -e ".[multimodal]"`.'
            ),
            "missing optional package 'mmpretrain[multimodal]'",
        ),
        (
            AssertionError(
                'To use VPD model, please install required packages via `pip install -r '
                'requirements/optional.txt`.'
            ),
            "missing optional package '-r requirements/optional.txt'",
        ),
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
        '2 of 3 configs work with GC (conv/fc, grad); 0 fail the check; 0 are refused by mmgc; '
        '1 do not build here' in printed
    )


def test_check_zoo_script_replaces_its_pool(tools, tmp_path):
    """``python tools/check_zoo.py ... --workers 1 --tasks-per-process 1``: each
    config in a fresh pool, in order (a worker retiring under
    ``max_tasks_per_child`` hangs the pool on Python 3.11 to 3.13)."""
    import json
    import sys

    out = tmp_path / 'zoo.jsonl'
    root = check_zoo.zoo_dir()
    configs = [root / 'yolox/yolox_tiny_8xb8-300e_coco.py', root / '_base_/default_runtime.py']
    configs.append(root / 'retinanet/retinanet_r18_fpn_1x_coco.py')
    args = [sys.executable, 'tools/check_zoo.py', *configs, '--out', out, '--workers', '1']
    tools.ok(tools.run([*args, '--tasks-per-process', '1'], timeout=240))
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(Path(r['config']).stem, r['status']) for r in results] == [
        ('yolox_tiny_8xb8-300e_coco', 'ok'),
        ('default_runtime', 'skip'),
        ('retinanet_r18_fpn_1x_coco', 'ok'),
    ]


@pytest.mark.parametrize('kind', ['SGDGC', 'Adam'])
def test_the_step_check_on_two_input_rows_and_a_one_unit_tensor(kind):
    """Cases of the whole zoo: a (512, 2) GC weight (Swin v2's position MLP),
    whose centred rows are small next to the gradient's rounding, and a
    (1, 196, 196) tensor without GC (ViG's relative positions), whose one sum
    may move less than the tolerance by chance (the control leaves out tensors
    of fewer than 4 units): neither is a failure."""
    from torch import nn

    from mmgc.engine.optimizers.gc_step_hooks import attach_gc_hooks
    from mmgc.engine.optimizers.sgd_gc import SGDGC

    torch.manual_seed(0)
    fc, one_unit = nn.Linear(2, 512, bias=False), nn.Parameter(torch.randn(1, 196, 196))
    groups = [dict(params=[fc.weight], gc=True, gc_dim=0), dict(params=[one_unit], gc=False)]
    if kind == 'SGDGC':
        optimizer = SGDGC(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.Adam(groups, lr=1e-3)
        attach_gc_hooks(optimizer)
    for _ in range(20):  # 20 steps on the check's seeded gradients
        assert check_zoo.check_step(optimizer, {id(fc.weight): 0}, 'grad') == 1
