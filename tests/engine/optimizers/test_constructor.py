"""GCOptimWrapperConstructor (mmgc.engine.optimizers.constructor): which
tensors get GC, the groups it builds, what it logs and refuses, GC composed
over another constructor (``optim_wrapper.gc``), and its parity with MMEngine's
DefaultOptimWrapperConstructor.

The oracle of the parity tests is MMEngine 0.10.7's own constructor test
(``tests/test_optim/test_optimizer/test_optimizer.py``): the models
``Example`` / ``Duplicate`` / ``Wrapped`` have the same layout as its
``ExampleModel`` / ``ExampleDuplicateModel`` / ``PseudoDataParallel`` (a bare
parameter, a bias-free conv, a conv, BN, a submodule with a depthwise conv,
GN and a bare parameter, a deformable conv where MMCV's ops are built, a conv
shared by two containers), and the cases are every ``paramwise_cfg`` and
freezing that test uses, with its lr, momentum and weight decay. For each
case MMEngine builds ``torch.optim.SGD`` and mmgc builds ``SGDGC`` and
``SGD`` (+ GC hooks), with and without ``gc_layers``: every parameter must be
in both optimizers or in neither, with the same lr, weight decay and
momentum; mmgc merges parameters with equal settings into one group and
gives each conv / linear weight (frozen ones too) ``gc=True``, ``gc_dim=0``,
every other tensor ``gc=False``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper, build_optim_wrapper
from torch import nn

from mmgc import SGDGC, GCOptimWrapperConstructor

BASE_LR, BASE_WD = 0.01, 1e-4


#: The multipliers of MMEngine's constructor test.
MULTS = dict(
    bias_lr_mult=2,
    bias_decay_mult=0.5,
    norm_decay_mult=0,
    dwconv_decay_mult=0.1,
    dcn_offset_lr_mult=0.1,
    flat_decay_mult=0.3,
)


class ToyModel(nn.Module):
    """Conv, depthwise conv, deconv, BN, GN, Linear, a bare parameter, a
    frozen conv and a weight shared by two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dwconv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gn = nn.GroupNorm(2, 8)
        self.deconv = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.frozen = nn.Conv2d(4, 4, 1)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 5)
        self.extra = nn.Parameter(torch.randn(3, 4))
        self.shared_a = nn.Linear(5, 5, bias=False)
        self.shared_b = nn.Linear(5, 5, bias=False)
        self.shared_b.weight = self.shared_a.weight

    def forward(self, x):
        x = self.gn(self.dwconv(self.bn(self.conv(x)).relu()))
        x = self.frozen(self.deconv(x)).mean((2, 3))
        x = self.shared_b(self.shared_a(self.head(x)))
        return x.sum() + self.extra.sum()


def _build(paramwise_cfg=None, optimizer_type='SGDGC', model=None, gc=None, optimizer=None):
    """``model`` (a seeded :class:`ToyModel` by default) and the wrapper the
    GC constructor builds; ``gc``: the new form's ``optim_wrapper.gc``."""
    torch.manual_seed(0)
    model = model or ToyModel()
    cfg = dict(
        type='OptimWrapper',
        optimizer=optimizer
        or dict(type=optimizer_type, lr=BASE_LR, momentum=0.9, weight_decay=BASE_WD),
        constructor='GCOptimWrapperConstructor',
    )
    if gc is not None:
        cfg['gc'] = gc
    if paramwise_cfg is not None:
        cfg['paramwise_cfg'] = paramwise_cfg
    return model, build_optim_wrapper(model, cfg)


