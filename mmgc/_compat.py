"""Every private torch / MMEngine / MMCV / NumPy name that mmgc touches, in one place.

A private name can change in any release without notice. Each one here is
pinned by ``tests/test_compat.py``, which fails when upstream changes it, and
``tests/test_compat.py::test_no_private_name_outside_compat`` fails when one
is used anywhere else in ``mmgc/``, ``tools/`` or ``benchmarks/``. Imports of
optional parts (``torch.distributed``, MMEngine's strategies, MMCV's ops) are
made where a function asks for them, so ``import mmgc`` loads none of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    'CHECKPOINT_HOOK_SAVE',
    'NUMPY_MULTIARRAY_MODULES',
    'NUMPY_PICKLED',
    'accumulative_counts',
    'conv_base_types',
    'default_foreach',
    'foreach_add_',
    'foreach_mul',
    'foreach_mul_',
    'foreach_neg_',
    'fsdp1_flattened',
    'mmcv_ops_found',
    'mmengine_flattening_strategies',
    'numpy_multiarray',
    'register_mmengine_strategies',
    'skip_fused_sgd_device_check',
    'step_pre_hooks',
    'torch_dispatch_mode',
    'torch_rebuilders',
    'tree_flatten',
]

# -- torch.optim ------------------------------------------------------------------


def default_foreach(params: list[Tensor]) -> bool:
    """Whether torch's optimizers would pick their ``foreach`` kernels for
    ``params`` (``torch.optim.optimizer._default_to_fused_or_foreach``)."""
    from torch.optim.optimizer import _default_to_fused_or_foreach

    return _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)[1]


#: torch's multi-tensor ops (``torch._foreach_*``), as ``torch.optim`` uses them.
foreach_add: Callable[..., list[Tensor]] = torch._foreach_add
foreach_add_: Callable[..., None] = torch._foreach_add_
foreach_mul_: Callable[..., None] = torch._foreach_mul_
foreach_mul: Callable[..., list[Tensor]] = torch._foreach_mul
foreach_neg: Callable[..., list[Tensor]] = torch._foreach_neg
foreach_neg_: Callable[..., None] = torch._foreach_neg_


def step_pre_hooks(optimizer: torch.optim.Optimizer) -> Iterable[Callable]:
    """The step pre-hooks registered on ``optimizer`` itself
    (``Optimizer._optimizer_step_pre_hooks``; torch has no public getter)."""
    return getattr(optimizer, '_optimizer_step_pre_hooks', {}).values()


def skip_fused_sgd_device_check(device_type: str) -> None:
    """Let ``torch.optim.SGD(fused=True)`` take tensors on ``device_type``
    (meta, for counting ops): its device check,
    ``torch.optim.sgd._device_dtype_check_for_fused``, is skipped for them.
    For benchmarks only; a no-op where this torch has no such check."""
    sgd_module = importlib.import_module('torch.optim.sgd')
    check = getattr(sgd_module, '_device_dtype_check_for_fused', None)
    if check is None or getattr(check, 'skips', None) == device_type:
        return

    def device_check(p: Tensor, *args: Any, **kwargs: Any) -> None:
        if p.device.type != device_type:
            check(p, *args, **kwargs)

    device_check.skips = device_type  # type: ignore[attr-defined]
    sgd_module._device_dtype_check_for_fused = device_check


# -- torch.nn, torch.utils, torch.serialization -----------------------------------


def conv_base_types() -> tuple[type, type]:
    """torch's base classes of every convolution and of the transposed ones
    (``torch.nn.modules.conv._ConvNd``, ``_ConvTransposeNd``)."""
    from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

    return _ConvNd, _ConvTransposeNd


def torch_dispatch_mode() -> type:
    """``torch.utils._python_dispatch.TorchDispatchMode`` (sees every aten op)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


def tree_flatten(tree: Any) -> tuple[list[Any], Any]:
    """``torch.utils._pytree.tree_flatten``."""
    from torch.utils._pytree import tree_flatten as flatten

    return flatten(tree)


#: The tensor and parameter rebuilders a torch checkpoint's pickle names.
_REBUILDERS = (
    '_rebuild_tensor',
    '_rebuild_tensor_v2',
    '_rebuild_tensor_v3',
    '_rebuild_parameter',
    '_rebuild_parameter_with_state',
)


def torch_rebuilders() -> dict[str, Callable]:
    """``{'torch._utils.<name>': function}`` for the rebuilders this torch has."""
    return {
        f'torch._utils.{name}': getattr(torch._utils, name)
        for name in _REBUILDERS
        if hasattr(torch._utils, name)
    }


