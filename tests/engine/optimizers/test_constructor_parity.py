"""GCOptimWrapperConstructor against MMEngine's DefaultOptimWrapperConstructor.

The oracle is MMEngine 0.10.7's own constructor test
(``tests/test_optim/test_optimizer/test_optimizer.py``): the models below
have the same layout as its ``ExampleModel`` / ``ExampleDuplicateModel`` /
``PseudoDataParallel`` (a bare parameter, a bias-free conv, a conv, BN, a
submodule with a depthwise conv, GN and a bare parameter, a deformable conv
where MMCV's ops are built, a conv shared by two containers), and the cases
are every ``paramwise_cfg`` and freezing that test uses, with its lr,
momentum and weight decay. For each case MMEngine builds ``torch.optim.SGD``
and mmgc builds ``SGDGC`` and ``SGD`` (+ GC hooks), with and without
``gc_layers``: every parameter must be in both optimizers or in neither, with
the same lr, weight decay and momentum; mmgc merges parameters with equal
settings into one group and gives each conv / linear weight (frozen ones
too) ``gc=True``, ``gc_dim=0``, every other tensor ``gc=False``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from mmgc import GCOptimWrapperConstructor

LR, MOMENTUM, WD = 0.01, 0.0001, 0.9
SGD_CFG = dict(
    type='OptimWrapper', optimizer=dict(type='SGD', lr=LR, momentum=MOMENTUM, weight_decay=WD)
)
NO_WD_CFG = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=LR, momentum=MOMENTUM))
MULTS = dict(
    bias_lr_mult=2,
    bias_decay_mult=0.5,
    norm_decay_mult=0,
    dwconv_decay_mult=0.1,
    dcn_offset_lr_mult=0.1,
    flat_decay_mult=0.3,
)
CUSTOM_KEYS = dict(
    custom_keys={
        'param1': dict(lr_mult=10),
        'sub': dict(lr_mult=0.1, decay_mult=0),
        'sub.gn': dict(lr_mult=0.01),
        'non_exist_key': dict(lr_mult=0.0),
    },
    norm_decay_mult=0.5,
)
HAS_MMCV_OPS = importlib.util.find_spec('mmcv') is not None and (
    importlib.util.find_spec('mmcv.ops') is not None
)


def _with_dcn(model: nn.Module, names: set[str], dcn: bool) -> None:
    if dcn:
        from mmcv.ops import DeformConv2dPack

        model.dcn = DeformConv2dPack(3, 4, kernel_size=3, deformable_groups=1)
        names |= {'dcn.weight', 'dcn.conv_offset.weight'}


class Sub(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, kernel_size=1, groups=2)  # depthwise
        self.gn = nn.GroupNorm(2, 2)
        self.param1 = nn.Parameter(torch.ones(1))


class Example(nn.Module):
    def __init__(self, dcn: bool) -> None:
        super().__init__()
        self.param1 = nn.Parameter(torch.ones(1))
        self.conv1 = nn.Conv2d(3, 4, kernel_size=1, bias=False)
        self.conv2 = nn.Conv2d(4, 2, kernel_size=1)
        self.bn = nn.BatchNorm2d(2)
        self.sub = Sub()
        self.gc_weights = {'conv1.weight', 'conv2.weight', 'sub.conv1.weight'}
        _with_dcn(self, self.gc_weights, dcn)


class Duplicate(nn.Module):
    def __init__(self, dcn: bool) -> None:
        super().__init__()
        self.param1 = nn.Parameter(torch.ones(1))
        self.conv1 = nn.Sequential(nn.Conv2d(3, 4, kernel_size=1, bias=False))
        self.conv2 = nn.Sequential(nn.Conv2d(4, 2, kernel_size=1))
        self.bn = nn.BatchNorm2d(2)
        self.sub = Sub()
        self.conv3 = nn.Sequential(self.conv1[0])  # the same conv, twice
        self.gc_weights = {'conv1.0.weight', 'conv2.0.weight', 'sub.conv1.weight'}
        _with_dcn(self, self.gc_weights, dcn)


class Wrapped(nn.Module):
    """A wrapper with ``.module``, as a data-parallel model."""

    def __init__(self, dcn: bool) -> None:
        super().__init__()
        self.module = Example(dcn)


def _freeze(*names: str) -> Callable[[nn.Module], None]:
    def freeze(model: nn.Module) -> None:
        inner = getattr(model, 'module', model)
        for name in names:
            (inner.get_submodule(name) if name else inner).requires_grad_(False)

    return freeze


def _keep(model: nn.Module) -> None:
    pass


#: id -> (model class, optim wrapper cfg, paramwise_cfg, freezing)
CASES = {
    'none': (Example, SGD_CFG, None, _keep),
    'empty': (Example, SGD_CFG, {}, _keep),
    'all_frozen_none': (Example, SGD_CFG, None, _freeze('')),
    'all_frozen_empty': (Example, SGD_CFG, {}, _freeze('')),
    'some_frozen_none': (Example, SGD_CFG, None, _freeze('conv1', 'sub.gn')),
    'mults': (Example, SGD_CFG, MULTS, _keep),
    'mults_no_grad': (
        Example,
        SGD_CFG,
        {k: v for k, v in MULTS.items() if k != 'flat_decay_mult'},
        _freeze('conv1'),
    ),
    'wrapped_none': (Wrapped, SGD_CFG, None, _keep),
    'wrapped_mults': (Wrapped, SGD_CFG, MULTS, _keep),
    'duplicate_none': (Duplicate, SGD_CFG, None, _keep),
    'duplicate_bypass': (Duplicate, SGD_CFG, dict(MULTS, bypass_duplicate=True), _keep),
    'duplicate_bypass_frozen': (
        Duplicate,
        SGD_CFG,
        dict(MULTS, bypass_duplicate=True),
        _freeze('conv1.0'),
    ),
    'custom_keys': (Example, SGD_CFG, CUSTOM_KEYS, _keep),
    'custom_keys_no_wd': (
        Example,
        NO_WD_CFG,
        dict(custom_keys={'param1': dict(lr_mult=10)}),
        _keep,
    ),
}

DCN = [False, pytest.param(True, marks=pytest.mark.skipif(not HAS_MMCV_OPS, reason='no mmcv.ops'))]


def _mmgc_cfgs(base: dict, paramwise: dict | None) -> list[tuple[dict, dict | None]]:
    """mmgc's configs for one case: SGDGC and SGD, with and without gc_layers."""
    out = []
    for optimizer in ('SGDGC', 'SGD'):
        cfg = dict(base, optimizer=dict(base['optimizer'], type=optimizer))
        out.append((cfg, paramwise))
        out.append((cfg, dict(paramwise or {}, gc_layers=('conv', 'fc'))))
    return out


