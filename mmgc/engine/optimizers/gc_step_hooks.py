r"""Gradient Centralization for any ``torch.optim`` optimizer, through step hooks.

:class:`~mmgc.SGDGC` applies GC inside its own step. Other optimizers get it
from step hooks (:func:`attach_gc_hooks`): just before ``optimizer.step()``
each parameter of a ``gc=True`` group has its ``.grad`` replaced by the
gradient the optimizer should see; just after, the original ``.grad`` (and
the group's decay) is put back. A step that never runs (AMP skipping
inf/NaN gradients) centralizes nothing. The decay meets the projection as
the optimizer applies it:

- **L2-coupled** (``SGD``, ``Adam``, ``Adamax``, ``Adagrad``, ``Adadelta``,
  ``RMSprop``, ``ASGD``, ``NAdam``, ``RAdam``): the hook hands over
  :math:`\mathbf{P}(\mathbf{g} \pm \lambda\mathbf{w})` (``-`` under
  ``maximize``, which the optimizer negates), the paper's
  :math:`\mathbf{P}(\mathbf{g} + \lambda\mathbf{w})`, and sets the group's
  ``weight_decay`` to 0 for that step.
- **Decoupled** (``AdamW``; ``Adam``/``NAdam``/``RAdam`` with
  ``decoupled_weight_decay=True``) and **none** (``Rprop``):
  :math:`\mathbf{P}\mathbf{g}`; decoupled decay stays outside the projection,
  as the paper's Table 2 treats AdamW/SGDW.

``LBFGS`` (re-evaluates gradients inside its step) and ``SparseAdam`` (sparse
gradients only) cannot be centralized this way and are refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from ...ops import centralize_
from .sgd_gc import GC_GROUP_DEFAULTS, SGDGC

__all__ = ['attach_gc_hooks', 'supports_gc', 'uses_gc_hooks']

#: Optimizers whose decay is a gradient term (AdamW subclasses Adam: its groups say decoupled).
COUPLED_DECAY: tuple[type[Optimizer], ...] = tuple(
    getattr(torch.optim, name)
    for name in 'SGD Adam Adamax Adagrad Adadelta RMSprop ASGD NAdam RAdam'.split()
)
DECOUPLED_DECAY: tuple[type[Optimizer], ...] = (torch.optim.AdamW,)
NO_DECAY: tuple[type[Optimizer], ...] = (torch.optim.Rprop,)


def supports_gc(optimizer_cls: type) -> bool:
    """True if ``optimizer_cls`` applies GC natively or through the hooks."""
    return isinstance(optimizer_cls, type) and issubclass(
        optimizer_cls, (SGDGC, *COUPLED_DECAY, *DECOUPLED_DECAY, *NO_DECAY)
    )


def uses_gc_hooks(optimizer: Optimizer) -> bool:
    """True if ``optimizer`` needs :func:`attach_gc_hooks` (it is not SGDGC)."""
    return not isinstance(optimizer, SGDGC) and supports_gc(type(optimizer))


def _decay_is_coupled(optimizer: Optimizer, group: dict[str, Any]) -> bool:
    if isinstance(optimizer, (*DECOUPLED_DECAY, *NO_DECAY)):
        return False
    return not group.get('decoupled_weight_decay', False)


class _GCStepHooks:
    """The pre/post step hooks and what the pre hook replaced."""

    def __init__(self) -> None:
        self._grads: list[tuple[Tensor, Tensor]] = []
        self._decays: list[tuple[dict[str, Any], Any]] = []

    def before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.after_step(optimizer, args, kwargs)  # a failed step left state
        for group in optimizer.param_groups:
            if not group.get('gc', GC_GROUP_DEFAULTS['gc']):
                continue
            gc_dim = group.get('gc_dim', GC_GROUP_DEFAULTS['gc_dim'])
            decay = group.get('weight_decay', 0.0)
            coupled = _decay_is_coupled(optimizer, group) and (
                isinstance(decay, Tensor) or decay != 0
            )
            sign = -1.0 if group.get('maximize', False) else 1.0
            for p in group['params']:
                grad = p.grad
                if grad is None or (p.ndim <= 1 and not coupled):
                    continue
                if grad.is_sparse:
                    raise RuntimeError(
                        f'gradient centralization cannot centralize a sparse '
                        f'gradient (parameter of shape {tuple(p.shape)}); set '
                        f'gc=False for its parameter group'
                    )
                seen = torch.add(grad, p.detach() * (sign * decay)) if coupled else grad.clone()
                p.grad = centralize_(seen, gc_dim)
                self._grads.append((p, grad))
            if coupled:
                self._decays.append((group, decay))
                group['weight_decay'] = 0.0

    def after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for p, grad in self._grads:
            p.grad = grad
        for group, decay in self._decays:
            group['weight_decay'] = decay
        self._grads, self._decays = [], []


def attach_gc_hooks(optimizer: Optimizer) -> tuple[RemovableHandle, RemovableHandle]:
    """Make ``optimizer`` see centralized gradients for its ``gc=True`` groups.

    Args:
        optimizer (Optimizer): A ``torch.optim`` optimizer other than SGDGC
            (see :func:`supports_gc`); its groups may carry ``gc``/``gc_dim``.

    Returns:
        tuple[RemovableHandle, RemovableHandle]: The pre and post hook
        handles; ``handle.remove()`` detaches them.

    Raises:
        ValueError: For SGDGC (it centralizes by itself) or an optimizer
            that cannot be centralized through its step.
    """
    if isinstance(optimizer, SGDGC):
        raise ValueError('SGDGC centralizes in its own step; it needs no GC hooks')
    if not supports_gc(type(optimizer)):
        raise ValueError(
            f'cannot apply gradient centralization to {type(optimizer).__name__}; '
            f'supported: SGDGC and torch.optim '
            f'{sorted(c.__name__ for c in COUPLED_DECAY + DECOUPLED_DECAY + NO_DECAY)}'
        )
    hooks = _GCStepHooks()
    return (
        optimizer.register_step_pre_hook(hooks.before_step),
        optimizer.register_step_post_hook(hooks.after_step),
    )