#: The names NumPy 2 and NumPy 1 pickle ``multiarray`` under, and what
#: an array's or a scalar's pickle calls from it.
NUMPY_MULTIARRAY_MODULES = ('numpy._core.multiarray', 'numpy.core.multiarray')
NUMPY_PICKLED = ('_reconstruct', 'scalar')


def numpy_multiarray() -> Any:
    """NumPy's ``multiarray`` module, whose ``_reconstruct`` / ``scalar``
    pickled arrays name (``numpy._core`` on NumPy 2, ``numpy.core`` on 1)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


# -- torch.distributed ----------------------------------------------------------


def fsdp1_flattened(tensor: Tensor) -> bool:
    """Whether torch FSDP1 flattened ``tensor`` (its FlatParameter, or an
    original parameter it made a 1-D view of; FSDP1 marks both with
    ``torch.distributed.fsdp._common_utils.FSDP_FLATTENED``)."""
    if not torch.distributed.is_available():
        return False
    try:
        from torch.distributed.fsdp import _common_utils
    except ImportError:
        return False
    return bool(getattr(tensor, _common_utils.FSDP_FLATTENED, False))


# -- MMEngine -------------------------------------------------------------------

#: MMEngine 0.10's ``CheckpointHook`` method that writes one checkpoint, which
#: :class:`~mmgc.runtime.atomic_checkpoint.AtomicCheckpointHook` overrides.
CHECKPOINT_HOOK_SAVE = '_save_checkpoint_with_step'


def accumulative_counts(optim_wrapper: Any) -> int:
    """How many iterations an MMEngine ``OptimWrapper`` accumulates gradients
    over before a step (``OptimWrapper._accumulative_counts``)."""
    return getattr(optim_wrapper, '_accumulative_counts', 1)


def register_mmengine_strategies() -> None:
    """Import ``mmengine._strategy``, which registers MMEngine's strategies."""
    importlib.import_module('mmengine._strategy')


def mmengine_flattening_strategies() -> dict[type, str]:
    """MMEngine's strategies that flatten parameters (``mmengine._strategy``'s
    ``DeepSpeedStrategy`` and ``FSDPStrategy``, where this MMEngine has them),
    with what each hands the optimizer."""
    try:
        module = importlib.import_module('mmengine._strategy')
    except ImportError:
        return {}
    what = {
        'DeepSpeedStrategy': 'DeepSpeed ZeRO, one flat 1-D partition per parameter group',
        'FSDPStrategy': 'torch FSDP1, flat 1-D parameters',
    }
    return {getattr(module, n): w for n, w in what.items() if hasattr(module, n)}


# -- MMCV -------------------------------------------------------------------------


def mmcv_ops_found() -> bool:
    """Whether MMCV's compiled ops (``mmcv._ext``) are installed (found, not
    imported; finding it imports ``mmcv``, which may raise)."""
    return importlib.util.find_spec('mmcv._ext') is not None


# -- MMEngine's default scopes (the mmgc registry scope, mmgc/registry.py) --------

__all__ += ['default_scope_names']


def default_scope_names() -> list[str]:
    """The scope names of MMEngine's ``DefaultScope`` instances, oldest first
    (``DefaultScope._instance_dict``, which ``ManagerMixin`` keeps in creation
    order): the ``Runner``'s (its config's ``default_scope``), then the scopes
    that enclosing builds switched to (``DefaultScope.overwrite_default_scope``).
    MMEngine has no public way to see the scope a build switched from."""
    from mmengine.registry import DefaultScope

    return [scope.scope_name for scope in list(DefaultScope._instance_dict.values())]


# -- torch.distributed ------------------------------------------------------------

__all__ += ['process_groups']


def process_groups() -> list[Any]:
    """Every process group torch knows in this process, the default one and the
    subgroups made from it (the keys of ``distributed_c10d._world.pg_map``, which
    ``destroy_process_group`` clears; torch has no public list). Empty where
    ``torch.distributed`` is not available."""
    import torch.distributed as dist

    if not dist.is_available():
        return []
    from torch.distributed import distributed_c10d

    return list(distributed_c10d._world.pg_map)


# -- Python's exit ----------------------------------------------------------------

__all__ += ['run_exit_handlers']


def run_exit_handlers() -> None:
    """Run the ``atexit`` handlers now, last registered first, each once, as the
    interpreter does at a normal exit (``atexit._run_exitfuncs``, which the C
    module exports without documenting it): ``logging.shutdown``, the
    ``weakref.finalize`` objects (temporary folders), ``multiprocessing``'s clean-up
    and a user's own. A process that then leaves with ``os._exit`` has run them."""
    import atexit

    atexit._run_exitfuncs()
