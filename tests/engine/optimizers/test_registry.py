import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import OPTIMIZERS, DefaultScope

import mmgc
from mmgc import SGDGC


def test_import_registers_both_names_in_root_registry():
    assert OPTIMIZERS.get('SGDGC') is SGDGC
    assert OPTIMIZERS.get('SGD_GC') is SGDGC
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
