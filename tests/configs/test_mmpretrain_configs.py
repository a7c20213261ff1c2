"""Tests of the paper's classification rows as MMPretrain configs
(``configs/mmpretrain``): ImageNet (Table 3) and CIFAR-100 (Tables 1 and 2).
Each GC config has a baseline twin in ``configs/mmpretrain/baselines/`` and an
entry in ``configs/metafile.yml``. Each model is built from its real config and
takes one step on the CPU through the optim wrapper the config describes, on
two 32x32 images, against a float64 reference of that optimizer's first step."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.utils import import_modules_from_strings
from torch import nn

from tests.conftest import ROOT, codebase_installed, without_scope

pytestmark = codebase_installed('mmpretrain')

CONFIG_DIR = ROOT / 'configs' / 'mmpretrain'
CIFAR_BASE = 'resnet/resnet50_8xb16_cifar100.py'
GN = dict(type='GN', num_groups=32, requires_grad=True)
SGD_IN1K = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)
SGD_CIFAR = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4)

#: Table 3: stem -> (MMPretrain config, the paper's row, GN).
IMAGENET = {
    'resnet50_in1k': ('resnet/resnet50_8xb32_in1k.py', 'R50BN', False),
    'resnet50_gn_in1k': ('resnet/resnet50_8xb32_in1k.py', 'R50GN', True),
    'resnet101_in1k': ('resnet/resnet101_8xb32_in1k.py', 'R101BN', False),
    'resnet101_gn_in1k': ('resnet/resnet101_8xb32_in1k.py', 'R101GN', True),
}
#: Tables 1 and 2: stem -> (table, column, the twin's optimizer, the GC run's type:
#: its own class, or None for the twin's optimizer through mmgc's GC hooks).
CIFAR = {
    'resnet18_cifar100': (1, 'R18', SGD_CIFAR, 'SGDGC'),
    'resnet101_cifar100': (1, 'R101', SGD_CIFAR, 'SGDGC'),
    'vgg11_cifar100': (1, 'V11', SGD_CIFAR, 'SGDGC'),
    'densenet121_cifar100': (1, 'D121', SGD_CIFAR, 'SGDGC'),
    'resnet50_cifar100': (2, 'SGDM', SGD_CIFAR, 'SGDGC'),
    'resnet50_cifar100_adam': (2, 'Adam', dict(type='Adam', lr=1e-3, weight_decay=5e-4), None),
    'resnet50_cifar100_adagrad': (
        2,
        'Adagrad',
        dict(type='Adagrad', lr=1e-2, weight_decay=5e-4),
        None,
    ),
    'resnet50_cifar100_sgdw': (
        2,
        'SGDW',
        dict(SGD_CIFAR, type='SGDW', weight_decay=1e-3),
        'SGDWGC',
    ),
    'resnet50_cifar100_adamw': (2, 'AdamW', dict(type='AdamW', lr=1e-3, weight_decay=1e-3), None),
}
ROWS = [*IMAGENET, *CIFAR]


def _cfg(path: Path) -> dict:
    return without_scope(copy.deepcopy(Config.fromfile(str(path)).to_dict()))


def _gc(row: str) -> dict:
    return _cfg(CONFIG_DIR / f'{row}_gc.py')


def _twin(row: str) -> dict:
    return _cfg(CONFIG_DIR / 'baselines' / f'{row}.py')


def _mmpretrain_config(name: str) -> dict:
    import mmpretrain

    return _cfg(Path(mmpretrain.__file__).parent / '.mim' / 'configs' / name)


def _twin_optimizer(row: str) -> dict:
    return SGD_IN1K if row in IMAGENET else CIFAR[row][2]


def _meta(stem: str) -> dict:
    with open(ROOT / 'configs' / 'metafile.yml', encoding='utf-8') as file:
        models = {m['Name']: m for m in yaml.safe_load(file)['Models']}
    return models[f'{stem}_gc']


def test_every_row_has_a_gc_config_and_a_twin():
    assert sorted(p.stem for p in CONFIG_DIR.glob('*_gc.py')) == sorted(f'{r}_gc' for r in ROWS)
    assert sorted(p.stem for p in (CONFIG_DIR / 'baselines').glob('*.py')) == sorted(ROWS)


@pytest.mark.parametrize('row', ROWS)
def test_gc_config_differs_from_its_twin_only_in_the_optimizer(row):
    gc, twin = _gc(row), _twin(row)
    gc_optim, twin_optim = gc.pop('optim_wrapper'), twin.pop('optim_wrapper')
    imports = dict(imports=['mmgc'], allow_failed_imports=False)
    assert gc.pop('custom_imports') == imports
    assert twin.pop('custom_imports', imports) == imports  # SGDW's twin needs mmgc too
    assert gc == twin
    assert gc['default_scope'] == 'mmpretrain'  # the tools run it with MMPretrain
    assert twin_optim == dict(optimizer=_twin_optimizer(row))
    gc_type = 'SGDGC' if row in IMAGENET else CIFAR[row][3]
    optimizer = (
        twin_optim['optimizer'] if gc_type is None else dict(twin_optim['optimizer'], type=gc_type)
    )
    assert gc_optim == dict(
        optimizer=optimizer,
        constructor='GCOptimWrapperConstructor',
        gc=dict(layers=('conv',)),  # the paper's classification runs: conv layers only
    )


@pytest.mark.parametrize('row', IMAGENET)
def test_imagenet_baseline_is_mmpretrains_config(row):
    """The BN rows are MMPretrain's config unchanged; the GN rows differ from it
    in the backbone's norm only."""
    name, _, gn = IMAGENET[row]
    expected = _mmpretrain_config(name)
    if gn:
        expected['model']['backbone']['norm_cfg'] = GN
    assert _twin(row) == expected
    assert expected['train_dataloader']['batch_size'] * 8 == 256  # the paper's per step


