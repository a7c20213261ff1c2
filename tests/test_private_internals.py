"""The private internals of torch and MMEngine that mmgc relies on, each
pinned here, so that a torch or MMEngine release that changes one fails this
file rather than mmgc's results. (``CheckpointHook._save_checkpoint_with_step``
is pinned with the atomic checkpoint tests.)"""

from __future__ import annotations

import inspect

import pytest
import torch
from mmengine.optim import OptimWrapper


def test_torch_default_to_fused_or_foreach():
    # mmgc/engine/optimizers/sgd_gc.py: torch's own foreach choice for the generic path
    from torch.optim.optimizer import _default_to_fused_or_foreach

    assert list(inspect.signature(_default_to_fused_or_foreach).parameters)[:3] == [
        'params',
        'differentiable',
        'use_fused',
    ]
    result = _default_to_fused_or_foreach([torch.zeros(2)], differentiable=False, use_fused=False)
    assert len(result) == 2 and all(isinstance(x, bool) for x in result)


def test_torch_fsdp1_flattened_marker():
    # mmgc/engine/optimizers/coverage.py: how FSDP1 marks the tensors it flattened
    if not torch.distributed.is_available():
        pytest.skip('torch.distributed is not available')
    from torch.distributed.fsdp import _common_utils

    assert _common_utils.FSDP_FLATTENED == '_fsdp_flattened'


def test_mmengine_optim_wrapper_accumulative_counts():
    # mmgc/engine/hooks/gc_diagnostics_hook.py: how often the optimizer steps
    param = torch.nn.Parameter(torch.zeros(2))
    wrapper = OptimWrapper(torch.optim.SGD([param], lr=0.1), accumulative_counts=3)
    assert wrapper._accumulative_counts == 3


def test_mmengine_module2package_table():
    # mmgc/mim.py: the table MMEngine looks 'scope::path' packages up in
    from mmengine.config.utils import MODULE2PACKAGE

    assert isinstance(MODULE2PACKAGE, dict) and MODULE2PACKAGE.get('mmdet') == 'mmdet'


def test_grad_scaler_fused_protocol():
    # mmgc/engine/optimizers/gc_step_hooks.py: GradScaler hands fused optimizers
    # grad_scale / found_inf instead of unscaling (read in GradScaler.step's source)
    from torch.cuda.amp import GradScaler

    source = inspect.getsource(GradScaler.step)
    if 'grad_scale' not in source:  # torch >= 2.3: torch.amp.GradScaler holds it
        from torch.amp import GradScaler as AmpGradScaler

        source = inspect.getsource(AmpGradScaler.step)
    for name in ('_step_supports_amp_scaling', 'grad_scale', 'found_inf'):
        assert name in source


def test_torch_optimizer_step_pre_hooks_dict():
    # mmgc/engine/optimizers/coverage.py: whether an optimizer has mmgc's step hooks
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    handle = optimizer.register_step_pre_hook(lambda *args: None)
    assert handle.id in optimizer._optimizer_step_pre_hooks
