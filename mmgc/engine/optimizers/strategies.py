"""Strategies under which Gradient Centralization cannot work, refused before
anything is built.

GC needs each weight whole, in its own shape (see
:mod:`~mmgc.engine.optimizers.coverage` for what each strategy hands the
optimizer). Refused here, above the optimizers: a model in torch FSDP1 or
DeepSpeed's engine, a ``ZeroRedundancyOptimizer`` config whose local optimizer
cannot apply GC (:func:`check_gc_strategy`), and MMEngine's flattening
``FlexibleRunner`` strategies (:func:`check_gc_runner_strategy`). What slips
past (DeepSpeed wrapping after the optimizer is built) is caught at the first
step by :func:`~mmgc.engine.optimizers.coverage.install_gc_coverage_check`.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from mmengine.registry import OPTIMIZERS
from torch import nn

from ..._compat import mmengine_flattening_strategies, register_mmengine_strategies
from ...errors import ConfigError
from .capability import GCInStep, supports_gc
from .coverage import WHAT_WORKS, _distributed_class, _zero_class

__all__ = ['check_gc_runner_strategy', 'check_gc_strategy']


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
        if local is None and isinstance(registered, type) and issubclass(registered, GCInStep):
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
    from mmengine.registry import STRATEGIES

    register_mmengine_strategies()

    strategy_type = strategy.get('type') if isinstance(strategy, dict) else strategy
    cls = strategy_type
    if isinstance(strategy_type, str):
        with STRATEGIES.switch_scope_and_registry(None) as registry:
            cls = registry.get(strategy_type)
    if not isinstance(cls, type):
        return
    for flattening, what in mmengine_flattening_strategies().items():
        if issubclass(cls, flattening):
            raise ConfigError(
                f'gradient centralization cannot run under strategy {strategy_type!r} '
                f'({what}, in which no output unit can be found); {WHAT_WORKS} '
                f"(strategy='DDPStrategy', or Runner's default)"
            )