def _settings(model, optimizer):
    """Parameter name -> its group's options (each parameter in one group)."""
    optimizer = getattr(optimizer, 'optimizer', optimizer)
    inner = getattr(model, 'module', model)
    names = {id(p): n for n, p in inner.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            assert names[id(p)] not in out, names[id(p)]
            out[names[id(p)]] = {k: v for k, v in group.items() if k != 'params'}
    return out


def _gc_map(model, optim_wrapper):
    return {
        n: (s['gc'], s['gc_dim']) for n, s in _settings(model, optim_wrapper).items() if s['gc']
    }


def _assert_same_groups(old: list[dict], new: list[dict]) -> None:
    """The new form's groups are the old form's: the same members in the same
    order, the same options, plus ``gc_variant`` on the GC groups."""
    assert len(new) == len(old)
    for a, b in zip(old, new):
        assert [id(p) for p in a['params']] == [id(p) for p in b['params']]
        options = {k: v for k, v in b.items() if k not in ('params', 'gc_variant')}
        assert options == {k: v for k, v in a.items() if k != 'params'}
        assert not b['gc'] or b['gc_variant'] == 'grad'


@pytest.fixture
def log_messages():
    logger = MMLogger.get_current_instance()
    messages = []

    class _Collect(logging.Handler):
        def emit(self, record):
            messages.append((record.levelno, record.getMessage()))

    handler = _Collect()
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


CONV = {
    'conv.weight': (True, 0),
    'dwconv.weight': (True, 0),
    'deconv.weight': (True, 1),
}
FC = {'head.weight': (True, 0), 'shared_a.weight': (True, 0)}


@pytest.mark.parametrize(
    ('gc_layers', 'expected'),
    [
        (None, {**CONV, **FC}),
        (('conv', 'fc'), {**CONV, **FC}),
        (['fc', 'conv'], {**CONV, **FC}),
        ('conv', CONV),
        (('conv',), CONV),
        ('fc', FC),
    ],
)
def test_selection_by_module_type(gc_layers, expected):
    paramwise = dict(bypass_duplicate=True)
    if gc_layers is not None:
        paramwise['gc_layers'] = gc_layers
    model, wrapper = _build(paramwise)
    assert isinstance(wrapper.optimizer, SGDGC)
    assert _gc_map(model, wrapper) == expected
    settings = _settings(model, wrapper)
    assert 'frozen.weight' not in settings and 'frozen.bias' not in settings
    assert settings['extra']['gc'] is False  # a bare parameter is never selected
    # one group per distinct setting, not one per tensor
    distinct = {tuple(sorted(s.items())) for s in settings.values()}
    assert len(wrapper.optimizer.param_groups) == len(distinct) <= 3


def test_custom_keys_switch_gc_off_and_on():
    model, wrapper = _build(
        dict(
            bypass_duplicate=True,
            custom_keys={
                'head': dict(gc=False),
                'deconv': dict(gc=False, lr_mult=0.5),
                'extra': dict(gc=True),
            },
        )
    )
    gc = _gc_map(model, wrapper)
    assert 'head.weight' not in gc and 'deconv.weight' not in gc
    assert gc['extra'] == (True, 0)
    assert gc['conv.weight'] == (True, 0)
    assert _settings(model, wrapper)['deconv.weight']['lr'] == pytest.approx(0.5 * BASE_LR)


def test_custom_keys_gc_false_joins_the_other_gc_false_group():
    """Identical settings share one group, however a custom_keys entry spells
    them (MMEngine writes the base lr / decay into a custom_keys group)."""
    model, wrapper = _build(
        dict(
            bypass_duplicate=True,
            custom_keys={
                'head': dict(gc=False),
                'shared_a': dict(gc=False, lr_mult=1.0, decay_mult=1.0),
            },
        )
    )
    groups = wrapper.optimizer.param_groups
    assert sorted((g['gc'], g['gc_dim']) for g in groups) == [(False, 0), (True, 0), (True, 1)]
    (off,) = [g for g in groups if not g['gc']]
    names = {id(p): n for n, p in model.named_parameters()}
    members = {names[id(p)] for p in off['params']}
    assert {'head.weight', 'shared_a.weight', 'conv.bias', 'bn.weight', 'extra'} <= members
    assert off['lr'] == BASE_LR and off['weight_decay'] == BASE_WD
    # the multipliers of some members do not describe the merged group
    assert 'lr_mult' not in off and 'decay_mult' not in off


def test_custom_keys_multipliers_stay_where_all_members_agree():
    model, wrapper = _build(
        dict(
            bypass_duplicate=True,
            custom_keys={'head': dict(lr_mult=0.5), 'shared_a': dict(lr_mult=0.5)},
        )
    )
    settings = _settings(model, wrapper)
    assert settings['head.weight'] == settings['shared_a.weight']
    assert settings['head.weight']['lr_mult'] == 0.5
    assert settings['head.weight']['lr'] == pytest.approx(0.5 * BASE_LR)
    assert settings['head.bias']['lr_mult'] == 0.5 and settings['head.bias']['gc'] is False


@pytest.mark.parametrize('optimizer_type', ['SGDGC', 'SGD'])
def test_frozen_tensors_are_kept_with_their_gc_setting(optimizer_type):
    """Unfreezing later trains them, with GC (each output unit's weight sum
    stays: paper, Eq. 3)."""
    torch.manual_seed(0)
    model = ToyModel()
    model.deconv.requires_grad_(False)
    model, wrapper = _build(dict(gc_layers=('conv', 'fc')), optimizer_type, model)
    gc = _gc_map(model, wrapper)
    assert gc['frozen.weight'] == (True, 0) and gc['deconv.weight'] == (True, 1)
    assert 'frozen.bias' in _settings(model, wrapper)

    model.frozen.requires_grad_(True)
    model.deconv.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(2):
        wrapper.zero_grad()
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(step))
        model(x).backward()
        wrapper.step()
    after = {n: p.detach() for n, p in model.named_parameters()}
    for name, out_dim in (('frozen.weight', 0), ('deconv.weight', 1)):
        assert not torch.equal(after[name], before[name]), name
        dims = [d for d in range(after[name].ndim) if d != out_dim]
        torch.testing.assert_close(after[name].sum(dims), before[name].sum(dims), rtol=0, atol=1e-6)
    assert not torch.equal(after['frozen.bias'], before['frozen.bias'])


