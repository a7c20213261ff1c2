r"""Which tensors Gradient Centralization reaches under a training strategy.

GC centralizes a weight per output unit, so it needs each weight whole, in
its own shape, with ``ndim > 1``. Strategies that MMEngine offers hand the
optimizer different tensors:

- **DDP** (``MMDistributedDataParallel``): whole tensors, gradients averaged
  before the step. GC works as in one process.
- **ZeRO** through ``ZeroRedundancyOptimizer`` (torch's, or MMEngine's, which
  looks its local optimizer up with ``getattr(torch.optim, optimizer_type)``):
  each rank's local optimizer updates whole tensors. GC works with
  torch's ``optimizer_class=SGDGC``, or with a torch ``optimizer_type`` and
  mmgc's step hooks on the local optimizer (:func:`gc_local_optimizer`).
- **torch FSDP2** (``fully_shard``): DTensors sharded along dim 0; DTensor's
  reductions span the whole output unit, also where a ``ConvTranspose``'s
  output units (dim 1) are split across ranks.
- **torch FSDP1** (``FullyShardedDataParallel``, MMEngine's ``FSDPStrategy``)
  and **DeepSpeed ZeRO-1/2** (``DeepSpeedStrategy``): flat 1-D tensors, in
  which no output unit can be found. GC cannot work there.

This module counts what an optimizer centralizes (:func:`gc_coverage`) and
checks at the first step that the tensors to centralize are still there
(:func:`install_gc_coverage_check`): DeepSpeed flattens the optimizer's groups
after the optimizer is built. The strategies that flatten are refused before
anything is built, above the optimizers, in
:mod:`~mmgc.engine.optimizers.strategies`.
"""

from __future__ import annotations

import importlib
import logging
import weakref
from typing import Any, NamedTuple

import torch
from mmengine.logging import print_log
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from ..._compat import fsdp1_flattened
from .capability import GC_GROUP_DEFAULTS, applies_gc
from .variants import gc_variant_of

__all__ = [
    'GCCoverage',
    'GCCoverageError',
    'gc_coverage',
    'gc_local_optimizer',
    'install_gc_coverage_check',
    'require_gc_coverage',
]

#: What works instead of a strategy that flattens parameters.
WHAT_WORKS = (
    'GC runs under DDP (MMDistributedDataParallel), under ZeRO-1 through a '
    "ZeroRedundancyOptimizer (torch's with optimizer_class=SGDGC, or MMEngine's "
    "with a torch optimizer_type such as 'SGD' and mmgc's step hooks) and under "
    'torch FSDP2 (fully_shard)'
)


class GCCoverageError(RuntimeError):
    """A run configured for Gradient Centralization would centralize nothing
    (a user's setting: a strategy that flattens the parameters)."""


class GCCoverage(NamedTuple):
    """What an optimizer centralizes, counted as it holds its tensors now.

    ``params`` counts elements (a DTensor's global ones); ``by_variant`` maps
    each ``gc_variant`` (``'grad'``, ``'update'``) to ``(tensors, params)``.
    """

    tensors: int = 0
    params: int = 0
    total_tensors: int = 0
    total_params: int = 0
    by_variant: dict[str, tuple[int, int]] = {}

    def describe(self) -> str:
        """``'3 of 6 tensors (1,234 of 1,250 params; grad 3 / 1,234)'``."""
        detail = '; '.join(f'{v} {n} / {size:,}' for v, (n, size) in self.by_variant.items())
        return (
            f'{self.tensors} of {self.total_tensors} tensors ({self.params:,} of '
            f'{self.total_params:,} params{"; " + detail if detail else ""})'
        )


def _distributed_class(module: str, name: str) -> type | None:
    """``torch.distributed.<module>.<name>``, if this torch has it."""
    if not torch.distributed.is_available():
        return None
    try:
        return getattr(importlib.import_module(f'torch.distributed.{module}'), name)
    except (ImportError, AttributeError):
        return None


def _zero_class() -> type | None:
    """torch's ``ZeroRedundancyOptimizer`` (MMEngine's subclasses it), if present."""
    return _distributed_class('optim', 'ZeroRedundancyOptimizer')


