"""The segmentation rows (configs/mmseg): PSPNet and DeepLabV3+ R50 on
Cityscapes and ADE20K, each a GC config and a baseline twin that is
MMSegmentation's own config, with no paper number (the GC paper has no
segmentation row). The twins differ only in the optimizer; the GC config's
optimizer is what ``enable_gc`` makes of the twin's; built on the CPU, every
conv weight gets GC and one step keeps each output unit's weight sum (the
zoo check's oracle, ``tools/check_zoo.py``)."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from mmengine.config import Config

from mmgc import enable_gc
from tests.conftest import ROOT, codebase_installed, load_tool, without_scope

pytestmark = codebase_installed('mmseg')

CONFIG_DIR = ROOT / 'configs' / 'mmseg'
#: stem -> (MMSegmentation's folder, dataset, its model-zoo mIoU).
ROWS = {
    'pspnet_r50-d8_4xb2-80k_cityscapes-512x1024': ('pspnet', 'Cityscapes', 78.55),
    'pspnet_r50-d8_4xb4-160k_ade20k-512x512': ('pspnet', 'ADE20K', 42.48),
    'deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024': ('deeplabv3plus', 'Cityscapes', 80.09),
    'deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512': ('deeplabv3plus', 'ADE20K', 43.95),
}


def _cfg(path) -> dict:
    return without_scope(copy.deepcopy(Config.fromfile(str(path)).to_dict()))


def _mmseg_config(row: str) -> dict:
    import mmseg

    folder = ROWS[row][0]
    return _cfg(f'{mmseg.__path__[0]}/.mim/configs/{folder}/{row}.py')


def test_every_row_has_a_gc_config_and_a_twin():
    assert sorted(p.stem for p in CONFIG_DIR.glob('*_gc.py')) == sorted(f'{r}_gc' for r in ROWS)
    assert sorted(p.stem for p in (CONFIG_DIR / 'baselines').glob('*.py')) == sorted(ROWS)


@pytest.mark.parametrize('row', ROWS)
def test_twin_is_mmsegmentations_config_and_gc_differs_only_in_the_optimizer(row):
    twin, gc = _cfg(CONFIG_DIR / 'baselines' / f'{row}.py'), _cfg(CONFIG_DIR / f'{row}_gc.py')
    assert twin == _mmseg_config(row)
    gc_optim, twin_optim = gc.pop('optim_wrapper'), twin.pop('optim_wrapper')
    assert gc.pop('custom_imports') == dict(imports=['mmgc'], allow_failed_imports=False)
    assert gc == twin and gc['default_scope'] == 'mmseg'
    assert twin_optim['optimizer'] == dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=5e-4)
    assert gc_optim == dict(
        twin_optim,
        optimizer=dict(twin_optim['optimizer'], type='SGDGC'),
        constructor='GCOptimWrapperConstructor',
        gc=dict(layers=('conv', 'fc')),
    )


@pytest.mark.parametrize('row', ROWS)
def test_gc_config_is_enable_gc_of_its_twin(row):
    """The shipped form and the switch build the same optimizer config."""
    twin = Config.fromfile(str(CONFIG_DIR / 'baselines' / f'{row}.py'))
    enable_gc(twin)
    gc = Config.fromfile(str(CONFIG_DIR / f'{row}_gc.py'))
    switched, shipped = without_scope(twin.optim_wrapper), without_scope(gc.optim_wrapper)
    assert switched.pop('gc') == dict(
        constructor='DefaultOptimWrapperConstructor', layers=['conv', 'fc'], variant='grad'
    )
    assert tuple(shipped.pop('gc')['layers']) == ('conv', 'fc')
    assert switched == shipped


@pytest.mark.parametrize('row', ROWS)
def test_metafile_entry_has_no_paper_number(row):
    with open(ROOT / 'configs' / 'metafile.yml', encoding='utf-8') as file:
        models = {m['Name']: m for m in yaml.safe_load(file)['Models']}
    model = models[f'{row}_gc']
    folder, dataset, miou = ROWS[row]
    assert model['In Collection'] == 'GC Semantic Segmentation'
    assert model['Metadata']['MMSegmentation Config'] == f'mmseg::{folder}/{row}.py'
    assert model['Metadata']['Paper'] is None
    (result,) = model['Results']
    assert result['Task'] == 'Semantic Segmentation' and result['Dataset'] == dataset
    assert result['Metrics'] == {'mIoU': None} == result['Paper Baseline']
    assert result['MMSegmentation Baseline'] == {'mIoU': miou}
    from mmgc.runtime.compare.runs import paper_deltas

    assert paper_deltas(str(ROOT / 'configs' / 'metafile.yml'), f'{row}_gc') == {}


@pytest.mark.parametrize('row', [r for r in ROWS if 'cityscapes' in r])
def test_gc_config_builds_and_one_step_keeps_the_weight_sums(row):
    """Built on the CPU (pretrained weights off): the zoo check's oracle on the
    twin switched on, and the shipped config's groups agree with it."""
    check_zoo = load_tool('check_zoo')
    torch.manual_seed(0)
    twin = check_zoo.load_config(CONFIG_DIR / 'baselines' / f'{row}.py')
    model = check_zoo.build_model(twin)
    result = check_zoo.check_gc(twin, model, ('conv', 'fc'), 'grad')
    assert result['n_gc'] == result['n_checked'] > 60 and result['optimizer'] == 'SGDGC'
    from mmengine.optim import build_optim_wrapper

    gc = check_zoo.load_config(CONFIG_DIR / f'{row}_gc.py')
    optimizer = build_optim_wrapper(model, gc.optim_wrapper).optimizer
    assert sum(len(g['params']) for g in optimizer.param_groups if g['gc']) == result['n_gc']


def test_the_docs_segformer_snippet_runs_as_written(capsys):
    """docs/codebases.md's Python block: enable_gc on MMSegmentation's SegFormer
    (AdamW with custom_keys)."""
    text = (ROOT / 'docs' / 'codebases.md').read_text()
    (snippet,) = [b.split('```', 1)[0] for b in text.split('```python\n')[1:] if 'segformer' in b]
    namespace: dict = {}
    exec(compile(snippet, 'docs/codebases.md', 'exec'), namespace)
    cfg = namespace['cfg']
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert set(cfg.optim_wrapper.paramwise_cfg.custom_keys) == {'pos_block', 'norm', 'head'}
    printed = capsys.readouterr().out
    assert printed.startswith("GCOptimWrapperConstructor {'constructor': 'DefaultOptim")