@pytest.mark.parametrize(
    ('paramwise', 'expected'),
    [
        # 5 GC tensors: conv, dwconv, deconv (3 convs), head, shared_a (2 fc);
        # MMEngine's walk leaves out the frozen conv's 2 tensors
        (
            dict(bypass_duplicate=True),
            ['on 5 of 14 tensors in the optimizer', 'conv 3 tensors', '3 parameter groups'],
        ),
        # the frozen conv's weight gets GC too; the shared weight counts once
        (
            dict(gc_layers=('conv', 'fc')),
            [
                'on 6 of 16 tensors in the optimizer',
                'conv 4 tensors',
                '2 frozen tensors (requires_grad=False) are kept in the optimizer',
            ],
        ),
    ],
    ids=['mmengine-options', 'gc_layers-only'],
)
def test_logs_summary_once(log_messages, paramwise, expected):
    _build(paramwise)
    (summary,) = [m for _, m in log_messages if 'gradient centralization on' in m]
    for part in [*expected, 'fc 2 tensors']:
        assert part in summary, (part, summary)
    assert ('frozen' in summary) == ('gc_layers' in paramwise)


def test_refuses_when_nothing_is_selected():
    """A run configured for GC that would centralize nothing does not start."""
    model = nn.Sequential(nn.BatchNorm2d(3), nn.GroupNorm(1, 3))
    match = r"no weight gets gradient centralization \(gc_layers=\('conv',\)\)"
    with pytest.raises(ValueError, match=match):
        _build(dict(gc_layers='conv'), model=model)


def test_mmcv_convolutions_are_selected():
    from mmcv.cnn import ConvWS2d
    from mmcv.ops import DeformConv2dPack, ModulatedDeformConv2dPack

    model = nn.Sequential(
        ConvWS2d(3, 4, 3),
        DeformConv2dPack(4, 4, 3, padding=1),
        ModulatedDeformConv2dPack(4, 4, 3, padding=1),
    )
    _, wrapper = _build(dict(gc_layers='conv'), model=model)
    gc = _gc_map(model, wrapper)
    assert gc['0.weight'] == (True, 0)  # ConvWS2d
    assert gc['1.weight'] == (True, 0) and gc['1.conv_offset.weight'] == (True, 0)
    assert gc['2.weight'] == (True, 0)


def test_grouped_transposed_conv_is_left_out(log_messages):
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 2, groups=2), nn.Conv2d(6, 2, 1))
    _, wrapper = _build(dict(gc_layers='conv'), model=model)
    assert _gc_map(model, wrapper) == {'1.weight': (True, 0)}
    assert any('grouped transposed conv' in m for _, m in log_messages)


def test_builds_from_config_in_mmdet_scope():
    from mmengine.registry import DefaultScope

    import mmgc  # noqa: F401

    with DefaultScope.overwrite_default_scope('mmdet'):
        model, wrapper = _build(dict(gc_layers=('conv', 'fc'), bypass_duplicate=True))
    assert type(wrapper.optimizer) is SGDGC


ERROR_CASES = [
    (
        dict(gc_layers='conv2d'),
        ValueError,
        r"gc_layers must be a non-empty subset of \('conv', 'fc'\); got 'conv2d'",
    ),
    (dict(gc_layers=()), ValueError, r'non-empty subset .*got \(\)'),
    (dict(gc_layers=['conv', 'bn']), ValueError, r"got \['conv', 'bn'\]"),
    (dict(gc_layers=3), ValueError, r'got 3'),
    (
        dict(gc_layer='conv'),
        ValueError,
        r"unknown paramwise_cfg key\(s\) \['gc_layer'\]; valid keys are .*'gc_layers'",
    ),
    (
        dict(custom_keys={'head': 0.1}),
        TypeError,
        r"custom_keys\['head'\] must be a dict of options .*got 0.1",
    ),
    (
        dict(custom_keys={'head': dict(gc='no')}),
        TypeError,
        r"custom_keys\['head'\]: param group option gc must be True or False; got 'no'",
    ),
]