@pytest.mark.parametrize('row', CIFAR)
def test_cifar_baseline_is_the_papers_setting(row):
    """MMPretrain's CIFAR-100 ResNet-50 config with the paper's schedule (200
    epochs, 128 images per step, lr x 0.1 every 60 epochs), and only the model
    (Table 1) or the optimizer (Table 2) changed."""
    expected = _mmpretrain_config(CIFAR_BASE)
    expected['train_dataloader']['batch_size'] = 128
    expected['param_scheduler'] = dict(
        type='MultiStepLR', by_epoch=True, milestones=[60, 120, 180], gamma=0.1
    )
    expected['train_cfg'] = dict(by_epoch=True, max_epochs=200, val_interval=1)
    expected['auto_scale_lr'] = dict(base_batch_size=128)
    twin = _twin(row)
    twin.pop('custom_imports', None)
    model, optim = twin.pop('model'), twin.pop('optim_wrapper')
    base_model = expected.pop('model')
    expected.pop('optim_wrapper')
    assert twin == expected
    assert optim == dict(optimizer=CIFAR[row][2])
    backbone, head = model['backbone'], model['head']
    assert head['num_classes'] == 100 and model['neck'] == dict(type='GlobalAveragePooling')
    if row.startswith('vgg11'):
        assert backbone == dict(type='VGG', depth=11, norm_cfg=dict(type='BN'), num_classes=-1)
        assert head['in_channels'] == 512
    elif row.startswith('densenet121'):  # MMPretrain's, with its ImageNet stem
        assert backbone == dict(type='DenseNet', arch='121')
        assert head['in_channels'] == 1024
    else:
        depth = int(row.split('_')[0][len('resnet') :])
        assert backbone == dict(base_model['backbone'], depth=depth)
        assert head['in_channels'] == (512 if depth < 50 else 2048)


@pytest.mark.parametrize('row', ROWS)
def test_metafile_entry(row):
    model = _meta(row)
    assert model['Config'] == f'configs/mmpretrain/{row}_gc.py'
    meta = model['Metadata']
    assert meta['Epochs'] == _gc(row)['train_cfg']['max_epochs']
    (result,) = model['Results']
    assert result['Task'] == 'Image Classification'
    if row in IMAGENET:
        name, paper_row, _ = IMAGENET[row]
        assert meta['MMPretrain Config'] == f'mmpretrain::{name}'
        assert meta['Paper'] == dict(Table=3, Row=paper_row)
        assert result['Dataset'] == 'ImageNet-1k'
        # the paper's top-1 error falls with GC in every row
        assert 20 < result['Metrics']['Top 1 Error'] < result['Paper Baseline']['Top 1 Error'] < 25
    else:
        table, column, _, _ = CIFAR[row]
        assert meta['MMPretrain Config'] == f'mmpretrain::{CIFAR_BASE}'
        assert meta['Paper'] == dict(Table=table, Row=column)
        assert result['Dataset'] == 'CIFAR-100'
        # ... and its accuracy rises with GC in every column
        gc, base = result['Metrics'], result['Paper Baseline']
        assert 70 < base['Top 1 Accuracy'] < gc['Top 1 Accuracy'] < 81


