"""Which optimizers take Gradient Centralization, and with which variants.

The one answer is :func:`gc_variants_of`; :func:`supports_gc` and
:func:`applies_gc` are read from it and from what an optimizer holds. This
module sits below every other GC module (it imports none of them), so
:class:`~mmgc.SGDGC`, the step hooks, the coverage check, the strategy
refusals and the constructor all ask it the same question.

- An optimizer whose own step applies GC subclasses :class:`GCInStep`
  (:class:`~mmgc.SGDGC`, :class:`~mmgc.SGDWGC`): the group variants of
  :data:`~mmgc.engine.optimizers.variants.GC_VARIANTS` (for SGD ``'grad'``
  and ``'update'`` are the same update, since :math:`\\mathbf{P}` is linear),
  and ``'sgdw'`` where it has a ``decoupled_weight_decay`` option.
- The ``torch.optim`` optimizers below take GC through mmgc's step hooks
  (:mod:`~mmgc.engine.optimizers.gc_step_hooks`): ``'grad'`` always,
  ``'update'`` except where the state follows the weights after the step
  (``ASGD``'s average).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.optim import Optimizer

from ..._compat import step_pre_hooks
from .sgdw import SGDW
from .variants import GC_VARIANTS

__all__ = [
    'COUPLED_DECAY',
    'DECOUPLED_DECAY',
    'GC_GROUP_DEFAULTS',
    'GCInStep',
    'GCStepHooksMarker',
    'NO_DECAY',
    'NO_UPDATE_VARIANT',
    'UPDATE_ONLY',
    'applies_gc',
    'gc_variants_of',
    'supports_gc',
    'why_not_variant',
]

#: Per-parameter-group options that GC adds to an optimizer's (see :class:`~mmgc.SGDGC`).
GC_GROUP_DEFAULTS: dict[str, Any] = {'gc': True, 'gc_dim': 0}

#: Optimizers whose decay is a gradient term (AdamW subclasses Adam: its groups say decoupled).
COUPLED_DECAY: tuple[type[Optimizer], ...] = tuple(
    getattr(torch.optim, name)
    for name in 'SGD Adam Adamax Adagrad Adadelta RMSprop ASGD NAdam RAdam'.split()
)
DECOUPLED_DECAY: tuple[type[Optimizer], ...] = (torch.optim.AdamW,)
NO_DECAY: tuple[type[Optimizer], ...] = (torch.optim.Rprop,)
#: Optimizers whose state depends on the weights after the step (ASGD's
#: average ``ax``): their update cannot be centralized after the step.
NO_UPDATE_VARIANT: tuple[type[Optimizer], ...] = (torch.optim.ASGD,)
_HOOKED = (*COUPLED_DECAY, *DECOUPLED_DECAY, *NO_DECAY)


#: Optimizers of other codebases that take GC on the update only, named by module
#: and class (never imported here): MMPretrain's LARS and LAMB scale each tensor's
#: step by a trust ratio of its weight and gradient norms, which a centralized
#: gradient would change as well, so their update is centralized after the step.
UPDATE_ONLY: frozenset[str] = frozenset(
    {'mmpretrain.engine.optimizers.lars.LARS', 'mmpretrain.engine.optimizers.lamb.Lamb'}
)


def _update_only(optimizer_cls: type) -> bool:
    return any(f'{c.__module__}.{c.__qualname__}' in UPDATE_ONLY for c in optimizer_cls.__mro__)


class GCInStep:
    """Marks an optimizer class whose own step applies GC (:class:`~mmgc.SGDGC`)."""


class GCStepHooksMarker:
    """Marks the object whose bound methods are mmgc's GC step hooks."""


def gc_variants_of(optimizer_cls: Any) -> tuple[str, ...]:
    """The GC variants ``optimizer_cls`` takes; ``()``: it cannot take GC.

    Group variants come from :data:`~mmgc.engine.optimizers.variants.GC_VARIANTS`;
    ``'sgdw'`` (decoupled decay, the authors' SGDW_GC) is for an optimizer
    whose own step applies GC and has a ``decoupled_weight_decay`` option.
    :class:`~mmgc.SGDW` takes none: its GC is :class:`~mmgc.SGDWGC` (what
    ``enable_gc`` makes of it). MMPretrain's LARS and Lamb take ``'update'``
    only (:data:`UPDATE_ONLY`).

    Args:
        optimizer_cls: An optimizer class (anything else takes nothing).

    Returns:
        tuple[str, ...]: A subset of ``('grad', 'update', 'sgdw')``, in that order.
    """
    if not isinstance(optimizer_cls, type) or issubclass(optimizer_cls, SGDW):
        return ()  # SGDW decays outside torch's step, where no hook sees it: SGDWGC is its GC
    if issubclass(optimizer_cls, GCInStep):
        params = inspect.signature(optimizer_cls).parameters
        return GC_VARIANTS + (('sgdw',) if 'decoupled_weight_decay' in params else ())
    if _update_only(optimizer_cls):
        return ('update',)
    if not issubclass(optimizer_cls, _HOOKED):
        return ()
    if issubclass(optimizer_cls, NO_UPDATE_VARIANT):
        return tuple(v for v in GC_VARIANTS if v != 'update')
    return GC_VARIANTS


def why_not_variant(optimizer_cls: Any, variant: str) -> str:
    """Why ``optimizer_cls`` does not take GC ``variant`` (a phrase; ``''`` if it does)."""
    if variant in gc_variants_of(optimizer_cls):
        return ''
    if not supports_gc(optimizer_cls):
        return 'it cannot take gradient centralization'
    if variant == 'sgdw':
        return "'sgdw' is SGD with decoupled decay, SGDWGC"
    if variant == 'grad' and _update_only(optimizer_cls):
        return 'its trust ratio reads the raw gradient'
    if variant == 'update' and issubclass(optimizer_cls, NO_UPDATE_VARIANT):
        return 'its averaged weights follow the uncentralized step'
    return f'mmgc has no {variant!r} rule for it'


def supports_gc(optimizer_cls: Any) -> bool:
    """True if ``optimizer_cls`` applies GC natively or through the hooks."""
    return bool(gc_variants_of(optimizer_cls))


def applies_gc(optimizer: Any) -> bool:
    """Whether ``optimizer``'s step applies GC now: its class does
    (:class:`GCInStep`) or mmgc's step hooks are on it."""
    if isinstance(optimizer, GCInStep):
        return True
    hooks = step_pre_hooks(optimizer) if isinstance(optimizer, Optimizer) else ()
    return any(isinstance(getattr(h, '__self__', None), GCStepHooksMarker) for h in hooks)