def gc_local_optimizer(optimizer: Optimizer) -> Optimizer:
    """The optimizer that updates the tensors: a ``ZeroRedundancyOptimizer``'s
    local optimizer (``.optim``, this rank's whole tensors), else ``optimizer``.

    mmgc's step hooks belong on it: it has the real optimizer type (AdamW's
    decay is decoupled, a ZeRO wrapper's type says nothing about that), and
    ZeRO copies its group settings back to its own groups after each step,
    after the hooks have restored them.
    """
    zero = _zero_class()
    if zero is not None and isinstance(optimizer, zero):
        return optimizer.optim
    return optimizer


#: Optimizers that got a first-step check, and its handle.
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: Local optimizers of a ZeRO wrapper with a check: the wrapper logs for all ranks.
_QUIET: weakref.WeakSet = weakref.WeakSet()


def _gc_default() -> bool:
    return GC_GROUP_DEFAULTS['gc']


def _count(optimizer: Optimizer) -> GCCoverage:
    """Tensors in ``gc=True`` groups with ``ndim > 1``, as they are held now."""
    tensors = params = total_tensors = total_params = 0
    by_variant: dict[str, tuple[int, int]] = {}
    default = _gc_default()
    for group in optimizer.param_groups:
        gc = group.get('gc', default)
        for p in group['params']:
            total_tensors += 1
            total_params += p.numel()
            if gc and p.ndim > 1:
                tensors += 1
                params += p.numel()
                n, size = by_variant.get(gc_variant_of(group), (0, 0))
                by_variant[gc_variant_of(group)] = (n + 1, size + p.numel())
    return GCCoverage(tensors, params, total_tensors, total_params, by_variant)


def _gc_groups_hold_tensors(optimizer: Optimizer) -> bool:
    """Whether any ``gc=True`` group holds tensors (a user who switched GC off in
    every group after building the optimizer has none: nothing was flattened)."""
    default = _gc_default()
    return any(g.get('gc', default) and len(g['params']) for g in optimizer.param_groups)


def gc_coverage(optimizer: Optimizer) -> GCCoverage:
    """How many tensors and parameters ``optimizer``'s step centralizes.

    Counts the tensors of groups with ``gc=True`` (the default) and
    ``ndim > 1``, as the optimizer holds them now, if its step applies GC:
    :class:`~mmgc.SGDGC`, an optimizer with mmgc's step hooks, or a
    ``ZeroRedundancyOptimizer`` whose local optimizer is one of those (then
    over all ranks' tensors, the wrapper's groups).
    Any other optimizer centralizes nothing: its coverage is zero tensors.

    Args:
        optimizer (Optimizer): A built optimizer.

    Returns:
        GCCoverage: Centralized tensors and elements, of how many held, by
        ``gc_variant``.
    """
    held = _count(optimizer)
    if applies_gc(optimizer) or applies_gc(gc_local_optimizer(optimizer)):
        return held
    return held._replace(tensors=0, params=0, by_variant={})


def require_gc_coverage(optimizer: Optimizer, selected: int, who: str) -> GCCoverage:
    """Refuse a built optimizer that centralizes none of the ``selected`` weights.

    For a constructor that chose ``selected`` weights for GC by module type:
    if the optimizer it built centralizes none of them (a wrapper whose
    local optimizer got no step hooks, an inner constructor that dropped the
    groups' ``gc`` options), the run must not start.

    Args:
        optimizer (Optimizer): The built optimizer.
        selected (int): How many weights were chosen for GC.
        who (str): The caller's name, for the message.

    Returns:
        GCCoverage: The optimizer's :func:`gc_coverage`.

    Raises:
        GCCoverageError: If ``selected > 0`` and the optimizer centralizes nothing.
    """
    coverage = gc_coverage(optimizer)
    if selected > 0 and coverage.tensors == 0:
        raise GCCoverageError(
            f'{who} chose {selected} weights for gradient centralization, but the '
            f'{type(optimizer).__name__} it built centralizes none of them (its step '
            f'applies no GC, or its groups hold no tensor with ndim > 1); use SGDGC, or '
            f"a torch optimizer that gets mmgc's step hooks: "
            f'mmgc.engine.optimizers.attach_gc_hooks(gc_local_optimizer(optimizer))'
        )
    return coverage


