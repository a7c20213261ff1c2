"""Tests of the paper's ImageNet rows (Table 3) as MMPretrain configs:
``configs/mmpretrain/*_gc.py``, their baseline twins in
``configs/mmpretrain/baselines/`` and their ``configs/metafile.yml`` entries.
Each model is built from its real config and takes one SGD step on the CPU
through the optim wrapper the config describes, on two 32x32 images."""

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
#: Table 3's rows: config stem -> (MMPretrain config, the paper's row, GN).
ROWS = {
    'resnet50_in1k': ('resnet/resnet50_8xb32_in1k.py', 'R50BN', False),
    'resnet50_gn_in1k': ('resnet/resnet50_8xb32_in1k.py', 'R50GN', True),
    'resnet101_in1k': ('resnet/resnet101_8xb32_in1k.py', 'R101BN', False),
    'resnet101_gn_in1k': ('resnet/resnet101_8xb32_in1k.py', 'R101GN', True),
}
GN = dict(type='GN', num_groups=32, requires_grad=True)
SGD = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)


def _cfg(path: Path) -> dict:
    return copy.deepcopy(Config.fromfile(str(path)).to_dict())


def _mmpretrain_config(name: str) -> dict:
    import mmpretrain

    return _cfg(Path(mmpretrain.__file__).parent / '.mim' / 'configs' / name)


def _meta(stem: str) -> dict:
    with open(ROOT / 'configs' / 'metafile.yml', encoding='utf-8') as file:
        models = {m['Name']: m for m in yaml.safe_load(file)['Models']}
    return models[f'{stem}_gc']


def test_every_row_has_a_gc_config_and_a_twin():
    assert sorted(p.stem for p in CONFIG_DIR.glob('*_gc.py')) == sorted(f'{r}_gc' for r in ROWS)
    assert sorted(p.stem for p in (CONFIG_DIR / 'baselines').glob('*.py')) == sorted(ROWS)


@pytest.mark.parametrize('row', ROWS)
def test_gc_config_differs_from_its_twin_only_in_the_optimizer(row):
    gc, twin = _cfg(CONFIG_DIR / f'{row}_gc.py'), _cfg(CONFIG_DIR / 'baselines' / f'{row}.py')
    gc_optim, twin_optim = gc.pop('optim_wrapper'), twin.pop('optim_wrapper')
    assert gc.pop('custom_imports') == dict(imports=['mmgc'], allow_failed_imports=False)
    assert gc == twin
    assert gc['default_scope'] == 'mmpretrain'  # the tools run it with MMPretrain
    assert without_scope(twin_optim) == dict(optimizer=SGD)  # MMPretrain's, as it is
    assert without_scope(gc_optim) == dict(
        optimizer=dict(SGD, type='SGDGC'),
        constructor='GCOptimWrapperConstructor',
        gc=dict(layers=('conv',)),  # the paper's ImageNet runs: conv layers only
    )


@pytest.mark.parametrize('row', ROWS)
def test_baseline_is_mmpretrains_config(row):
    """The BN rows are MMPretrain's config unchanged; the GN rows differ from it
    in the backbone's norm only."""
    name, _, gn = ROWS[row]
    expected = _mmpretrain_config(name)
    if gn:
        expected['model']['backbone']['norm_cfg'] = GN
    assert without_scope(_cfg(CONFIG_DIR / 'baselines' / f'{row}.py')) == without_scope(expected)
    assert expected['train_dataloader']['batch_size'] * 8 == 256  # the paper's per step


@pytest.mark.parametrize('row', ROWS)
def test_metafile_entry(row):
    name, paper_row, _ = ROWS[row]
    model = _meta(row)
    assert model['Config'] == f'configs/mmpretrain/{row}_gc.py'
    meta = model['Metadata']
    assert meta['MMPretrain Config'] == f'mmpretrain::{name}'
    assert meta['Paper'] == dict(Table=3, Row=paper_row)
    assert meta['Epochs'] == _cfg(CONFIG_DIR / f'{row}_gc.py')['train_cfg']['max_epochs']
    (result,) = model['Results']
    assert result['Task'] == 'Image Classification' and result['Dataset'] == 'ImageNet-1k'
    # the paper's top-1 error falls with GC in every row
    assert 20 < result['Metrics']['Top 1 Error'] < result['Paper Baseline']['Top 1 Error'] < 25


def _centred(tensor: torch.Tensor) -> torch.Tensor:
    return tensor - tensor.mean(dim=tuple(range(1, tensor.ndim)), keepdim=True)


@pytest.mark.parametrize(
    'path',
    [*CONFIG_DIR.glob('*_gc.py'), *(CONFIG_DIR / 'baselines').glob('*.py')],
    ids=lambda p: p.stem,
)
def test_one_step_centralizes_the_conv_weights_only(path):
    """One SGD step of the built model: with GC, each conv weight's update is
    the centred gradient (lr x P(g + wd w), momentum's first step) and the FC
    weight's is not centred; the twin's conv updates are not centred."""
    from mmpretrain.registry import MODELS
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
    assert type(wrapper.optimizer).__name__ == ('SGDGC' if is_gc else 'SGD')
    batch = dict(
        inputs=torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8),
        data_samples=None,
    )
    from mmpretrain.structures import DataSample

    batch['data_samples'] = [DataSample().set_gt_label(label) for label in (3, 7)]
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    fc = next(m.weight for m in model.modules() if isinstance(m, nn.Linear))
    before = {id(w): w.detach().clone() for w in (*convs, fc)}
    grads = {}
    wrapper.optimizer.register_step_pre_hook(
        lambda *_: grads.update({id(w): w.grad.detach().clone() for w in (*convs, fc)})
    )
    model.train_step(batch, wrapper)
    lr, wd = 0.1, 1e-4
    for weight in (*convs, fc):  # the reference in float64, the step's rounding in float32
        step = (before[id(weight)] - weight.detach()).double()
        raw = lr * (grads[id(weight)].double() + wd * before[id(weight)].double())
        expected = _centred(raw) if is_gc and weight is not fc else raw
        # centring rounds relative to the largest gradient (batch-2 BN's are large)
        scale = float(raw.abs().max()) + float(before[id(weight)].abs().max())
        torch.testing.assert_close(step, expected, rtol=1e-5, atol=1e-6 * scale)
