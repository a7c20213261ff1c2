"""What ``import mmgc`` does: registers the core, checks versions, nothing else."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import mmgc
from mmgc import SGDGC
from mmgc.version import SUPPORTED_VERSIONS, UnsupportedVersionError, check_version

_PROBE = r"""
import json, sys
from mmengine.fileio.backends import backends
before = dict(backends)
import mmgc
from mmengine.registry import HOOKS, OPTIMIZERS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as CONSTRUCTORS
print(json.dumps(dict(
    modules=sorted(m for m in sys.modules if m.split('.')[0] in ('mmgc', 'mmdet', 'mmcv')),
    backends_changed=dict(backends) != before,
    registered=[
        OPTIMIZERS.get('SGDGC') is mmgc.SGDGC,
        OPTIMIZERS.get('SGD_GC') is mmgc.SGDGC,
        CONSTRUCTORS.get('GCOptimWrapperConstructor') is mmgc.GCOptimWrapperConstructor,
        HOOKS.get('GCDiagnosticsHook') is mmgc.GCDiagnosticsHook,
    ],
    tools_hooks=[HOOKS.get(name) is not None for name in ('StepSeedHook', 'AtomicCheckpointHook')],
)))
"""


@pytest.fixture(scope='module')
def after_import() -> dict:
    out = subprocess.run(
        [sys.executable, '-c', _PROBE], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_registers_what_configs_name(after_import):
    assert after_import['registered'] == [True, True, True, True]


def test_import_loads_the_core_only(after_import):
    modules = after_import['modules']
    assert not [m for m in modules if m.startswith('mmgc.runtime')]
    assert not [m for m in modules if m.split('.')[0] in ('mmdet', 'mmcv')]
    assert {'mmgc.ops.centralize', 'mmgc.engine.optimizers.sgd_gc'} <= set(modules)


def test_import_has_no_other_side_effects(after_import):
    assert after_import['backends_changed'] is False
    assert after_import['tools_hooks'] == [False, False]


@pytest.mark.parametrize('name', sorted(SUPPORTED_VERSIONS))
def test_versions_outside_the_tested_range_are_refused(name):
    low, high = SUPPORTED_VERSIONS[name]
    check_version(name, low)
    for bad in ('0.0.1', high):
        with pytest.raises(UnsupportedVersionError) as info:
            check_version(name, bad)
        message = str(info.value)
        assert f'{name} {bad} is installed' in message
        assert f'>={low}, <{high}' in message
        assert message.count('. ') == 0


def test_local_build_tags_are_read_as_their_release():
    check_version('torch', '2.1.2+cu121')
    check_version('torch', '2.13.0+cpu')
    with pytest.raises(UnsupportedVersionError, match=r'torch 2\.0\.1\+cu118 is installed'):
        check_version('torch', '2.0.1+cu118')


def test_public_names():
    assert set(mmgc.__all__) >= {'SGDGC', 'GCOptimWrapperConstructor'}


@pytest.mark.parametrize('name', ['SGDGC', 'SGD_GC'])
def test_builds_in_mmdet_scope_with_default_constructor(name):
    pytest.importorskip('mmdet')
    from mmdet.registry import OPTIMIZERS as MMDET_OPTIMIZERS

    assert MMDET_OPTIMIZERS.get(name) is SGDGC  # found through the parent registry
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with DefaultScope.overwrite_default_scope('mmdet'):
        wrapper = build_optim_wrapper(
            model,
            dict(optimizer=dict(type=name, lr=0.02, momentum=0.9, weight_decay=1e-4)),
        )
    opt = wrapper.optimizer
    assert type(opt) is SGDGC
    # no constructor: the authors' SGD_GC, one group, every ndim > 1 tensor, dim 0
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0]['gc'] is True and opt.param_groups[0]['gc_dim'] == 0
    assert opt.param_groups[0]['lr'] == 0.02


def test_the_public_api_is_flat_and_all_lists_it():
    """``from mmgc import ...`` for the switch, the optimizers, the hooks' GC and the
    constructor; ``__all__`` names every public attribute but submodules, and only those."""
    from mmgc import (  # noqa: F401
        SGDGC,
        SGDWGC,
        GCOptimWrapperConstructor,
        attach_gc_hooks,
        enable_gc,
    )
    from mmgc.engine.optimizers import gc_step_hooks, gc_switch

    assert enable_gc is gc_switch.enable_gc and attach_gc_hooks is gc_step_hooks.attach_gc_hooks
    assert SGDWGC is importlib.import_module('mmgc.engine.optimizers.sgd_gc').SGDWGC
    public = {
        name
        for name, value in vars(mmgc).items()
        if not name.startswith('_') and not isinstance(value, type(mmgc))
    }
    assert public | {'__version__'} == set(mmgc.__all__)
    assert all(hasattr(mmgc, name) for name in mmgc.__all__)
