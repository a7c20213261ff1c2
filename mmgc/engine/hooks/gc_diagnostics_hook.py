r"""Gradient statistics before and after GC, and the Eq. (3) constraint.

The paper's Fig. 4 argues that GC lowers the gradient's L2 norm and max
value; Eq. (3) says each output unit's weight sum :math:`\mathbf{e}^T\mathbf{w}`
stays at its initial value under SGD with GC. :class:`GCDiagnosticsHook`
measures both during training, for a few chosen layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from ...ops import centralize, reduce_dims
from ..optimizers.selection import gc_target_of

__all__ = ['GCDiagnosticsHook']


@HOOKS.register_module()
class GCDiagnosticsHook(Hook):
    r"""Log gradient norms before/after GC and the drift of weight sums.

    Every ``interval`` training iterations, for each chosen layer's weight
    :math:`\mathbf{w}` with gradient :math:`\mathbf{g}` (as the optimizer
    receives it: after MMEngine's unscaling and clipping), it logs

    - ``grad_norm`` / ``grad_max``: :math:`\|\mathbf{g}\|_2` and
      :math:`\max|\mathbf{g}|` of the raw gradient;
    - ``gc_grad_norm`` / ``gc_grad_max``: the same for
      :math:`\mathbf{P}\mathbf{g}`, the centralized gradient (in a baseline run:
      what GC would have produced);
    - ``sum_drift``: :math:`\max_i |\mathbf{e}^T\mathbf{w}_i^t -
      \mathbf{e}^T\mathbf{w}_i^0|` over output units, right after the step
      (about float rounding with SGD + GC; grows without GC).

    Values go to the logger and to every visualizer backend (``LocalVisBackend``
    writes ``vis_data/scalars.json``; ``TensorboardVisBackend`` when
    configured), under ``gc/<layer>/<stat>``. ``tools/plot_gc_stats.py``
    draws GC and baseline runs side by side from those files (Fig. 4 style).

    The statistics are read in an optimizer step *post*-hook, so a step that
    AMP skips (inf/NaN gradients) records nothing.

    Args:
        interval (int): Log every ``interval`` iterations. Defaults to 50.
        layers (Sequence[str], optional): Module names (as in
            ``model.named_modules()``) of conv or Linear layers. Defaults to
            None: the first trainable convolution and the last trainable
            ``nn.Linear`` of the model, the layers of the paper's Fig. 4.

    Example:
        >>> custom_hooks = [dict(type='GCDiagnosticsHook', interval=20)]
    """

    priority = 'NORMAL'

    def __init__(self, interval: int = 50, layers: Sequence[str] | None = None) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f'interval must be a positive int; got {interval!r}')
        if layers is not None and (
            isinstance(layers, str) or not all(isinstance(n, str) for n in layers)
        ):
            raise ValueError(f'layers must be a list of module names; got {layers!r}')
        self.interval = interval
        self.layers = list(layers) if layers is not None else None
        self._watched: dict[str, tuple[nn.Parameter, int, torch.Tensor]] = {}
        self._handle = None

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        modules = dict(model.named_modules())
        names = self.layers if self.layers is not None else _default_layers(model)
        for name in names:
            module = modules.get(name)
            target = gc_target_of(module) if module is not None else None
            if target is None:
                candidates = [n for n, m in modules.items() if gc_target_of(m)][:5]
                raise ValueError(
                    f'GCDiagnosticsHook: layer {name!r} is not a conv or Linear '
                    f'module of the model; conv/Linear layers are e.g. {candidates}'
                )
            weight = module.weight
            sums = weight.detach().double().sum(reduce_dims(weight.dim(), target.out_dim))
            self._watched[name] = (weight, target.out_dim, sums)
        optimizer = runner.optim_wrapper.optimizer
        self._handle = optimizer.register_step_post_hook(lambda *args: self._record(runner))
        print_log(
            f'GCDiagnosticsHook: every {self.interval} iterations, layers {list(self._watched)}',
            logger='current',
        )

    def after_train(self, runner) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _record(self, runner) -> None:
        step = runner.iter + 1
        if step % self.interval:
            return
        scalars: dict[str, float] = {}
        for name, (weight, out_dim, initial) in self._watched.items():
            scalars.update(_layer_stats(name, weight, out_dim, initial))
        if not scalars:
            return
        runner.visualizer.add_scalars(scalars, step=step)
        text = ', '.join(f'{k}: {v:.4g}' for k, v in scalars.items())
        print_log(f'Iter(train) [{step}] {text}', logger='current')


def _layer_stats(
    name: str, weight: nn.Parameter, out_dim: int, initial: torch.Tensor
) -> dict[str, Any]:
    grad = weight.grad
    stats: dict[str, float] = {}
    if grad is not None and not grad.is_sparse:
        g = grad.detach().float()
        gc = centralize(g, out_dim)
        stats[f'gc/{name}/grad_norm'] = float(torch.linalg.vector_norm(g))
        stats[f'gc/{name}/grad_max'] = float(g.abs().max())
        stats[f'gc/{name}/gc_grad_norm'] = float(torch.linalg.vector_norm(gc))
        stats[f'gc/{name}/gc_grad_max'] = float(gc.abs().max())
    sums = weight.detach().double().sum(reduce_dims(weight.dim(), out_dim))
    stats[f'gc/{name}/sum_drift'] = float((sums - initial).abs().max())
    return stats


def _default_layers(model: nn.Module) -> list[str]:
    """The first convolution and the last Linear layer (paper, Fig. 4)."""
    convs, fcs = [], []
    for name, module in model.named_modules():
        target = gc_target_of(module)
        if target is None or not module.weight.requires_grad:
            continue
        (convs if target.kind == 'conv' else fcs).append(name)
    chosen = convs[:1] + fcs[-1:]
    if not chosen:
        raise ValueError('GCDiagnosticsHook: the model has no trainable conv or Linear layer')
    return chosen
