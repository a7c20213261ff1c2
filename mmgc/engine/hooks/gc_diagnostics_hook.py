"""Gradient statistics before and after GC (the paper's Fig. 4) and the drift
of each output unit's weight sum (constant under SGD with GC and under GC on the
update, Eq. 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from ..._compat import accumulative_counts
from ...errors import ConfigError
from ...ops import centralize, reduce_dims
from ..optimizers.selection import gc_target_of

__all__ = ['GCDiagnosticsHook']


@HOOKS.register_module()
class GCDiagnosticsHook(Hook):
    r"""Log gradient norms before/after GC and the drift of weight sums.

    It samples optimizer steps, not iterations: at the first optimizer step
    taken at or after each multiple of ``interval`` (iterations counted from
    1), right after that step, it records one sample. With
    ``optim_wrapper.accumulative_counts=N`` the optimizer steps at every
    ``N``-th iteration, so e.g. ``interval=2, N=3`` records at iterations
    3, 6, 9, ... (every step) and ``interval=5, N=3`` at 6, 12, 15, 21, ...
    (the first steps at or after 5, 10, 15, 20). A step skipped for inf/NaN
    gradients records nothing and the sample moves to the next step taken: an
    unfused optimizer's step is never called by ``GradScaler``, and a fused
    one's is called with ``optimizer.found_inf`` set (then nothing is
    recorded). The last step before a resumed iteration is taken to be at the
    last multiple of ``N``, as MMEngine counts it, so a resumed run samples
    the iterations an uninterrupted one does.

    For each chosen layer's weight :math:`\mathbf{w}` with gradient
    :math:`\mathbf{g}`, the unscaled gradient of the step (after MMEngine's
    unscaling and clipping; with a fused optimizer under ``GradScaler`` the
    kernel, and for centralized weights mmgc's GC hooks, leave ``.grad``
    divided by the scale after a step taken), it logs

    - ``grad_norm`` / ``grad_max``: :math:`\|\mathbf{g}\|_2`, :math:`\max|\mathbf{g}|`;
    - ``gc_grad_norm`` / ``gc_grad_max``: the same for :math:`\mathbf{P}\mathbf{g}`
      (in a baseline run, or with ``gc_variant='update'``: what GC on the
      gradient would have produced);
    - ``sum_drift``: :math:`\max_i |\mathbf{e}^T\mathbf{w}_i^t -
      \mathbf{e}^T\mathbf{w}_i^0|` over output units (float rounding with
      SGD + GC and with GC on the update; grows otherwise).

    Values go to the logger and every visualizer backend (``LocalVisBackend``:
    ``vis_data/scalars.json``) under ``gc/<layer>/<stat>``, at the step's
    iteration; ``tools/plot_gc_stats.py`` plots GC and baseline runs (Fig. 4
    style). The hook registers its optimizer post-step hook in
    ``before_train``, after the optim wrapper (and mmgc's GC hooks) are
    built, so it sees the gradient those hooks put back.

    Args:
        interval (int): Sample the first optimizer step at or after every
            ``interval`` iterations. Defaults to 50.
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
            raise ConfigError(f'interval must be a positive int; got {interval!r}')
        if layers is not None and (
            isinstance(layers, str) or not all(isinstance(n, str) for n in layers)
        ):
            raise ConfigError(f'layers must be a list of module names; got {layers!r}')
        self.interval = interval
        self.layers = list(layers) if layers is not None else None
        self._watched: dict[str, tuple[nn.Parameter, int, torch.Tensor]] = {}
        self._handle = None
        self._last_step = 0  # iteration (from 1) of the last optimizer step taken

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        modules = dict(model.named_modules())
        names = self.layers if self.layers is not None else _default_layers(model)
        for name in names:
            module = modules.get(name)
            target = gc_target_of(module) if module is not None else None
            if target is None:
                candidates = [n for n, m in modules.items() if gc_target_of(m)][:5]
                raise ConfigError(
                    f'GCDiagnosticsHook: layer {name!r} is not a conv or Linear '
                    f'module of the model; conv/Linear layers are e.g. {candidates}'
                )
            sums = _unit_sums(module.weight, target.out_dim)
            self._watched[name] = (module.weight, target.out_dim, sums)
        counts = accumulative_counts(runner.optim_wrapper)
        self._last_step = runner.iter - runner.iter % counts  # MMEngine's last step
        optimizer = runner.optim_wrapper.optimizer
        self._handle = optimizer.register_step_post_hook(
            lambda opt, *args: self._record(runner, opt)
        )
        print_log(
            f'GCDiagnosticsHook: every {self.interval} iterations, layers {list(self._watched)}',
            logger='current',
        )

    def after_train(self, runner) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _record(self, runner, optimizer) -> None:
        step, last = runner.iter + 1, self._last_step
        found_inf = getattr(optimizer, 'found_inf', None)  # a fused step under GradScaler
        if step // self.interval <= last // self.interval:
            self._last_step = step
            return
        if isinstance(found_inf, torch.Tensor) and float(found_inf.sum()) > 0:
            return  # skipped: no update; the sample moves to the next step taken
        self._last_step = step
        if not self._watched:
            return
        scalars: dict[str, float] = {}
        for name, (weight, out_dim, initial) in self._watched.items():
            if weight.grad is not None and not weight.grad.is_sparse:
                g = weight.grad.detach().float()
                for prefix, value in (('', g), ('gc_', centralize(g, out_dim))):
                    scalars[f'gc/{name}/{prefix}grad_norm'] = float(torch.linalg.vector_norm(value))
                    scalars[f'gc/{name}/{prefix}grad_max'] = float(value.abs().max())
            drift = _unit_sums(weight, out_dim) - initial
            scalars[f'gc/{name}/sum_drift'] = float(drift.abs().max())
        runner.visualizer.add_scalars(scalars, step=step)
        text = ', '.join(f'{k}: {v:.4g}' for k, v in scalars.items())
        print_log(f'Iter(train) [{step}] {text}', logger='current')


def _unit_sums(weight: torch.Tensor, out_dim: int) -> torch.Tensor:
    """Each output unit's weight sum, in float64."""
    return weight.detach().double().sum(reduce_dims(weight.dim(), out_dim))


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
        raise ConfigError('GCDiagnosticsHook: the model has no trainable conv or Linear layer')
    return chosen