def _centred(tensor: torch.Tensor) -> torch.Tensor:
    return tensor - tensor.mean(dim=tuple(range(1, tensor.ndim)), keepdim=True)


def _first_step(kind: str, grad, weight, lr, wd, centre: bool, eps: float):
    """The first step ``weight_before - weight_after`` of optimizer ``kind`` in
    float64, with ``P`` applied where ``centre`` (to what each GC form centres:
    the gradient with its L2 decay, or the gradient alone for decoupled decay)."""
    project = _centred if centre else (lambda t: t)
    if kind in ('SGD', 'SGDGC'):  # momentum's first buffer is the direction itself
        return lr * project(grad + wd * weight)
    if kind in ('SGDW', 'SGDWGC'):
        return lr * project(grad) + lr * wd * weight
    if kind in ('Adam', 'Adagrad'):  # first step: m_hat = d, sqrt(v_hat) = |d|
        d = project(grad + wd * weight)
        return lr * d / (d.abs() + eps)
    if kind == 'AdamW':
        d = project(grad)
        return lr * wd * weight + lr * d / (d.abs() + eps)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    'path',
    sorted([*CONFIG_DIR.glob('*_gc.py'), *(CONFIG_DIR / 'baselines').glob('*.py')]),
    ids=lambda p: p.stem,
)
def test_one_step_centres_the_conv_weights_only(path):
    """One step of the built model: with GC, each conv weight's step is that of
    the optimizer on the centred direction, and the FC weight's is not centred;
    in the twins no step is centred (checked on about seven conv weights from
    the first to the last, and the FC weight: the float64 reference of every
    weight of a ResNet-101 takes longer than the step)."""
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    from mmpretrain.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(str(path))
    if 'custom_imports' in cfg:  # what MMEngine's Runner does with it
        import_modules_from_strings(**cfg.custom_imports)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    is_gc = path.stem.endswith('_gc')
    kind = cfg.optim_wrapper.optimizer.type
    assert type(wrapper.optimizer).__name__ == kind
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    convs = convs[:: max(1, len(convs) // 6)]  # the first, the last and some between
    convs = [*convs, [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)][-1]]
    (fc,) = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    seen = {}
    step = wrapper.step

    def recording_step(**kwargs):  # the raw gradients, before any optimizer hook
        seen.update({id(w): (w.detach().clone(), w.grad.detach().clone()) for w in (*convs, fc)})
        return step(**kwargs)

    wrapper.step = recording_step
    inputs = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    samples = [DataSample().set_gt_label(label) for label in (3, 7)]
    model.train_step(dict(inputs=inputs, data_samples=samples), wrapper)
    options = cfg.optim_wrapper.optimizer
    lr, wd = options.lr, options.get('weight_decay', 0.0)
    eps = 1e-10 if kind == 'Adagrad' else 1e-8
    for weight in (*convs, fc):
        before, grad = (t.double() for t in seen[id(weight)])
        taken = before - weight.detach().double()
        expected = _first_step(kind, grad, before, lr, wd, is_gc and weight is not fc, eps)
        # float32 rounds P relative to the largest entry (batch-2 BN's gradients are
        # large); the adaptive steps, about lr * sign(d), are compared where |d| is
        # clear of that rounding
        scale = float(expected.abs().max()) + float(before.abs().max())
        clear = torch.ones_like(taken, dtype=torch.bool)
        if kind in ('Adam', 'Adagrad', 'AdamW'):
            direction = grad + (0 if kind == 'AdamW' else wd * before)
            if is_gc and weight is not fc:
                direction = _centred(direction)
            clear = direction.abs() > 1e-4 * float(direction.abs().max())
            assert clear.float().mean() > 0.99, float(clear.float().mean())
        torch.testing.assert_close(taken[clear], expected[clear], rtol=1e-4, atol=1e-6 * scale)
