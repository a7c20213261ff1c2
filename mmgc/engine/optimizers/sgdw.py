r"""SGDW: SGD with decoupled weight decay and no GC, the baseline twin of
:class:`~mmgc.SGDWGC` (the paper's Table 2 compares the two; torch has no SGD
with decoupled decay)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from mmengine.registry import OPTIMIZERS

from ...errors import ConfigError

__all__ = ['SGDW']


@OPTIMIZERS.register_module(name='SGDW')
class SGDW(torch.optim.SGD):
    r"""``torch.optim.SGD`` with decoupled weight decay (SGDW, Loshchilov and
    Hutter). Each step first shrinks every weight that has a gradient,

    .. math:: \theta \leftarrow (1 - \gamma\lambda)\,\theta,

    then takes torch's SGD step with no decay in the gradient (its momentum,
    dampening, Nesterov and ``maximize``, on its foreach or for-loop path).
    That is :class:`~mmgc.SGDWGC`'s update without :math:`\mathbf{P}`, so a
    config with SGDWGC and its twin with SGDW differ only in GC. A group's
    ``weight_decay`` is :math:`\lambda`: MMEngine's decay multipliers scale it
    per group, as for SGD.

    Args:
        params (iterable): Parameters or parameter-group dicts.
        lr, momentum, dampening, nesterov, maximize, foreach, differentiable:
            As ``torch.optim.SGD``'s.
        weight_decay (float): Decoupled decay :math:`\lambda`. Defaults to 0.
        fused (bool, optional): Refused if True: the decay is applied outside
            torch's step, which a fused step under ``GradScaler`` would take
            even for a skipped (inf) step.

    Raises:
        ConfigError: If ``fused`` is True.

    Example:
        >>> conv = torch.nn.Conv2d(3, 8, 3)
        >>> optimizer = SGDW(conv.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        differentiable: bool = False,
        fused: Optional[bool] = None,
    ) -> None:
        if fused:
            raise ConfigError(
                "SGDW takes no fused=True (its decay is applied outside torch's step); "
                'use fused=None or False'
            )
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
        )

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Decay each weight that has a gradient, then take torch's SGD step
        without decay. ``closure`` (re-evaluates the loss) runs first."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        decays = [group['weight_decay'] for group in self.param_groups]
        for group, decay in zip(self.param_groups, decays):
            if not isinstance(decay, torch.Tensor) and decay == 0:
                continue
            shrink = 1 - group['lr'] * decay
            for param in group['params']:
                if param.grad is not None:
                    param.mul_(shrink)
            group['weight_decay'] = 0.0
        try:
            super().step()
        finally:
            for group, decay in zip(self.param_groups, decays):
                group['weight_decay'] = decay
        return loss