@pytest.mark.parametrize(('paramwise', 'error', 'match'), ERROR_CASES)
def test_invalid_config(paramwise, error, match):
    with pytest.raises(error, match=match):
        _build(paramwise)


@pytest.mark.parametrize('optimizer', ['LBFGS', 'SparseAdam'])
def test_optimizer_that_cannot_apply_gc(optimizer):
    with pytest.raises(
        ValueError,
        match=rf"one of \[.*'AdamW'.*'SGDGC'.*'SGD_GC'.*\]; got optimizer type '{optimizer}'",
    ):
        _build(dict(gc_layers='conv'), optimizer_type=optimizer)


def test_constructor_is_registered_in_root_registry():
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    assert OPTIM_WRAPPER_CONSTRUCTORS.get('GCOptimWrapperConstructor') is GCOptimWrapperConstructor


# --- the new form: GC composed over an inner constructor (optim_wrapper.gc) ---


PARAMWISE_CASES = [
    None,
    dict(bypass_duplicate=True),
    dict(
        bias_lr_mult=2.0,
        norm_decay_mult=0.0,
        dwconv_decay_mult=0.5,
        bypass_duplicate=True,
        custom_keys={'head': dict(lr_mult=0.1, decay_mult=0.0), 'deconv': dict(gc=False)},
    ),
]


@pytest.mark.parametrize('paramwise', PARAMWISE_CASES)
@pytest.mark.parametrize('gc_layers', [('conv', 'fc'), ('conv',)])
def test_new_form_over_the_default_constructor_equals_the_old_form(paramwise, gc_layers):
    """Same groups, same members, same options; the new form adds only ``gc_variant``."""
    model, old = _build(dict(paramwise or {}, gc_layers=gc_layers))
    _, new = _build(gc=dict(layers=gc_layers), paramwise_cfg=paramwise, model=model)
    _assert_same_groups(old.optimizer.param_groups, new.optimizer.param_groups)


class TaggingConstructor(DefaultOptimWrapperConstructor):
    """A user's constructor: per-module groups with lr, betas, its own keys and
    one name per parameter (as MMDetection's layer decay writes them)."""

    def add_params(self, params, module, **kwargs):
        for index, (prefix, child) in enumerate(module.named_children()):
            members = [(f'{prefix}.{n}', p) for n, p in child.named_parameters()]
            members = [(n, p) for n, p in members if p.requires_grad]
            if not members or any(p is q for _, p in members for g in params for q in g['params']):
                continue
            params.append(
                dict(
                    params=[p for _, p in members],
                    param_names=[n for n, _ in members],
                    lr=self.base_lr * (index + 1),
                    betas=(0.8, 0.99 - index * 0.01),
                    weight_decay=self.base_wd if index % 2 else 0.0,
                    group_name=f'block_{index}',
                    lr_scale=float(index + 1),
                )
            )


def _members(optimizer, model):
    """name -> (its group's options, its entry of param_names)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for i, p in enumerate(group['params']):
            options = {k: v for k, v in group.items() if k not in ('params', 'param_names')}
            out[names[id(p)]] = (options, group['param_names'][i])
    return out


def _assert_composed(optimizer, base, model) -> dict[str, dict]:
    """GC over the constructor that built ``base`` keeps its parameters, each
    one's group options and ``param_names`` entry (split with it), adding only
    the GC keys; returns name -> its group's options."""
    ours, theirs = _members(optimizer, model), _members(base, model)
    assert ours.keys() == theirs.keys()
    for name, (options, param_name) in ours.items():
        assert param_name == theirs[name][1] == name
        rest = {k: v for k, v in options.items() if k not in ('gc', 'gc_dim', 'gc_variant')}
        assert rest == theirs[name][0], name
    return {name: options for name, (options, _) in ours.items()}


def test_composes_over_a_user_constructor_keeping_every_key():
    adam = dict(type='Adam', lr=1e-3, weight_decay=1e-2)
    model = ToyModel()
    base = TaggingConstructor(dict(type='OptimWrapper', optimizer=adam), dict(x=1))(model).optimizer
    _, wrapper = _build(
        gc=dict(constructor=TaggingConstructor, variant='grad'),
        optimizer=adam,
        paramwise_cfg=dict(x=1),
        model=model,
    )
    options = _assert_composed(wrapper.optimizer, base, model)
    gc_names = {'conv.weight', 'dwconv.weight', 'deconv.weight', 'head.weight', 'shared_a.weight'}
    assert {name for name, o in options.items() if o['gc']} == gc_names
    assert all(options[name]['gc_variant'] == 'grad' for name in gc_names)
    # a block with conv weight and bias is split in two, differing only in GC
    conv_groups = [g for g in wrapper.optimizer.param_groups if g['group_name'] == 'block_0']
    assert sorted(g['gc'] for g in conv_groups) == [False, True]
    assert type(wrapper.optimizer) is torch.optim.Adam


