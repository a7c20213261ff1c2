"""The ``mmgc`` registry scope (mmgc/registry.py) resolves into the run's
codebase: a config whose dicts carry ``_scope_='mmgc'`` gets MMDetection's,
MMSegmentation's or MMPretrain's class as its ``default_scope`` says, never
another codebase's class of the same name. On the torch 2.1 stack all three
are installed at once; the end-to-end runs are in tests/tools/test_codebase_runs.py."""

from __future__ import annotations

import time

import pytest
from mmengine.registry import MODELS, OPTIMIZERS, TRANSFORMS, DefaultScope

import mmgc.registry
from mmgc.engine.optimizers.sgd_gc import SGDGC
from tests.conftest import codebase_installed

#: Per codebase: its ResNet and the LoadAnnotations its scope resolves (MMPretrain
#: registers none of its own: MMCV's, which its TRANSFORMS inherit).
EXPECTED = {
    'mmdet': ('mmdet.models.backbones.resnet', 'mmdet.datasets.transforms.loading'),
    'mmseg': ('mmseg.models.backbones.resnet', 'mmseg.datasets.transforms.loading'),
    'mmpretrain': ('mmpretrain.models.backbones.resnet', 'mmcv.transforms.loading'),
}


@pytest.fixture
def run_scope():
    """``run_scope(name)``: a run's default scope, as the ``Runner`` makes it.
    The test starts with no default scope (those an earlier test in this
    process left, as ``init_default_scope`` does, are set aside) and they are
    back after it."""
    earlier = dict(DefaultScope._instance_dict)
    DefaultScope._instance_dict.clear()

    def make(name: str) -> None:
        time.sleep(1e-6)  # MMEngine's latest instance is the one made last
        DefaultScope.get_instance(f'test-registry-{name}-{time.time()}', scope_name=name)

    yield make
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(earlier)


def _in_mmgc_scope(registry, key):
    with registry.switch_scope_and_registry('mmgc') as scoped:
        return scoped, scoped.get(key)


@pytest.mark.parametrize('scope', [pytest.param(s, marks=codebase_installed(s)) for s in EXPECTED])
def test_mmgc_scope_resolves_into_the_runs_codebase(run_scope, scope):
    run_scope(scope)
    resnet_module, load_module = EXPECTED[scope]
    registry, resnet = _in_mmgc_scope(MODELS, 'ResNet')
    assert isinstance(registry, mmgc.registry.CodebaseRegistry)
    assert resnet.__module__ == resnet_module
    assert _in_mmgc_scope(TRANSFORMS, 'LoadAnnotations')[1].__module__ == load_module
    assert _in_mmgc_scope(OPTIMIZERS, 'SGDGC')[1] is SGDGC  # mmgc's, in MMEngine's root


@codebase_installed('mmseg')
@codebase_installed('mmdet')
def test_a_build_in_the_mmgc_scope_gets_the_codebases_class(run_scope):
    """Built from a config dict, and with the class of the other codebase at hand."""
    from mmdet.datasets.transforms import LoadAnnotations as DetLoadAnnotations
    from mmseg.datasets.transforms import LoadAnnotations as SegLoadAnnotations

    run_scope('mmseg')
    built = TRANSFORMS.build(dict(type='LoadAnnotations', _scope_='mmgc'))
    assert type(built) is SegLoadAnnotations and not isinstance(built, DetLoadAnnotations)
    run_scope('mmdet')  # a later run in the same process
    assert type(TRANSFORMS.build(dict(type='LoadAnnotations', _scope_='mmgc'))) is (
        DetLoadAnnotations
    )


@codebase_installed('mmdet')
def test_without_a_codebase_scope_the_mmgc_scope_is_mmdetections(run_scope):
    run_scope('mmgc')  # a config whose default_scope is mmgc
    assert mmgc.registry.run_codebase_scope() == 'mmdet'
    assert _in_mmgc_scope(MODELS, 'ResNet')[1].__module__ == EXPECTED['mmdet'][0]


def test_the_latest_codebase_scope_wins(run_scope):
    run_scope('mmseg')
    run_scope('mmgc')
    run_scope('mmpretrain')
    run_scope('mmgc')
    assert mmgc.registry.run_codebase_scope() == 'mmpretrain'
