"""``enable_gc``: one switch that puts GC on top of any config, and the same in
a config's two lines.

The configs are MMDetection's own (``mmdet::``) and small dicts; the models
small ``torch.nn`` ones, so that the switch's result is checked end to end
(config -> ``build_optim_wrapper`` -> the optimizer's groups).
"""

from __future__ import annotations

import copy
from pathlib import Path

import mmdet
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from torch import nn

from mmgc import SGDGC
from mmgc.engine.optimizers.gc_switch import enable_gc
from tests.conftest import ROOT

MMDET_CONFIGS = Path(mmdet.__file__).parent / '.mim' / 'configs'

#: Keys in which a GC run may differ from its baseline (the comparison's allowed keys).
ALLOWED = (
    'custom_imports',
    'optim_wrapper.optimizer.type',
    'optim_wrapper.constructor',
    'optim_wrapper.gc',
    'optim_wrapper.paramwise_cfg.gc_layers',
)


def _flat(node, prefix=''):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flat(value, f'{prefix}.{key}' if prefix else key))
        return out
    return {prefix: node}


def _changed_keys(before: dict, after: dict) -> set[str]:
    a, b = _flat(before), _flat(after)
    return {k for k in a.keys() | b.keys() if a.get(k, '<absent>') != b.get(k, '<absent>')}


def _allowed(key: str) -> bool:
    return any(key == a or key.startswith(a + '.') for a in ALLOWED)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


def _sgd_cfg(**optim_wrapper):
    return dict(
        optim_wrapper=dict(
            type='OptimWrapper',
            optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
            **optim_wrapper,
        )
    )


def _gc_by_name(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: (g['gc'], g['gc_dim'], g.get('gc_variant'))
        for g in optimizer.param_groups
        for p in g['params']
    }


@pytest.mark.parametrize(
    ('variant', 'optimizer_type'),
    [('grad', 'SGDGC'), ('update', 'SGDGC'), ('sgdw', 'SGDWGC')],
)
def test_sgd_config(variant, optimizer_type):
    cfg = _sgd_cfg()
    enable_gc(cfg, variant=variant)
    assert cfg['optim_wrapper']['optimizer'] == dict(
        type=optimizer_type, lr=0.02, momentum=0.9, weight_decay=1e-4
    )
    assert cfg['optim_wrapper']['constructor'] == 'GCOptimWrapperConstructor'
    assert cfg['optim_wrapper']['gc'] == dict(
        constructor='DefaultOptimWrapperConstructor', layers=['conv', 'fc'], variant=variant
    )
    assert cfg['custom_imports'] == dict(imports=['mmgc'], allow_failed_imports=False)


def test_builds_gc_groups_end_to_end():
    cfg = _sgd_cfg(paramwise_cfg=dict(norm_decay_mult=0.0))
    baseline = copy.deepcopy(cfg)
    enable_gc(cfg, layers=['conv'])
    torch.manual_seed(0)
    model = Net()
    optimizer = build_optim_wrapper(model, cfg['optim_wrapper']).optimizer
    assert type(optimizer) is SGDGC
    assert _gc_by_name(model, optimizer) == {
        'conv.weight': (True, 0, 'grad'),
        'conv.bias': (False, 0, None),
        'bn.weight': (False, 0, None),
        'bn.bias': (False, 0, None),
        'fc.weight': (False, 0, None),
        'fc.bias': (False, 0, None),
    }
    base = build_optim_wrapper(model, baseline['optim_wrapper']).optimizer
    base_wd = {id(p): g['weight_decay'] for g in base.param_groups for p in g['params']}
    assert {id(p): g['weight_decay'] for g in optimizer.param_groups for p in g['params']} == (
        base_wd
    )


def test_adamw_is_kept_and_gets_gc_through_the_hooks():
    cfg = dict(optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)))
    enable_gc(cfg)
    assert cfg['optim_wrapper']['optimizer']['type'] == 'AdamW'
    torch.manual_seed(0)
    model = Net()
    optimizer = build_optim_wrapper(model, cfg['optim_wrapper']).optimizer
    assert type(optimizer) is torch.optim.AdamW
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    moment = optimizer.state[model.fc.weight]['exp_avg']  # GC on the gradient: rows of mean 0
    torch.testing.assert_close(moment.mean(1), torch.zeros(2), rtol=0, atol=1e-7)
    assert moment.abs().mean() > 1e-3  # the raw gradient's rows have means of ~0.1 / sqrt(4)