class _ExtraTensorConstructor(DefaultOptimWrapperConstructor):
    def add_params(self, params, module, **kwargs):
        params.append(dict(params=list(module.parameters()) + [torch.zeros(3, requires_grad=True)]))


class _TwiceConstructor(DefaultOptimWrapperConstructor):
    def add_params(self, params, module, **kwargs):
        params.append(dict(params=list(module.parameters())))
        params.append(dict(params=[module.head.weight], lr=0.5))


class _SameGroupTwiceConstructor(DefaultOptimWrapperConstructor):
    def add_params(self, params, module, **kwargs):
        params.append(dict(params=[*module.parameters(), module.conv.weight]))


class _OwnOptimizerConstructor:
    def __init__(self, optim_wrapper_cfg, paramwise_cfg=None):
        pass

    def __call__(self, model):
        return OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))


NEW_FORM_ERRORS = [
    (dict(variant='gcc'), ValueError, r"must be one of \('grad', 'update', 'sgdw'\); got 'gcc'"),
    (dict(layers=('conv', 'bn')), ValueError, r"non-empty subset of \('conv', 'fc'\)"),
    (dict(layer='conv'), ValueError, r"unknown optim_wrapper.gc key\(s\) \['layer'\]"),
    ('conv', TypeError, r'optim_wrapper.gc must be a dict'),
    (dict(constructor='GCOptimWrapperConstructor'), ValueError, 'the constructor GC is added to'),
    (
        dict(constructor=_ExtraTensorConstructor),
        ValueError,
        r'_ExtraTensorConstructor put a tensor of shape \(3,\) into parameter group 0, '
        r'which is not a parameter of the model',
    ),
    (
        dict(constructor=_TwiceConstructor),
        ValueError,
        r"parameter 'head.weight' appears more than once .*groups 0 and 1.*bypass_duplicate",
    ),
    (
        dict(constructor=_SameGroupTwiceConstructor),
        ValueError,
        r"parameter 'conv.weight' appears more than once .*\(group 0, twice",
    ),
    (
        dict(constructor=_OwnOptimizerConstructor),
        TypeError,
        r'cannot add GC to _OwnOptimizerConstructor: it built OptimWrapper, not one optimizer',
    ),
]


@pytest.mark.parametrize(('gc', 'error', 'match'), NEW_FORM_ERRORS)
def test_new_form_errors(gc, error, match):
    with pytest.raises(error, match=match):  # a non-empty paramwise_cfg: add_params runs
        _build(gc=gc, paramwise_cfg=dict(bypass_duplicate=False))


def test_new_form_gc_layers_must_agree():
    with pytest.raises(
        ValueError, match=r"gc_layers=\('conv',\) disagrees with .*\('conv', 'fc'\)"
    ):
        _build(gc=dict(layers=('conv', 'fc')), paramwise_cfg=dict(gc_layers='conv'))
    _, wrapper = _build(gc=dict(layers='conv'), paramwise_cfg=dict(gc_layers='conv'))
    assert any(g['gc'] for g in wrapper.optimizer.param_groups)


@pytest.mark.parametrize(
    ('optimizer', 'variant', 'match'),
    [
        (dict(type='LBFGS', lr=1.0), 'grad', r"one of \[.*'SGDGC'.*\]; got optimizer type 'LBFGS'"),
        (
            dict(type='AdamW', lr=1e-3),
            'sgdw',
            r"GC variant 'sgdw' is not defined for optimizer type 'AdamW' \('sgdw' is SGD "
            r'with decoupled decay, SGDWGC\)',
        ),
        (dict(type='SGD', lr=0.1), 'sgdw', r"GC variant 'sgdw' is not defined for .*'SGD'"),
    ],
)
def test_optimizer_that_cannot_take_the_variant(optimizer, variant, match):
    with pytest.raises(ValueError, match=match):
        _build(gc=dict(variant=variant), optimizer=optimizer)


@pytest.mark.parametrize('name', ['SGDGC', 'Adam'])
def test_update_variant_where_the_step_implements_it(name):
    """'update' is built where the step implements it (SGDGC, where it is the
    same step as 'grad': test_sgd_gc.py's test_gc_variant_update_is_the_same_sgd_update;
    a hook optimizer where the hooks implement it), else refused."""
    from mmgc.engine.optimizers.capability import gc_variants_of

    optimizer = dict(type=name, lr=1e-3)
    if 'update' in gc_variants_of(SGDGC if name == 'SGDGC' else getattr(torch.optim, name)):
        _, wrapper = _build(gc=dict(variant='update', layers='conv'), optimizer=optimizer)
        variants = {g.get('gc_variant') for g in wrapper.optimizer.param_groups if g['gc']}
        assert variants == {'update'}
    else:
        with pytest.raises(ValueError, match=rf"GC variant 'update' is not defined for .*'{name}'"):
            _build(gc=dict(variant='update'), optimizer=optimizer)