def _per_param(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """Parameter name -> its group's options."""
    inner = getattr(model, 'module', model)
    names = {id(p): n for n, p in inner.named_parameters()}
    settings: dict[str, dict] = {}
    for group in optimizer.param_groups:
        for param in group['params']:
            assert names[id(param)] not in settings, names[id(param)]
            settings[names[id(param)]] = {k: v for k, v in group.items() if k != 'params'}
    return settings


@pytest.mark.parametrize('dcn', DCN)
@pytest.mark.parametrize('case', sorted(CASES))
def test_each_parameter_gets_mmengines_settings(case, dcn):
    model_cls, base, paramwise, freeze = CASES[case]
    torch.manual_seed(0)
    model = model_cls(dcn)
    freeze(model)
    gc_weights = getattr(model, 'module', model).gc_weights
    expected = _per_param(model, DefaultOptimWrapperConstructor(base, paramwise)(model).optimizer)
    assert expected  # MMEngine built an optimizer with parameters
    for cfg, mmgc_paramwise in _mmgc_cfgs(base, paramwise):
        optimizer = GCOptimWrapperConstructor(cfg, mmgc_paramwise)(model).optimizer
        got = _per_param(model, optimizer)
        where = (cfg['optimizer']['type'], mmgc_paramwise)
        assert got.keys() == expected.keys(), where
        for name, settings in expected.items():
            for key in ('lr', 'weight_decay', 'momentum'):
                assert got[name][key] == pytest.approx(settings[key]), (where, name, key)
            gc = (got[name]['gc'], got[name]['gc_dim'])
            assert gc == ((True, 0) if name in gc_weights else (False, 0)), (where, name)
        distinct = {
            tuple((k, s[k]) for k in ('lr', 'weight_decay', 'momentum', 'gc', 'gc_dim'))
            for s in got.values()
        }
        assert len(optimizer.param_groups) == len(distinct), where


def test_some_frozen_without_paramwise_cfg_keeps_the_layout_of_a_baseline():
    """The optimizer holds what MMEngine's holds, so state dicts have the
    same parameters (checkpoints of a baseline and its GC twin match)."""
    torch.manual_seed(0)
    model = Example(dcn=False)
    _freeze('conv1', 'bn')(model)
    baseline = DefaultOptimWrapperConstructor(SGD_CFG)(model).optimizer
    gc = GCOptimWrapperConstructor(
        dict(SGD_CFG, optimizer=dict(SGD_CFG['optimizer'], type='SGDGC')),
        dict(gc_layers=('conv', 'fc')),
    )(model).optimizer
    assert sum(len(g['params']) for g in gc.param_groups) == len(baseline.param_groups[0]['params'])
    assert len(gc.state_dict()['param_groups']) == 2  # GC on / off, not one per tensor


ERROR_CASES = {
    # id: (model, freezing, optim wrapper cfg, paramwise_cfg, error, mmgc's message)
    'paramwise_cfg_not_a_dict': (
        Example,
        _keep,
        SGD_CFG,
        ['error'],
        TypeError,
        r"paramwise_cfg must be None or a dict; got \['error'\]",
    ),
    'custom_keys_not_a_dict': (
        Example,
        _keep,
        SGD_CFG,
        dict(custom_keys=[0.1, 0.0001]),
        TypeError,
        r'paramwise_cfg.custom_keys must be a dict .*; got \[0.1, 0.0001\]',
    ),
    'decay_mult_without_weight_decay': (
        Example,
        _keep,
        NO_WD_CFG,
        dict(bias_decay_mult=1, norm_decay_mult=1),
        ValueError,
        'base_wd should not be None',
    ),
    'custom_decay_mult_without_weight_decay': (
        Example,
        _keep,
        NO_WD_CFG,
        dict(custom_keys={'.backbone': dict(decay_mult=0.5)}),
        ValueError,
        'base_wd should not be None',
    ),
    'duplicate_without_bypass': (
        Duplicate,
        _keep,
        SGD_CFG,
        {k: v for k, v in MULTS.items() if k in ('bias_lr_mult', 'norm_decay_mult')},
        ValueError,
        r"'conv1.0.weight' appears more than once .*bypass_duplicate=True",
    ),
    'all_frozen_with_mmengine_options': (
        Example,
        _freeze(''),
        SGD_CFG,
        MULTS,
        ValueError,
        'empty parameter list',
    ),
}


@pytest.mark.parametrize('case', sorted(ERROR_CASES))
def test_errors_where_mmengine_raises(case):
    model_cls, freeze, base, paramwise, error, match = ERROR_CASES[case]
    model = model_cls(dcn=False)
    freeze(model)
    with pytest.raises(error):
        DefaultOptimWrapperConstructor(base, paramwise)(model)
    for cfg, _ in _mmgc_cfgs(base, None):
        with pytest.raises(error, match=match):
            GCOptimWrapperConstructor(cfg, paramwise)(model)


@pytest.mark.parametrize('dcn', DCN)
@pytest.mark.parametrize('case', sorted(CASES))
def test_new_form_over_mmengines_constructor_gives_the_old_forms_groups(case, dcn):
    """``optim_wrapper.gc`` over ``DefaultOptimWrapperConstructor`` (what
    ``enable_gc`` writes) builds, for every MMEngine case, the groups of the
    old form: same members in the same order, same options, plus
    ``gc_variant`` on the GC groups."""
    model_cls, base, paramwise, freeze = CASES[case]
    torch.manual_seed(0)
    model = model_cls(dcn)
    freeze(model)
    for cfg, _ in _mmgc_cfgs(base, paramwise)[::2]:  # SGDGC, SGD
        old = GCOptimWrapperConstructor(cfg, paramwise)(model).optimizer.param_groups
        new_cfg = dict(cfg, gc=dict(constructor='DefaultOptimWrapperConstructor'))
        new = GCOptimWrapperConstructor(new_cfg, paramwise)(model).optimizer.param_groups
        assert len(new) == len(old), cfg['optimizer']['type']
        for a, b in zip(old, new):
            assert [id(p) for p in a['params']] == [id(p) for p in b['params']]
            assert {k: v for k, v in b.items() if k not in ('params', 'gc_variant')} == {
                k: v for k, v in a.items() if k != 'params'
            }
            assert not b['gc'] or b['gc_variant'] == 'grad'