def test_mmdet_config_keeps_everything_but_the_allowed_keys():
    """A real zoo config (ConvNeXt Mask R-CNN: AMP wrapper, layer-decay
    constructor, AdamW, custom_imports of its own): only the allowed keys change."""
    cfg = Config.fromfile(
        MMDET_CONFIGS / 'convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
        import_custom_modules=False,  # its own import is mmpretrain's, an optional package
    )
    before = copy.deepcopy(cfg.to_dict())
    enable_gc(cfg, layers=('conv', 'fc'), variant='update')
    after = cfg.to_dict()
    changed = _changed_keys(before, after)
    assert changed and all(_allowed(k) for k in changed), sorted(changed)
    ow = cfg.optim_wrapper
    assert ow.type == 'AmpOptimWrapper' and ow.optimizer.type == 'AdamW'
    assert ow.gc.constructor == 'LearningRateDecayOptimizerConstructor'
    assert ow.paramwise_cfg == before['optim_wrapper']['paramwise_cfg']
    assert before['custom_imports']['imports'][0] in cfg.custom_imports.imports
    assert cfg.custom_imports.imports[-1] == 'mmgc'


def test_switching_twice_replaces_layers_and_variant():
    cfg = _sgd_cfg(constructor='MyConstructor')
    enable_gc(cfg)
    enable_gc(cfg, layers='conv', variant='update')
    assert cfg['optim_wrapper']['gc'] == dict(
        constructor='MyConstructor', layers=['conv'], variant='update'
    )
    assert cfg['custom_imports']['imports'] == ['mmgc']


def test_old_form_config_moves_to_the_new_form():
    cfg = Config.fromfile(ROOT / 'configs/mmdet/mask_rcnn_r50_fpn_gc.py')
    enable_gc(cfg, layers='conv')
    ow = cfg.optim_wrapper
    assert ow.optimizer.type == 'SGDGC'
    assert ow.gc == dict(
        constructor='DefaultOptimWrapperConstructor', layers=['conv'], variant='grad'
    )
    assert 'gc_layers' not in (ow.get('paramwise_cfg') or {})


def _readme_two_lines() -> str:
    """The README's "GC on your own config" block, as written."""
    text = (ROOT / 'README.md').read_text()
    start = text.index('```python\n', text.index('## GC on your own config')) + len('```python\n')
    return text[start : text.index('```\n', start)]


def test_the_readmes_two_line_form(tmp_path):
    """The README's two lines in a user's own file, on MMDetection's RTMDet
    config: its AdamW (and its paramwise_cfg) stays, with GC through the hooks
    on every conv and FC weight; one step leaves the first moment's rows of
    each GC weight with zero mean (``grad``: AdamW's moment of P(g))."""
    text = _readme_two_lines()
    assert text.count('\n') == 3 and 'gc=dict(' in text  # _base_ and the two lines
    path = tmp_path / 'my_gc.py'
    path.write_text(text)
    cfg = Config.fromfile(str(path))
    torch.manual_seed(0)
    model = Net()
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    assert type(optimizer) is torch.optim.AdamW  # RTMDet's own optimizer
    flags = _gc_by_name(model, optimizer)
    assert flags['conv.weight'] == flags['fc.weight'] == (True, 0, 'grad')
    assert flags['conv.bias'][0] is False
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    for name in ('conv', 'fc'):
        weight = getattr(model, name).weight
        moment = optimizer.state[weight]['exp_avg']
        rows = moment.flatten(1).mean(1)
        torch.testing.assert_close(rows, torch.zeros_like(rows), rtol=0, atol=1e-7)
    bias_moment = optimizer.state[model.conv.bias]['exp_avg']
    assert bias_moment.abs().sum() > 0


SGD_NOT = dict(optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)))
NO_OPTIMIZER = 'enable_gc needs a training config with optim_wrapper'
#: (config, enable_gc's arguments, the ValueError's message)
ERRORS = [
    (
        _sgd_cfg(),
        dict(variant='gcc'),
        r"the GC variant must be one of \('grad', 'update', 'sgdw'\); got 'gcc'",
    ),
    (
        _sgd_cfg(),
        dict(layers='bn'),
        r"gc_layers must be a non-empty subset of \('conv', 'fc'\); got 'bn'",
    ),
    (_sgd_cfg(), dict(layers=[]), r'non-empty subset .*got \[\]'),
    (SGD_NOT, dict(variant='sgdw'), r"'sgdw' .*needs an SGD config; the optimizer is 'AdamW'"),
    (dict(), {}, NO_OPTIMIZER),
    (dict(optim_wrapper=dict(type='OptimWrapperDict')), {}, NO_OPTIMIZER),
]


@pytest.mark.parametrize(('cfg', 'kwargs', 'match'), ERRORS)
def test_bad_values(cfg, kwargs, match):
    before = copy.deepcopy(cfg)
    with pytest.raises(ValueError, match=match):
        enable_gc(cfg, **kwargs)
    assert cfg == before  # nothing changed