def test_layer_decay_constructor_of_mmdetection():
    """MMDetection's real LearningRateDecayOptimizerConstructor, which decides
    by the backbone's class name and parameter names (a ConvNeXt's), on a
    tiny model with that layout: every group keeps lr, lr_scale, decay,
    group_name and its param_names; conv / fc weights get GC."""
    from mmdet.engine.optimizers import LearningRateDecayOptimizerConstructor

    class TinyConvNeXt(nn.Module):
        def __init__(self):
            super().__init__()
            self.downsample_layers = nn.ModuleList(
                [nn.Sequential(nn.Conv2d(3, 4, 2), nn.LayerNorm(4)) for _ in range(4)]
            )
            self.stages = nn.ModuleList(
                [
                    nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Linear(4, 8))])
                    for _ in range(4)
                ]
            )

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = TinyConvNeXt()
            self.neck = nn.Conv2d(4, 4, 1)
            self.head = nn.Linear(4, 2)

    torch.manual_seed(0)
    model = Detector()
    adamw = dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    paramwise = dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6)
    base = LearningRateDecayOptimizerConstructor(dict(optimizer=adamw), paramwise)(model).optimizer
    _, wrapper = _build(
        gc=dict(constructor='mmdet.LearningRateDecayOptimizerConstructor', layers=('conv', 'fc')),
        optimizer=adamw,
        paramwise_cfg=paramwise,
        model=model,
    )
    assert len({g['lr_scale'] for g in base.param_groups}) > 3  # layer decay really acts
    options = _assert_composed(wrapper.optimizer, base, model)
    assert options.keys() == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert options[name]['gc'] is (name.endswith('weight') and p.ndim > 1), name


@pytest.mark.parametrize('kdim', [None, 3])
def test_multihead_attention_projections_are_fc_weights(kdim):
    """``nn.MultiheadAttention`` keeps its input projections as bare ``(out, in)``
    parameters (one ``in_proj_weight``, or q/k/v ones when ``kdim`` differs):
    fully-connected weights, selected with ``fc`` by the module's type."""
    model = nn.Sequential(nn.MultiheadAttention(4, 2, kdim=kdim, vdim=kdim), nn.Conv2d(3, 4, 1))
    names = (
        {'in_proj_weight'} if kdim is None else {'q_proj_weight', 'k_proj_weight', 'v_proj_weight'}
    )
    _, wrapper = _build(dict(gc_layers=('conv', 'fc')), model=model)
    gc = _gc_map(model, wrapper)
    assert gc == {
        **{f'0.{n}': (True, 0) for n in names},
        '0.out_proj.weight': (True, 0),
        '1.weight': (True, 0),
    }
    _, wrapper = _build(dict(gc_layers='conv'), model=model)
    assert _gc_map(model, wrapper) == {'1.weight': (True, 0)}


# --- parity with MMEngine's DefaultOptimWrapperConstructor (its own test's cases) ---

LR, MOMENTUM, WD = 0.01, 0.0001, 0.9
SGD_CFG = dict(
    type='OptimWrapper', optimizer=dict(type='SGD', lr=LR, momentum=MOMENTUM, weight_decay=WD)
)
NO_WD_CFG = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=LR, momentum=MOMENTUM))
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


