r"""Gradient Centralization for any ``torch.optim`` optimizer, through step hooks.

:class:`~mmgc.SGDGC` applies GC inside its own step. Other optimizers get it
from a pair of step hooks (:func:`attach_gc_hooks`) that act on the weights
of ``gc=True`` groups, in the way the group's ``gc_variant`` says
(:mod:`mmgc.engine.optimizers.variants`). A step that never runs (AMP
skipping inf/NaN gradients of an unfused optimizer) centralizes nothing.

**GC on the gradient** (``gc_variant='grad'``, the default; the paper's
Sec. 3.3). Just before ``optimizer.step()`` each parameter's ``.grad`` is
replaced by the gradient the optimizer should see; just after, the original
``.grad`` (and the group's decay) is put back. The decay meets the
projection as the optimizer applies it:

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

A float16/bfloat16 gradient's replacement is formed in float32 and rounded
once to its dtype (in half precision the gradient's mean can dwarf what
:math:`\mathbf{P}` keeps, and rounding the sum and the difference there
would leave much of the mean in).

**AMP with a fused optimizer** (torch's ``fused=True`` SGD, Adam, AdamW,
Adagrad). These set ``_step_supports_amp_scaling``, so ``GradScaler.step``
does not unscale: it sets ``optimizer.grad_scale`` (the scale :math:`S`, or
None after an explicit ``unscale_``) and ``optimizer.found_inf``, calls
``step()``, and the kernel divides each gradient by :math:`S`, writes that
unscaled gradient back to ``.grad``, and changes nothing (weights, state,
``.grad``) when ``found_inf`` is 1 (run on torch 2.13's CPU kernels; read in
the CUDA kernels' source, fused Adam/AdamW as torch 2.1 has them, fused SGD as
later torches do). The pre hook sees the scaled
:math:`S\mathbf{g}`, so it hands over
:math:`\mathbf{P}(S\mathbf{g} \pm S\lambda\mathbf{w})`, which the kernel's
division turns into :math:`\mathbf{P}(\mathbf{g} \pm \lambda\mathbf{w})`
(:math:`\mathbf{P}` is linear; with ``GradScaler``'s power-of-two scales the
scaling is exact). The post hook puts the original ``.grad`` back as the kernel
leaves the tensors it owns: divided by :math:`S` on a step taken, untouched
on a step skipped. No host sync is added: on a skipped step the kernel
discards what the hook handed over. One exception: torch's fused SGD with
momentum, asked to skip its *first* step, stores uninitialized momentum
buffers (``torch.empty_like``) and steps with them next time (measured on
torch 2.13's CPU kernel: a weight moved by 6.7e32; the CUDA kernel's source
skips the same way). Until that first step is taken the pre hook reads
``found_inf`` (one host sync) and, when it is set, hides every ``.grad``
from the step, so torch creates nothing, as its unfused path does.

**GC on the update** (``gc_variant='update'``; the authors' ``Adam_GC2`` /
``Adam_GCC2`` / ``AdamW_GCC2``). The optimizer steps on the raw gradient, with its own decay
as it applies it (L2 in the gradient, decoupled on the weight, and under AMP
its own unscaling); then each selected weight's update
:math:`\Delta = \mathbf{w}_{t-1} - \mathbf{w}_t` is centralized per output
unit, :math:`\mathbf{w}_t \leftarrow \mathbf{w}_{t-1} - \mathbf{P}\Delta`.
Everything the step did to the weight is inside :math:`\Delta`, decoupled
decay included: the authors' ``AdamW_GCC2`` centralizes
``step_size * (wd * w + exp_avg / denom)``, decay inside. So each output
unit's weight sum :math:`\mathbf{e}^T\mathbf{w}_i` stays at its initial
value (Eq. 3) for every optimizer. No copy of the weights is kept:

.. math::
    \mathbf{w}_{t-1} - \mathbf{P}\Delta
    = \mathbf{w}_t - \big(\bar{\mathbf{w}}_t - \bar{\mathbf{w}}_{t-1}\big),

where :math:`\bar{\mathbf{w}}` is the per-unit mean (over all dims but
``gc_dim``), so the pre hook keeps only :math:`\bar{\mathbf{w}}_{t-1}` (one
number per output unit, float32 or wider). The step sizes are torch's (the
authors' AdamW scales decay by the bias-corrected step size and adds ``eps``
before the bias correction; here the optimizer's own update is centralized).
On a fused step skipped for inf/NaN the weights did not move and nothing is
shifted. Supported: every optimizer above but ``ASGD``, whose averaged
weights ``ax`` are taken from the uncentralized step, so its update is not
the optimizer's alone; for ``SGD`` it gives the same weights as ``'grad'``
(:math:`\mathbf{P}` commutes with momentum) with uncentralized buffers.

**Closures.** ``optimizer.step(closure)`` recomputes the gradients inside
the step, after the pre hook has run. So the pre hook hands the step a
wrapped closure instead of centralizing: each call runs the user's closure,
then centralizes the gradients it computed (GC on the gradient; GC on the
update needs nothing from the closure), and the post hook puts the
closure's raw gradients back. Under ``GradScaler``'s fused path (which
takes no closure, as torch's ``GradScaler.step`` says) a closure is refused.

``LBFGS`` and ``SparseAdam`` are refused. ``SparseAdam`` takes sparse
gradients only. ``LBFGS`` re-evaluates the closure inside its step, which
the wrapped closure would centralize each time (projected gradients are the
gradients of the loss on the constrained subspace, so the math would hold),
but it allows one parameter group only, so weights whose output units lie
on different dims (a conv and a transposed conv), or weights with and
without GC, cannot be told apart: it cannot take per-tensor GC.

Every check that can refuse the step (a ``gc_variant``, a sparse gradient,
a closure under the fused AMP path) runs before any ``.grad`` or group
option is replaced.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from ...errors import ConfigError
from ...ops import centralize_, reduce_dims
from .capability import (
    COUPLED_DECAY,
    DECOUPLED_DECAY,
    GC_GROUP_DEFAULTS,
    NO_DECAY,
    GCInStep,
    GCStepHooksMarker,
    gc_variants_of,
    supports_gc,
    why_not_variant,
)
from .coverage import install_gc_coverage_check
from .variants import GC_VARIANTS, check_gc_variant, gc_variant_of

__all__ = ['attach_gc_hooks', 'uses_gc_hooks']


def uses_gc_hooks(optimizer: Optimizer) -> bool:
    """True if ``optimizer`` needs :func:`attach_gc_hooks` (its own step applies no GC)."""
    return not isinstance(optimizer, GCInStep) and supports_gc(type(optimizer))


def _decay_is_coupled(optimizer: Optimizer, group: dict[str, Any]) -> bool:
    if isinstance(optimizer, (*DECOUPLED_DECAY, *NO_DECAY)):
        return False
    return not group.get('decoupled_weight_decay', False)


def _check_groups(optimizer: Optimizer) -> None:
    """Raise before anything changes if a ``gc=True`` group's variant is
    unknown or not supported by ``optimizer``.

    Raises:
        ValueError: Naming the group's bad ``gc_variant`` and the valid ones.
    """
    for index, group in enumerate(optimizer.param_groups):
        if not group.get('gc', GC_GROUP_DEFAULTS['gc']):
            continue
        try:
            variant = check_gc_variant(gc_variant_of(group))
        except ValueError as err:
            raise ConfigError(f'param group {index}: {err}') from None
        takes = gc_variants_of(type(optimizer))
        if variant not in takes:
            valid = [v for v in GC_VARIANTS if v in takes]
            raise ConfigError(
                f'param group {index}: gc_variant={variant!r} is not defined for '
                f'{type(optimizer).__name__} ({why_not_variant(type(optimizer), variant)}); '
                f'use one of {valid}'
            )


def _fused_sgd_first_step(optimizer: Optimizer) -> bool:
    """True if a fused ``torch.optim.SGD`` group with momentum has no momentum
    buffer yet for any of its parameters with a gradient (torch's first step)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return False
    for group in optimizer.param_groups:
        if not group.get('fused') or group.get('momentum', 0) == 0:
            continue
        with_grad = [p for p in group['params'] if p.grad is not None]
        if with_grad and all(
            optimizer.state.get(p, {}).get('momentum_buffer') is None for p in with_grad
        ):
            return True
    return False


#: Gradients the pre hook centralizes in float32 and rounds once to their dtype.
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _unit_mean(param: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Per-output-unit mean of ``param``, in float32 or wider."""
    dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
    return param.detach().mean(dim=dims, keepdim=True, dtype=dtype)


class _GCStepHooks(GCStepHooksMarker):
    """The pre/post step hooks and what the pre hook replaced or recorded."""

    def __init__(self) -> None:
        self._grads: list[tuple[Tensor, Tensor]] = []
        self._decays: list[tuple[dict[str, Any], Any]] = []
        self._means: list[tuple[Tensor, tuple[int, ...], Tensor]] = []
        self._scale: Tensor | None = None
        self._found_inf: Tensor | None = None

    def before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> Any:
        self._restore()  # a failed step left state: put the grads back
        self._means = []
        _check_groups(optimizer)  # a group added since attach_gc_hooks
        # torch hands the hooks step's arguments with the optimizer first
        closure = kwargs.get('closure', args[1] if len(args) > 1 else None)
        scale = getattr(optimizer, 'grad_scale', None)  # set by GradScaler (fused)
        found_inf = getattr(optimizer, 'found_inf', None)
        if closure is not None and (isinstance(scale, Tensor) or isinstance(found_inf, Tensor)):
            raise ConfigError(
                f"{type(optimizer).__name__}.step(closure) with GradScaler's grad_scale or "
                f'found_inf set cannot be centralized (the closure would recompute the '
                f'gradients that the fused kernel unscales); call step() without a closure'
            )
        if closure is None:
            _check_sparse(optimizer)  # before anything is replaced
        self._scale = scale if isinstance(scale, Tensor) else None
        self._found_inf = found_inf if isinstance(found_inf, Tensor) else None
        if self._found_inf is not None and _fused_sgd_first_step(optimizer):
            if float(self._found_inf.sum()) > 0:  # one sync, before the first step only
                self._hide_grads(optimizer)
                return None
        for group in optimizer.param_groups:
            if group.get('gc', GC_GROUP_DEFAULTS['gc']) and gc_variant_of(group) == 'update':
                gc_dim = group.get('gc_dim', GC_GROUP_DEFAULTS['gc_dim'])
                for p in group['params']:  # with a closure: grads come later
                    if (closure or p.grad is not None) and p.ndim > 1 and p.numel():
                        dims = reduce_dims(p.ndim, gc_dim)
                        self._means.append((p, dims, _unit_mean(p, dims)))
        if closure is None:
            self._centralize_all(optimizer)
            return None
        wrapped = self._centralizing(optimizer, closure)
        if 'closure' in kwargs:
            return args, {**kwargs, 'closure': wrapped}
        return (args[0], wrapped, *args[2:]), kwargs

    def _centralizing(self, optimizer: Optimizer, closure: Any) -> Any:
        """``closure``, then GC of the gradients it computed (at each call:
        an optimizer may evaluate it more than once)."""

        def centralizing_closure() -> Any:
            self._restore_grads()  # what an earlier call replaced
            loss = closure()
            _check_sparse(optimizer)
            self._centralize_all(optimizer)
            return loss

        return centralizing_closure

    def _centralize_all(self, optimizer: Optimizer) -> None:
        """GC on the gradient, for every ``gc=True`` group of that variant."""
        for group in optimizer.param_groups:
            if group.get('gc', GC_GROUP_DEFAULTS['gc']) and gc_variant_of(group) != 'update':
                gc_dim = group.get('gc_dim', GC_GROUP_DEFAULTS['gc_dim'])
                self._centralize_grads(optimizer, group, gc_dim)

    def _centralize_grads(self, optimizer: Optimizer, group: dict[str, Any], gc_dim: int) -> None:
        """``p.grad <- P(g ± wd w)`` (``P(S g ± S wd w)`` for a fused AMP step);
        for a float16/bfloat16 gradient formed in float32 and rounded once."""
        decay = group.get('weight_decay', 0.0)
        coupled = _decay_is_coupled(optimizer, group) and (isinstance(decay, Tensor) or decay != 0)
        sign = -1.0 if group.get('maximize', False) else 1.0
        for p in group['params']:
            grad = p.grad
            if grad is None or (p.ndim <= 1 and not coupled):
                continue
            widen = grad.dtype in _HALF_DTYPES
            g, w = (grad.float(), p.detach().float()) if widen else (grad, p.detach())
            if not coupled:
                seen = g if widen else g.clone()
            elif self._scale is None and not isinstance(decay, Tensor):
                seen = torch.add(g, w, alpha=sign * decay)
            else:  # S wd w: the fused kernel divides all of it by S
                factor = sign * decay
                if self._scale is not None:
                    factor = self._scale.to(p.device).reshape(()) * factor
                seen = torch.add(g, w * factor)
            seen = centralize_(seen, gc_dim)
            p.grad = seen.to(grad.dtype) if widen else seen
            self._grads.append((p, grad))
        if coupled:
            self._decays.append((group, decay))
            group['weight_decay'] = 0.0

    def after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for p, dims, before in self._means:
                shift = _unit_mean(p, dims).sub_(before)
                if self._found_inf is not None:  # a skipped fused step moved nothing
                    shift.masked_fill_(self._found_inf.to(shift.device).reshape(()) > 0, 0.0)
                p.sub_(shift)
            if self._scale is not None:  # as the fused kernel leaves its tensors
                for _, grad in self._grads:
                    divisor = self._scale.to(grad.device).reshape(())
                    if self._found_inf is not None:
                        skipped = self._found_inf.to(grad.device).reshape(()) > 0
                        divisor = torch.where(skipped, torch.ones_like(divisor), divisor)
                    grad.div_(divisor)
        self._means = []
        self._restore()

    def _hide_grads(self, optimizer: Optimizer) -> None:
        """Take every ``.grad`` away for this step (put back afterwards as it
        was): torch's fused SGD with momentum, asked to skip its first step,
        would store uninitialized momentum buffers (``torch.empty_like``) and
        use them at the next step; with no gradient it creates none, as the
        unfused path does when ``GradScaler`` skips the step."""
        for group in optimizer.param_groups:
            for p in group['params']:
                if p.grad is not None:
                    self._grads.append((p, p.grad))
                    p.grad = None
        self._scale = None  # the kernel did not run: nothing to unscale

    def _restore_grads(self) -> None:
        for p, grad in self._grads:
            p.grad = grad
        for group, decay in self._decays:
            group['weight_decay'] = decay
        self._grads, self._decays = [], []

    def _restore(self) -> None:
        self._restore_grads()
        self._scale = self._found_inf = None


def _check_sparse(optimizer: Optimizer) -> None:
    """Raise if a ``gc=True`` group (GC on the gradient) has a sparse
    gradient to replace, before any gradient is replaced."""
    for group in optimizer.param_groups:
        if not group.get('gc', GC_GROUP_DEFAULTS['gc']) or gc_variant_of(group) == 'update':
            continue
        decay = group.get('weight_decay', 0.0)
        coupled = _decay_is_coupled(optimizer, group) and (isinstance(decay, Tensor) or decay != 0)
        for p in group['params']:
            if p.grad is not None and p.grad.is_sparse and (p.ndim > 1 or coupled):
                raise RuntimeError(
                    f'gradient centralization cannot centralize a sparse '
                    f'gradient (parameter of shape {tuple(p.shape)}); set '
                    f'gc=False for its parameter group'
                )


def attach_gc_hooks(optimizer: Optimizer) -> tuple[RemovableHandle, RemovableHandle]:
    """Make ``optimizer`` apply GC to its ``gc=True`` groups (see the module).

    Args:
        optimizer (Optimizer): A ``torch.optim`` optimizer other than SGDGC
            (see :func:`supports_gc`); its groups may carry ``gc``,
            ``gc_dim`` and ``gc_variant`` (``'grad'`` or ``'update'``).

    Returns:
        tuple[RemovableHandle, RemovableHandle]: The pre and post hook
        handles; ``handle.remove()`` detaches them.

    Raises:
        ValueError: For SGDGC (it centralizes by itself), an optimizer that
            cannot be centralized through its step, or a group whose
            ``gc_variant`` is unknown or undefined for the optimizer (a group
            added later is checked at its first step).
    """
    if isinstance(optimizer, GCInStep):
        raise ConfigError(
            f'{type(optimizer).__name__} centralizes in its own step; it needs no GC hooks'
        )
    if not supports_gc(type(optimizer)):
        raise ConfigError(
            f'cannot apply gradient centralization to {type(optimizer).__name__}; '
            f"supported: SGDGC, MMPretrain's LARS and Lamb (variant update) and torch.optim "
            f'{sorted(c.__name__ for c in COUPLED_DECAY + DECOUPLED_DECAY + NO_DECAY)}'
        )
    _check_groups(optimizer)
    install_gc_coverage_check(optimizer)  # logs at the first step what gets GC
    hooks = _GCStepHooks()
    return (
        optimizer.register_step_pre_hook(hooks.before_step),
        optimizer.register_step_post_hook(hooks.after_step),
    )
