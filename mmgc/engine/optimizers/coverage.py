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

This module counts what an optimizer centralizes (:func:`gc_coverage`),
refuses the strategies that flatten before anything is built
(:func:`check_gc_strategy`), and checks at the first step that the tensors
to centralize are still there (:func:`install_gc_coverage_check`): DeepSpeed
flattens the optimizer's groups after the optimizer is built.
"""

from __future__ import annotations

import importlib
import logging
import sys
import weakref
from typing import Any, NamedTuple

import torch
from mmengine.logging import print_log
from mmengine.registry import OPTIMIZERS
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from ...errors import ConfigError
from .variants import gc_variant_of

# ``sgd_gc`` and ``gc_step_hooks`` are imported where they are used: they call
# :func:`install_gc_coverage_check`, so this module must import without them.

__all__ = [
    'GCCoverage',
    'GCCoverageError',
    'check_gc_runner_strategy',
    'check_gc_strategy',
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
    from .sgd_gc import GC_GROUP_DEFAULTS

    return GC_GROUP_DEFAULTS['gc']


def _centralizes(optimizer: Any) -> bool:
    """Whether ``optimizer`` applies GC in its step (SGDGC, mmgc's step hooks)."""
    from .gc_step_hooks import _GCStepHooks
    from .sgd_gc import SGDGC

    if isinstance(optimizer, SGDGC):
        return True
    hooks = getattr(optimizer, '_optimizer_step_pre_hooks', {})
    return any(isinstance(getattr(h, '__self__', None), _GCStepHooks) for h in hooks.values())


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
    if _centralizes(optimizer) or _centralizes(gc_local_optimizer(optimizer)):
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


def _fsdp1_flattened(tensor: Tensor) -> bool:
    """Whether torch FSDP1 flattened ``tensor`` (its FlatParameter, or an original
    parameter it made a 1-D view of; FSDP1 marks both)."""
    if not torch.distributed.is_available():
        return False
    try:
        from torch.distributed.fsdp import _common_utils
    except ImportError:
        return False
    return bool(getattr(tensor, getattr(_common_utils, 'FSDP_FLATTENED', '_fsdp_flattened'), False))


def _what_it_holds(optimizer: Optimizer) -> str:
    """The likely strategy, from the tensors the optimizer holds at its first step."""
    held = [list(group['params']) for group in optimizer.param_groups]
    if any(_fsdp1_flattened(p) for group in held for p in group):
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
        _fsdp1_flattened(p)
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
        if now.tensors and not (_centralizes(optimizer) or _centralizes(local)):
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


def _fsdp1_class() -> type | None:
    """torch's ``FullyShardedDataParallel`` (FSDP1), if present."""
    return _distributed_class('fsdp', 'FullyShardedDataParallel')


def _deepspeed_engine_class() -> type | None:
    """DeepSpeed's engine class, if DeepSpeed is already imported (never imports it)."""
    engine = sys.modules.get('deepspeed.runtime.engine')
    return getattr(engine, 'DeepSpeedEngine', None)


def _optimizer_class(optimizer_type: Any) -> type | None:
    if isinstance(optimizer_type, type):
        return optimizer_type
    if not isinstance(optimizer_type, str):
        return None
    with OPTIMIZERS.switch_scope_and_registry(None) as registry:
        return registry.get(optimizer_type)


def _check_zero(zero: type, optimizer_cfg: dict) -> type:
    """The local optimizer class of a ZeRO config; refuse one that cannot apply GC."""
    from .gc_step_hooks import supports_gc
    from .sgd_gc import SGDGC

    name = zero.__name__
    if optimizer_cfg.get('overlap_with_ddp', False):
        raise ConfigError(
            f'{name} with overlap_with_ddp=True steps a functional optimizer inside '
            f"DDP's communication hook, where gradient centralization cannot act; set "
            f'overlap_with_ddp=False (the default)'
        )
    if 'optimizer_type' in optimizer_cfg:  # MMEngine's: getattr(torch.optim, optimizer_type)
        local_type = optimizer_cfg['optimizer_type']
        local = getattr(torch.optim, local_type, None) if isinstance(local_type, str) else None
        registered = _optimizer_class(local_type) if isinstance(local_type, str) else None
        if local is None and isinstance(registered, type) and issubclass(registered, SGDGC):
            raise ConfigError(
                f"MMEngine's {name} looks optimizer_type up in torch.optim, so "
                f"optimizer_type={local_type!r} cannot work; use optimizer_type='SGD', "
                f"which gets gradient centralization through mmgc's step hooks, or "
                f'SGDGC under plain DDP'
            )
        where = 'torch.optim'
    else:  # torch's: optimizer_class
        local = optimizer_cfg.get('optimizer_class')
        local_type, where = local, 'optimizer_class'
    if not supports_gc(local):
        valid = sorted(
            n for n in dir(torch.optim) if supports_gc(getattr(torch.optim, n)) and n[0].isupper()
        )
        raise ConfigError(
            f'{name} needs a local optimizer that can apply gradient centralization; '
            f'got {local_type!r} ({where}), valid: {valid}'
            + (' or SGDGC (as optimizer_class)' if where == 'optimizer_class' else '')
        )
    return local


def check_gc_strategy(model: nn.Module | None, optimizer_cfg: dict | None = None) -> type | None:
    """Refuse, before anything is built, a strategy under which GC cannot work.

    Refused: a model wrapped in torch FSDP1 (``FullyShardedDataParallel``
    anywhere in it, MMEngine's ``MMFullyShardedDataParallel`` /
    ``FSDPStrategy`` included: it hands the optimizer flat 1-D parameters)
    or in DeepSpeed's engine (one flat partition per group); a
    ``ZeroRedundancyOptimizer`` config whose local optimizer cannot apply GC
    (MMEngine's with ``optimizer_type='SGDGC'``, which it cannot find in
    ``torch.optim``; a type mmgc does not support; ``overlap_with_ddp=True``).
    DeepSpeed usually wraps the model after the optimizer is built; the
    first-step check (:func:`install_gc_coverage_check`) catches that.

    Args:
        model (nn.Module, optional): The model as the runner hands it over,
            wrapped (before any ``.module`` is taken); None: the config only.
        optimizer_cfg (dict, optional): The optimizer config (``type`` and
            its arguments). Defaults to None (check the model only).

    Returns:
        type | None: For a ``ZeroRedundancyOptimizer`` config, the class of
        its local optimizer (the one to give mmgc's step hooks, unless it is
        SGDGC); else None.

    Raises:
        ValueError: In one sentence naming the strategy and what works instead.
    """
    fsdp1, engine = _fsdp1_class(), _deepspeed_engine_class()
    modules = model.named_modules() if model is not None else ()
    for name, module in modules:
        if fsdp1 is not None and isinstance(module, fsdp1):
            raise ConfigError(
                f'gradient centralization cannot run under torch FSDP1 '
                f'({type(module).__name__} at {name or "the top"} of the model; '
                f"MMEngine's FSDPStrategy uses it): it hands the optimizer flat 1-D "
                f'parameters, in which no output unit can be found; {WHAT_WORKS}'
            )
        if engine is not None and isinstance(module, engine):
            raise ConfigError(
                f'gradient centralization cannot run under DeepSpeed ({type(module).__name__}): '
                f'ZeRO hands the optimizer one flat 1-D partition per parameter group, in '
                f'which no output unit can be found; {WHAT_WORKS}'
            )
    if not optimizer_cfg:
        return None
    zero, cls = _zero_class(), _optimizer_class(optimizer_cfg.get('type'))
    if zero is not None and isinstance(cls, type) and issubclass(cls, zero):
        return _check_zero(cls, optimizer_cfg)
    return None


def _flattening_strategies() -> dict[type, str]:
    """MMEngine's strategies that flatten parameters, with what they use."""
    strategies: dict[type, str] = {}
    try:
        from mmengine._strategy import DeepSpeedStrategy

        strategies[DeepSpeedStrategy] = 'DeepSpeed ZeRO, one flat 1-D partition per parameter group'
    except ImportError:
        pass
    try:
        from mmengine._strategy import FSDPStrategy

        strategies[FSDPStrategy] = 'torch FSDP1, flat 1-D parameters'
    except ImportError:
        pass
    return strategies


def check_gc_runner_strategy(strategy: Any) -> None:
    """Refuse, before a ``FlexibleRunner`` builds anything, a ``strategy`` that
    flattens parameters (MMEngine's ``DeepSpeedStrategy``, ``FSDPStrategy``).

    Args:
        strategy (dict | str | type | None): The config's ``strategy``
            (``dict(type=...)``, a registered name or a class); None for
            ``Runner``'s own DDP.

    Raises:
        ValueError: In one sentence naming the strategy and what works instead.
    """
    import mmengine._strategy  # noqa: F401 (registers MMEngine's strategies)
    from mmengine.registry import STRATEGIES

    strategy_type = strategy.get('type') if isinstance(strategy, dict) else strategy
    cls = strategy_type
    if isinstance(strategy_type, str):
        with STRATEGIES.switch_scope_and_registry(None) as registry:
            cls = registry.get(strategy_type)
    if not isinstance(cls, type):
        return
    for flattening, what in _flattening_strategies().items():
        if issubclass(cls, flattening):
            raise ConfigError(
                f'gradient centralization cannot run under strategy {strategy_type!r} '
                f'({what}, in which no output unit can be found); {WHAT_WORKS} '
                f"(strategy='DDPStrategy', or Runner's default)"
            )