#: id -> (model class, optim wrapper cfg, paramwise_cfg, freezing)
CASES = {
    'none': (Example, SGD_CFG, None, _freeze()),
    'empty': (Example, SGD_CFG, {}, _freeze()),
    'all_frozen_none': (Example, SGD_CFG, None, _freeze('')),
    'all_frozen_empty': (Example, SGD_CFG, {}, _freeze('')),
    'some_frozen_none': (Example, SGD_CFG, None, _freeze('conv1', 'sub.gn')),
    'mults': (Example, SGD_CFG, MULTS, _freeze()),
    'mults_no_grad': (
        Example,
        SGD_CFG,
        {k: v for k, v in MULTS.items() if k != 'flat_decay_mult'},
        _freeze('conv1'),
    ),
    'wrapped_none': (Wrapped, SGD_CFG, None, _freeze()),
    'wrapped_mults': (Wrapped, SGD_CFG, MULTS, _freeze()),
    'duplicate_none': (Duplicate, SGD_CFG, None, _freeze()),
    'duplicate_bypass': (Duplicate, SGD_CFG, dict(MULTS, bypass_duplicate=True), _freeze()),
    'duplicate_bypass_frozen': (
        Duplicate,
        SGD_CFG,
        dict(MULTS, bypass_duplicate=True),
        _freeze('conv1.0'),
    ),
    'custom_keys': (Example, SGD_CFG, CUSTOM_KEYS, _freeze()),
    'custom_keys_no_wd': (
        Example,
        NO_WD_CFG,
        dict(custom_keys={'param1': dict(lr_mult=10)}),
        _freeze(),
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


@pytest.mark.parametrize('dcn', DCN)
@pytest.mark.parametrize('case', sorted(CASES))
def test_each_parameter_gets_mmengines_settings(case, dcn):
    model_cls, base, paramwise, freeze = CASES[case]
    torch.manual_seed(0)
    model = model_cls(dcn)
    freeze(model)
    gc_weights = getattr(model, 'module', model).gc_weights
    expected = _settings(model, DefaultOptimWrapperConstructor(base, paramwise)(model).optimizer)
    assert expected  # MMEngine built an optimizer with parameters
    for cfg, mmgc_paramwise in _mmgc_cfgs(base, paramwise):
        optimizer = GCOptimWrapperConstructor(cfg, mmgc_paramwise)(model).optimizer
        got = _settings(model, optimizer)
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


def _error(paramwise, error, match, model=Example, freeze=None, base=SGD_CFG) -> tuple:
    """A case of :data:`MMENGINE_ERROR_CASES`: Example, nothing frozen,
    SGD_CFG unless told."""
    return model, freeze or _freeze(), base, paramwise, error, match


MMENGINE_ERROR_CASES = {
    # id: (model, freezing, optim wrapper cfg, paramwise_cfg, error, mmgc's message)
    'paramwise_cfg_not_a_dict': _error(
        ['error'], TypeError, r"paramwise_cfg must be None or a dict; got \['error'\]"
    ),
    'custom_keys_not_a_dict': _error(
        dict(custom_keys=[0.1, 0.0001]),
        TypeError,
        r'paramwise_cfg.custom_keys must be a dict .*; got \[0.1, 0.0001\]',
    ),
    'decay_mult_without_weight_decay': _error(
        dict(bias_decay_mult=1, norm_decay_mult=1),
        ValueError,
        'base_wd should not be None',
        base=NO_WD_CFG,
    ),
    'custom_decay_mult_without_weight_decay': _error(
        dict(custom_keys={'.backbone': dict(decay_mult=0.5)}),
        ValueError,
        'base_wd should not be None',
        base=NO_WD_CFG,
    ),
    'duplicate_without_bypass': _error(
        {k: v for k, v in MULTS.items() if k in ('bias_lr_mult', 'norm_decay_mult')},
        ValueError,
        r"'conv1.0.weight' appears more than once .*bypass_duplicate=True",
        model=Duplicate,
    ),
    'all_frozen_with_mmengine_options': _error(
        MULTS, ValueError, 'empty parameter list', freeze=_freeze('')
    ),
}


@pytest.mark.parametrize('case', sorted(MMENGINE_ERROR_CASES))
def test_errors_where_mmengine_raises(case):
    model_cls, freeze, base, paramwise, error, match = MMENGINE_ERROR_CASES[case]
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
        _assert_same_groups(
            old, GCOptimWrapperConstructor(new_cfg, paramwise)(model).optimizer.param_groups
        )


# --- weights forced into GC by custom_keys (issue 28) ---


@pytest.mark.parametrize('form', ['old', 'new'])
def test_forced_transposed_conv_is_centralized_on_its_output_dim(form, log_messages):
    """custom_keys gc=True on a ConvTranspose2d whose kind gc_layers leaves
    out: gc_dim=1 (its output units), as the default selection gives it; its
    1-D bias is left out of GC and counted, never centralized to zero."""
    paramwise = dict(bypass_duplicate=True, custom_keys={'deconv': dict(gc=True)})
    if form == 'old':
        model, wrapper = _build(dict(paramwise, gc_layers=('fc',)))
    else:
        model, wrapper = _build(paramwise, gc=dict(layers=('fc',)))
    assert model.deconv.weight.shape == (8, 4, 2, 2)
    assert _gc_map(model, wrapper) == {**FC, 'deconv.weight': (True, 1)}
    settings = _settings(model, wrapper)
    assert settings['deconv.bias']['gc'] is False
    (summary,) = [m for _, m in log_messages if 'GCOptimWrapperConstructor:' in m]
    assert 'left out of GC on 1 1-D tensors' in summary


def test_forced_weight_keeps_an_explicit_gc_dim():
    model, wrapper = _build(
        dict(bypass_duplicate=True, custom_keys={'deconv': dict(gc=True, gc_dim=0)}, gc_layers='fc')
    )
    assert _gc_map(model, wrapper)['deconv.weight'] == (True, 0)


def test_every_forced_transposed_conv_gets_dim_1():
    model = nn.Sequential(nn.ConvTranspose1d(4, 6, 3), nn.ConvTranspose3d(6, 2, 2), nn.Linear(3, 2))
    custom_keys = {'0.weight': dict(gc=True), '1.weight': dict(gc=True)}
    _, wrapper = _build(dict(gc_layers='fc', custom_keys=custom_keys), model=model)
    expected = {'0.weight': (True, 1), '1.weight': (True, 1), '2.weight': (True, 0)}
    assert _gc_map(model, wrapper) == expected


@pytest.mark.parametrize('gc_layers', [('conv', 'fc'), ('fc',)])
def test_forced_tensors_without_an_output_axis_are_left_out(gc_layers, log_messages):
    """A forced 1-D tensor (norm weight, bias), a tensor with one element per
    output unit and a grouped transposed conv's weight are left out of GC,
    each counted in the one summary line: never centralized to zero."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.up = nn.ConvTranspose2d(4, 6, 2, groups=2)
            self.scale = nn.Parameter(torch.ones(6, 1, 1))
            self.head = nn.Linear(6, 2)

    model = Model()
    custom_keys = {'bn': dict(gc=True), 'up.weight': dict(gc=True), 'scale': dict(gc=True)}
    _, wrapper = _build(dict(gc_layers=gc_layers, custom_keys=custom_keys), model=model)
    settings = _settings(model, wrapper)
    for name in ('bn.weight', 'bn.bias', 'up.weight', 'scale'):
        assert settings[name]['gc'] is False, name
    expected = {'head.weight': (True, 0)}
    if 'conv' in gc_layers:
        expected['conv.weight'] = (True, 0)
    assert _gc_map(model, wrapper) == expected
    (summary,) = [m for _, m in log_messages if 'GCOptimWrapperConstructor:' in m]
    assert 'gc=True (custom_keys) left out of GC on ' in summary
    assert '2 1-D tensors' in summary
    assert '1 grouped transposed conv weights' in summary
    assert '1 tensors with one element per output unit' in summary


def test_forced_transposed_conv_trains_on_its_output_units():
    """The forced deconv's steps follow the float64 reference with P on dim 1,
    and each output unit's weight sum over dims (0, 2, 3) stays (Eq. 3)."""
    from tests.reference import ReferenceSGDGC

    model = nn.Sequential(nn.Linear(3, 4), nn.ConvTranspose2d(4, 6, 2)).double()
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    _, wrapper = _build(
        dict(gc_layers='fc', custom_keys={'1.weight': dict(gc=True)}),
        model=model,
        optimizer=dict(type='SGDGC', **hyper),
    )
    weight = model[1].weight
    params = [p for g in wrapper.optimizer.param_groups for p in g['params']]
    dims = {id(model[0].weight): 0, id(weight): 1}
    ref = ReferenceSGDGC(params, [dims.get(id(p)) for p in params], **hyper)
    sums = weight.detach().sum((0, 2, 3))
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        wrapper.optimizer.step()
        ref.step(grads)
    for p, expected in zip(params, ref.weights):
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weight.detach().sum((0, 2, 3)), sums, rtol=0, atol=1e-12)


def test_the_old_form_loads_with_one_warning_that_names_the_new_form():
    """``paramwise_cfg.gc_layers`` (no ``gc``) builds the groups the new form
    builds, with one FutureWarning naming ``gc=dict(layers=...)``; the new form
    warns nothing."""
    import warnings

    with warnings.catch_warnings(record=True) as old_warnings:
        warnings.simplefilter('always')
        model, old = _build(paramwise_cfg=dict(gc_layers=('conv',)))
    with warnings.catch_warnings(record=True) as new_warnings:
        warnings.simplefilter('always')
        new_model, new = _build(gc=dict(layers=('conv',)))
    ours = [w for w in old_warnings if issubclass(w.category, FutureWarning)]
    assert len(ours) == 1
    assert "gc=dict(layers=('conv',))" in str(ours[0].message)
    assert not [w for w in new_warnings if 'GCOptimWrapperConstructor' in str(w.message)]

    def without_variant(model, wrapper):
        return {
            n: {k: v for k, v in s.items() if k != 'gc_variant'}
            for n, s in _settings(model, wrapper).items()
        }

    assert without_variant(model, old) == without_variant(new_model, new)  # the same groups