def _what_it_holds(optimizer: Optimizer) -> str:
    """The likely strategy, from the tensors the optimizer holds at its first step."""
    held = [list(group['params']) for group in optimizer.param_groups]
    if any(fsdp1_flattened(p) for group in held for p in group):
        return (
            "torch FSDP1's flattened parameters (FullyShardedDataParallel, MMEngine's FSDPStrategy)"
        )
    groups = [group for group in held if group]
    if groups and all(len(group) == 1 and group[0].ndim == 1 for group in groups):
        return (
            f'one flat 1-D tensor per parameter group ({len(groups)} groups), as DeepSpeed '
            "ZeRO-1/2 (MMEngine's DeepSpeedStrategy) gives an optimizer"
        )
    return (
        'only tensors with ndim <= 1 in its GC groups, as strategies that flatten '
        "parameters give them (DeepSpeed ZeRO, torch FSDP1 / MMEngine's FSDPStrategy)"
    )


def _holds_fsdp1(optimizer: Optimizer) -> bool:
    """Whether a ``gc=True`` group holds a tensor that torch FSDP1 flattened."""
    default = _gc_default()
    return any(
        fsdp1_flattened(p)
        for group in optimizer.param_groups
        if group.get('gc', default)
        for p in group['params']
    )


class _FirstStepCheck:
    """A step pre-hook: at the first step, log the coverage once, and raise if
    the tensors counted at install time are no longer there."""

    def __init__(self, installed: GCCoverage) -> None:
        self.installed = installed
        self.done = False

    def __call__(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self.done:
            return
        now = _count(optimizer)
        name = type(optimizer).__name__
        local = gc_local_optimizer(optimizer)
        if now.tensors and not (applies_gc(optimizer) or applies_gc(local)):
            raise GCCoverageError(
                f'{name} holds {now.tensors} weights to centralize, but its step applies no '
                f'gradient centralization (its local optimizer {type(local).__name__} is '
                f"neither SGDGC nor given mmgc's step hooks); use optimizer_class=SGDGC, or "
                f'attach_gc_hooks(gc_local_optimizer(optimizer))'
            )
        flattened = self.installed.tensors > 0 and _gc_groups_hold_tensors(optimizer)
        if now.tensors == 0 and (flattened or _holds_fsdp1(optimizer)):
            built = (
                f'was built with {self.installed.tensors} weights to centralize '
                f'({self.installed.params:,} params), but at its first step it holds'
                if self.installed.tensors
                else 'holds'
            )
            raise GCCoverageError(
                f'{name} {built} {_what_it_holds(optimizer)}, in which no output unit can '
                f'be centralized, so gradient centralization would do nothing; {WHAT_WORKS}'
            )
        self.done = True
        if optimizer in _QUIET:
            return
        level = logging.INFO
        if now.tensors < self.installed.tensors:
            level = logging.WARNING
        print_log(
            f'mmgc: gradient centralization on {now.describe()} that {name} holds at its '
            f'first step'
            + (' (all ranks; each updates its share)' if local is not optimizer else '')
            + (
                f' (it was built with {self.installed.tensors} to centralize)'
                if level == logging.WARNING
                else ''
            ),
            logger='current',
            level=level,
        )


def install_gc_coverage_check(optimizer: Optimizer) -> RemovableHandle:
    """Check once, at ``optimizer``'s first step, what GC will centralize.

    Counts the tensors to centralize now (:func:`gc_coverage`'s rule) and
    registers a step pre-hook that, at the first step, logs how many tensors
    and parameters get GC, and raises if none is left to centralize although
    there were some at install time (DeepSpeed ZeRO-1/2 replaced each group's
    tensors by one flat 1-D partition after the optimizer was built) or a
    GC group holds tensors that torch FSDP1 flattened, or if its step
    applies no GC at all. Installing twice on one optimizer installs once;
    installing never raises. On a ``ZeroRedundancyOptimizer`` the check
    counts all ranks' tensors, and its local optimizer's own check (from
    SGDGC or the hooks) stops logging.

    Call it wherever an optimizer is given GC: ``SGDGC.__init__``,
    ``attach_gc_hooks`` and the GC constructor.

    Args:
        optimizer (Optimizer): An optimizer whose step applies GC.

    Returns:
        RemovableHandle: The pre-hook's handle (the same one on a second call).
    """
    local = gc_local_optimizer(optimizer)
    if local is not optimizer:
        _QUIET.add(local)
    handle = _CHECKED.get(optimizer)
    if handle is None:
        handle = optimizer.register_step_pre_hook(_FirstStepCheck(_count(optimizer)))
        _CHECKED[optimizer] = handle
    return handle
