r"""SGD (with momentum) and Gradient Centralization.

The update rule is written once, in :class:`SGDGC`'s docstring. As in
``torch/optim/sgd.py``, the class gathers each group's tensors and state,
and the functional :func:`sgd_gc` sorts them once by kernel and calls each
kernel once: mmgc's CPU kernel (:mod:`mmgc.ops.cpu_kernel`) or
``torch.optim.sgd.sgd`` (its for-loop, ``foreach`` or ``fused`` kernel).
Differences between torch versions are found by feature
(:func:`torch_has_fused_sgd`, :func:`torch_fused_sgd_on_cpu`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from mmengine.registry import OPTIMIZERS
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _default_to_fused_or_foreach
from torch.optim.sgd import sgd as torch_sgd

from ...errors import ConfigError, ConfigTypeError
from ...ops import gc_direction_means, gc_update_directions, reduce_dims
from ...ops.cpu_kernel import SGDHyper, cpu_kernel_supports, fused_sgd_gc_cpu_, load_cpu_kernel
from .coverage import install_gc_coverage_check
from .variants import check_gc_variant

__all__ = [
    'GC_GROUP_DEFAULTS',
    'SGDGC',
    'SGDWGC',
    'sgd_gc',
    'torch_fused_sgd_on_cpu',
    'torch_has_fused_sgd',
]

#: Per-parameter-group options that SGDGC adds to ``torch.optim.SGD``'s
#: (see :class:`SGDGC`).
GC_GROUP_DEFAULTS: dict[str, Any] = {'gc': True, 'gc_dim': 0}
#: The group options :meth:`SGDGC.step` hands to :func:`sgd_gc`.
_STEP_OPTIONS = (
    'lr',
    'dampening',
    'weight_decay',
    'nesterov',
    'maximize',
    'foreach',
    'fused',
    'decoupled_weight_decay',
)


def torch_has_fused_sgd() -> bool:
    """Whether ``torch.optim.sgd.sgd`` takes ``fused`` (torch 2.1's does not)."""
    return 'fused' in inspect.signature(torch_sgd).parameters


@functools.cache
def torch_fused_sgd_on_cpu(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch's fused SGD updates CPU tensors of ``dtype``, tried
    once per dtype on 67 elements (vectorized chunks and a tail): the first
    fused SGDs were CUDA-only, and torch 2.13's leaves the vectorized chunks
    of CPU float16/bfloat16 tensors as they were."""
    if not torch_has_fused_sgd():
        return False
    param = torch.zeros(67, dtype=dtype)
    zero = dict(weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False, maximize=False)
    try:
        torch_sgd([param], [torch.ones_like(param)], [None], lr=1.0, fused=True, **zero)
    except RuntimeError:
        return False
    return bool((param == -1.0).all())


def _fused_missing(params: Iterable[Tensor]) -> str | None:
    """Why torch's fused SGD cannot run on ``params`` here (None: it can)."""
    if not torch_has_fused_sgd():
        return 'has no fused SGD kernel'
    cpu_dtypes = {p.dtype for p in params if p.device.type == 'cpu'}
    if cpu_dtypes and not torch_fused_sgd_on_cpu():
        return 'has a fused SGD for GPUs only, not for CPU tensors'
    for dtype in sorted(cpu_dtypes, key=str):
        if not torch_fused_sgd_on_cpu(dtype):
            return f'has a fused SGD that leaves CPU {dtype} tensors unchanged'
    return None


def _check_fused_supported(params: Iterable[Tensor]) -> None:
    """Raise, in one sentence, where ``fused=True`` cannot run here."""
    missing = _fused_missing(params)
    if missing is None:
        return
    if missing.startswith('has no'):
        raise ConfigError(
            f'fused=True needs a torch with a fused SGD kernel; torch '
            f'{torch.__version__} has none: use the default (fused=None) or '
            f'foreach=True/False'
        )
    if 'unchanged' in missing:
        raise ConfigError(
            f'fused=True: torch {torch.__version__} {missing} (tried on one '
            f'element): use the default (fused=None) or foreach=True/False'
        )
    raise ConfigError(
        f'fused=True on CPU tensors needs a torch whose fused SGD runs on the '
        f'CPU; torch {torch.__version__} has it for GPUs only: use the '
        f'default (fused=None) or foreach=True/False'
    )


def _check_loaded_fused(groups: list[dict], params_of: Callable[[int], list[Tensor]]) -> None:
    """Raise, in one sentence, if a loaded group has ``fused=True`` where this
    torch cannot run it (a GPU run resumed on a CPU, a newer torch's state on
    torch 2.1); ``params_of(i)`` gives group ``i``'s tensors."""
    for i, group in enumerate(groups):
        if not group.get('fused'):
            continue
        missing = _fused_missing(params_of(i))
        if missing is not None:
            raise ConfigError(
                f'the loaded state has fused=True in parameter group {i}, but torch '
                f"{torch.__version__} {missing}: set 'fused' to None in the state's "
                f'param_groups before loading (SGDGC then picks the fastest kernel '
                f'here) or resume on a torch and device that have it'
            )


def _check_gc_options(group: dict) -> None:
    """Raise ``TypeError`` if a group's (or ``custom_keys`` entry's) ``gc`` /
    ``gc_dim`` has the wrong type."""
    gc = group.get('gc', GC_GROUP_DEFAULTS['gc'])
    if not isinstance(gc, bool):
        raise ConfigTypeError(f'param group option gc must be True or False; got {gc!r}')
    gc_dim = group.get('gc_dim', GC_GROUP_DEFAULTS['gc_dim'])
    if isinstance(gc_dim, bool) or not isinstance(gc_dim, int):
        raise ConfigTypeError(
            f'param group option gc_dim must be an int (the output-unit dim, '
            f'0 for Conv/Linear, 1 for ConvTranspose); got {gc_dim!r}'
        )
    decoupled = group.get('decoupled_weight_decay', False)
    if not isinstance(decoupled, bool):
        raise ConfigTypeError(
            f'param group option decoupled_weight_decay must be True or False; got {decoupled!r}'
        )
    if 'gc_variant' in group:  # SGD: 'grad' and 'update' are the same update
        check_gc_variant(group['gc_variant'])


@OPTIMIZERS.register_module(name=['SGDGC', 'SGD_GC'])
class SGDGC(Optimizer):
    r"""SGD with momentum and Gradient Centralization (Yong et al., ECCV 2020).

    Takes exactly ``torch.optim.SGD``'s arguments, with the same defaults,
    plus ``decoupled_weight_decay`` (as ``torch.optim.Adam`` has it); with GC
    switched off in every group it *is* ``torch.optim.SGD``. For each
    parameter :math:`\theta` of a group with ``gc=True`` and
    :math:`\theta.\mathrm{ndim} > 1` (conv and fully-connected weights), the
    gradient entering the momentum is centralized per output unit:

    .. math::
        \begin{aligned}
            &g_t \leftarrow \pm\nabla_\theta f_t(\theta_{t-1})
                \quad (- \text{ if maximize}) \\
            &\hat g_t \leftarrow \begin{cases}
                \mathbf{P}\,g_t & \text{decoupled\_weight\_decay} \\
                \mathbf{P}\,(g_t + \lambda\theta_{t-1}) & \text{otherwise}
                \end{cases},
                \qquad \mathbf{P} = \mathbf{I} - \mathbf{e}\mathbf{e}^T
                \text{ per output unit (paper, Eq. 2 and Sec. 3.4)} \\
            &\textbf{if } \mu \neq 0: \;
                \mathbf{b}_t \leftarrow
                \begin{cases} \hat g_t & t = 1 \\
                \mu\mathbf{b}_{t-1} + (1-\tau)\hat g_t & t > 1 \end{cases},
                \quad \hat g_t \leftarrow
                \begin{cases} \hat g_t + \mu\mathbf{b}_t & \text{nesterov} \\
                \mathbf{b}_t & \text{otherwise} \end{cases} \\
            &\theta_t \leftarrow \begin{cases}
                (1 - \gamma\lambda)\,\theta_{t-1} - \gamma\,\hat g_t
                    & \text{decoupled\_weight\_decay} \\
                \theta_{t-1} - \gamma\,\hat g_t & \text{otherwise}
                \end{cases}
        \end{aligned}

    Other tensors (biases, norm parameters, groups with ``gc=False``) follow
    ``torch.optim.SGD`` (with ``decoupled_weight_decay``: the same rule
    without :math:`\mathbf{P}`). Because decay is projected too, each output
    unit's weight sum :math:`\mathbf{e}^T\theta` keeps its initial value
    (Eq. 3). With decoupled decay it does not: :math:`\mathbf{P}` removes the
    gradient's part of the sum and the decay scales it,
    :math:`\mathbf{e}^T\theta_t = (1 - \gamma\lambda)\,\mathbf{e}^T\theta_{t-1}`.
    The momentum follows torch's convention, not the :math:`(1-\beta)` form
    of the paper's Algorithm 1, as the authors' code and MMDetection's
    learning-rate schedules do.

    ``decoupled_weight_decay=True`` is the authors' ``SGDW_GC`` (registered
    as :class:`SGDWGC`, alias ``SGDW_GC``; with ``gc_layers=('conv',)`` in
    :class:`~mmgc.GCOptimWrapperConstructor` their ``SGDW_GCC``): their code
    centralizes the raw gradient, runs the momentum on it and then subtracts
    :math:`\gamma\lambda\theta_{t-1}`, the weight from before the step.

    Per-group options (in ``param_groups``, hence in ``state_dict()``), set
    per tensor by :class:`~mmgc.GCOptimWrapperConstructor`:

    - ``gc`` (bool): centralize this group's ``ndim > 1`` tensors. Defaults
      to True: without a constructor SGDGC is the authors' ``SGD_GC``.
    - ``gc_dim`` (int): the dim that indexes output units. Defaults to 0
      (``Conv*d``, ``Linear``); ``ConvTranspose*d`` weights need 1.
    - ``gc_variant`` (``'grad'`` or ``'update'``, see
      :mod:`~mmgc.engine.optimizers.variants`): accepted and checked; for SGD
      the two are the same update, since :math:`\mathbf{P}` is linear and
      commutes with the momentum (the sum of centralized steps is the
      centralized sum), and with decoupled decay it acts on the gradient's
      part only in both.

    Args:
        params (iterable): Parameters or parameter-group dicts.
        lr (float | Tensor): Learning rate :math:`\gamma`. Defaults to 1e-3.
        momentum (float): Momentum factor :math:`\mu`. Defaults to 0.
        dampening (float): Dampening :math:`\tau`. Defaults to 0.
        weight_decay (float | Tensor): L2 decay :math:`\lambda`. Defaults to 0.
        nesterov (bool): Nesterov momentum. Defaults to False.
        maximize (bool): Maximize the objective. Defaults to False.
        foreach (bool, optional): Use torch's multi-tensor kernels (False:
            torch's for-loop). Defaults to None: mmgc's fused CPU kernel for
            dense float32/float64 CPU tensors, torch's choice for the others.
        differentiable (bool): Let autograd run through the step.
            Defaults to False.
        fused (bool, optional): Use torch's fused SGD kernel. Defaults to
            None (see ``foreach``): where mmgc's kernel does not apply, torch's
            fused SGD where this torch has one for the device and dtype.
        decoupled_weight_decay (bool): Decay the weight outside the projected
            gradient, :math:`(1-\gamma\lambda)\theta` (SGDW). Defaults to False.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        >>> optimizer = SGDGC(model.parameters(), lr=0.02, momentum=0.9,
        ...                   weight_decay=1e-4)
        >>> model(torch.randn(2, 3, 8, 8)).sum().backward()
        >>> optimizer.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ConfigError(f'Tensor lr must have one element; got shape {tuple(lr.shape)}')
        if lr < 0.0:
            raise ConfigError(f'Invalid learning rate: {lr} (must be >= 0)')
        if momentum < 0.0:
            raise ConfigError(f'Invalid momentum value: {momentum} (must be >= 0)')
        if weight_decay < 0.0:
            raise ConfigError(f'Invalid weight_decay value: {weight_decay} (must be >= 0)')
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ConfigError(
                'Nesterov momentum requires a momentum > 0 and zero dampening; '
                f'got momentum={momentum}, dampening={dampening}'
            )
        if fused and differentiable:
            raise ConfigError('fused=True does not support differentiable=True')
        if fused and foreach:
            raise ConfigError('fused=True and foreach=True cannot be set together')
        if not isinstance(decoupled_weight_decay, bool):
            raise ConfigTypeError(
                f'decoupled_weight_decay must be True or False; got {decoupled_weight_decay!r}'
            )
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        defaults.update(nesterov=nesterov, maximize=maximize, foreach=foreach)
        defaults.update(differentiable=differentiable, fused=fused, **GC_GROUP_DEFAULTS)
        defaults.update(decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)
        if fused:
            _check_fused_supported(p for group in self.param_groups for p in group['params'])
        install_gc_coverage_check(self)  # logs at the first step what gets GC

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, checking its ``gc`` / ``gc_dim`` / ``gc_variant`` /
        ``decoupled_weight_decay`` options first.

        Raises:
            TypeError: If ``gc`` / ``gc_dim`` / ``decoupled_weight_decay`` have
                the wrong type.
            ValueError: If ``gc_variant`` is not one of
                :data:`~mmgc.engine.optimizers.variants.GC_VARIANTS`.
            ValueError: If the group lists the same tensor twice (torch only
                warns, then updates it twice per step).
        """
        _check_gc_options(param_group)
        params = param_group['params']
        if not isinstance(params, set):  # torch's own error for sets
            params = [params] if isinstance(params, Tensor) else list(params)
            seen: set[int] = set()
            twice = [p for p in params if id(p) in seen or seen.add(id(p))]
            if twice:
                raise ConfigError(
                    f'a parameter group lists the same tensor (shape '
                    f'{tuple(twice[0].shape)}) more than once; list each tensor once'
                )
            param_group = {**param_group, 'params': params}
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Fill the options older states lack; refuse a ``fused=True`` this
        torch cannot run (see :meth:`load_state_dict`)."""
        super().__setstate__(state)
        defaults = dict(nesterov=False, maximize=False, foreach=None, differentiable=False)
        defaults.update(fused=False, decoupled_weight_decay=False, **GC_GROUP_DEFAULTS)
        for group in self.param_groups:
            for key, value in defaults.items():
                group.setdefault(key, value)
        _check_loaded_fused(self.param_groups, lambda i: self.param_groups[i]['params'])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an ``SGDGC`` state dict.

        Raises:
            ValueError: If a group has no GC options (a ``torch.optim.SGD``
                state, whose groups torch would give ``gc=True, gc_dim=0``), or
                has ``fused=True`` where this torch has no fused SGD for its
                tensors' device; nothing is loaded then.
        """
        missing = [i for i, g in enumerate(state_dict['param_groups']) if 'gc' not in g]
        if missing:
            raise ConfigError(
                f'the state dict has no GC options in its parameter groups {missing}, so '
                f'it is not an SGDGC state (a torch.optim.SGD one?); resume a baseline '
                f'run with tools/train.py --resume, which maps it onto the GC groups by '
                f'parameter (mmgc.runtime.optimizer_state)'
            )
        groups = state_dict['param_groups']
        if len(groups) == len(self.param_groups):  # else torch's own error
            _check_loaded_fused(groups, lambda i: self.param_groups[i]['params'])
        super().load_state_dict(state_dict)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step; ``p.grad`` is left as it was.

        Args:
            closure (Callable, optional): Re-evaluates the model and returns
                the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.set_grad_enabled(self.defaults['differentiable']):
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        """Gather the group's tensors and state (torch's ``_init_group``)."""
        momentum = group['momentum']
        params, grads, gc_dims, buffers = [], [], [], []
        for p in group['params']:
            if p.grad is None:
                continue
            centralized = group['gc'] and p.ndim > 1
            if centralized and p.grad.is_sparse:
                raise RuntimeError(
                    f'SGDGC cannot centralize a sparse gradient (parameter of '
                    f'shape {tuple(p.shape)}); set gc=False for its parameter '
                    f'group, e.g. with custom_keys in paramwise_cfg'
                )
            params.append(p)
            grads.append(p.grad)
            gc_dims.append(group['gc_dim'] if centralized else None)
            buffers.append(self.state[p].get('momentum_buffer') if momentum != 0 else None)
        if not params:
            return
        options = {key: group[key] for key in _STEP_OPTIONS}
        sgd_gc(params, grads, buffers, gc_dims, momentum=momentum, **options)
        if momentum != 0:
            for p, buffer in zip(params, buffers):
                self.state[p]['momentum_buffer'] = buffer


@OPTIMIZERS.register_module(name=['SGDWGC', 'SGDW_GC'])
class SGDWGC(SGDGC):
    r""":class:`SGDGC` with ``decoupled_weight_decay=True`` by default: the
    authors' ``SGDW_GC`` (SGD with decoupled weight decay and GC; the rule is
    in :class:`SGDGC`'s docstring).

    Example:
        >>> conv = torch.nn.Conv2d(3, 8, 3)
        >>> optimizer = SGDWGC(conv.parameters(), lr=0.1, momentum=0.9,
        ...                    weight_decay=5e-4)
    """

    # SGDGC's signature with another default (inspect.signature shows it)
    __init__ = functools.partialmethod(SGDGC.__init__, decoupled_weight_decay=True)


def sgd_gc(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    gc_dims: list[int | None],
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float | Tensor,
    nesterov: bool,
    maximize: bool,
    foreach: bool | None = None,
    fused: bool | None = None,
    decoupled_weight_decay: bool = False,
) -> None:
    r"""Functional :class:`SGDGC` step over lists of tensors (the rule is in
    :class:`SGDGC`'s docstring).

    ``gc_dims[i]`` is the output-unit dim of ``params[i]``, or None to leave
    it uncentralized. ``momentum_buffers`` is updated in place (new buffers
    on the first step). The tensors are sorted once by kernel:

    - default (``foreach`` and ``fused`` both None), plain dense contiguous
      float32/float64 CPU tensors (:func:`~mmgc.ops.cpu_kernel.cpu_kernel_supports`):
      centralized ones go to mmgc's CPU kernel, the others to torch's fused
      SGD where it runs on the CPU, else to mmgc's kernel too;
    - other tensors with the default: torch's fused SGD where this torch has
      one for their device and dtype (plain tensors of one layout), else
      torch's own default; with ``foreach`` / ``fused`` set: that kernel.

    On torch's kernels a centralized tensor takes the **generic path**: torch
    steps on the raw gradient (with the decay and sign), and since
    :math:`\mathbf{P}` is linear the effect of :math:`\mathbf{P}` is restored
    with the per-unit means :math:`\mathbf{a} = \mathrm{mean}(\pm g +
    \lambda\theta)` alone (:func:`~mmgc.ops.gc_direction_means`; two
    reductions, no full-size copy): an existing buffer is shifted by
    :math:`-(1-\tau)\mathbf{a}/\mu` before the step (so torch's
    :math:`\mu\mathbf{b} + (1-\tau)r` is :math:`\mu\mathbf{b} + (1-\tau)
    \mathbf{P}r`), a new one by :math:`-\mathbf{a}` after it, and the weight
    by :math:`+\gamma k\mathbf{a}` where torch's direction still holds
    :math:`\mathbf{a}` (:math:`k = 1`, or :math:`1 + \mu` for a new Nesterov
    buffer; below a momentum of 1e-3 an existing buffer is shifted after the
    step instead). An inherited, uncentralized buffer is kept as it is, as
    the rule says. Under autograd (``differentiable=True``) the directions
    :math:`\mathbf{P}(\pm g + \lambda\theta)` are built out of place instead.
    With ``decoupled_weight_decay`` torch's kernels get every tensor scaled
    by :math:`1 - \gamma\lambda` first and step without decay; mmgc's kernel
    scales the weight in its one pass.

    Raises:
        ValueError: If a ``gc_dim`` is out of range, before any tensor moves.
    """
    default = foreach is None and fused is None
    cpu_scalars = not any(
        isinstance(value, Tensor) and value.device.type != 'cpu' for value in (lr, weight_decay)
    )
    autograd = torch.is_grad_enabled()
    kernels: dict[_Kernel, list[int]] = {}  # tensor indices by the call that updates them
    for i, (param, grad, dim) in enumerate(zip(params, grads, gc_dims)):
        centralized = dim is not None and param.dim() > 1
        if centralized:
            reduce_dims(param.dim(), dim)  # raises before any tensor moves
        buffer = momentum_buffers[i]
        kernel = _Kernel(foreach=foreach, fused=fused)
        if default and not autograd:
            mmgc_kernel = cpu_scalars and (centralized or not torch_fused_sgd_on_cpu())
            if mmgc_kernel and cpu_kernel_supports(param, grad, buffer, autograd):
                mmgc_kernel = load_cpu_kernel() is not None
            else:
                mmgc_kernel = False
            if mmgc_kernel:
                kernel = _Kernel(mmgc=True)
            elif _fused_suits(param, grad, buffer):
                kernel = _Kernel(fused=True)
        if kernel.fused:
            kernel = kernel._replace(first_step=buffer is None)
        if centralized and not kernel.mmgc:
            kernel = kernel._replace(centralized=True)
        kernels.setdefault(kernel, []).append(i)
    hyper = SGDHyper(
        lr, momentum, dampening, weight_decay, nesterov, maximize, decoupled_weight_decay
    )
    for kernel, indices in kernels.items():
        sub_params, sub_grads = [params[i] for i in indices], [grads[i] for i in indices]
        sub_buffers = [momentum_buffers[i] for i in indices]
        sub_dims = [gc_dims[i] for i in indices]
        if kernel.mmgc:
            fused_sgd_gc_cpu_(sub_params, sub_grads, sub_buffers, sub_dims, **hyper._asdict())
        else:
            dims = sub_dims if kernel.centralized else None  # None: torch's SGD as it is
            _torch_step(sub_params, sub_grads, sub_buffers, dims, kernel, autograd, hyper)
        for i, buffer in zip(indices, sub_buffers):
            momentum_buffers[i] = buffer


#: Below this momentum an existing buffer is corrected after torch's step,
#: not before it (the shift before divides by the momentum).
_MIN_MOMENTUM_TO_SHIFT_FIRST = 1e-3


def _torch_step(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor | None],
    gc_dims: list[int] | None,
    kernel: _Kernel,
    autograd: bool,
    hyper: SGDHyper,
) -> None:
    """One call of ``torch.optim.sgd.sgd`` on tensors of one kernel; with
    ``gc_dims`` (all centralized) the generic path of :func:`sgd_gc`."""
    lr, momentum, dampening, weight_decay, nesterov, maximize, decoupled_weight_decay = hyper
    decay = 0.0 if decoupled_weight_decay else weight_decay
    means = None
    if gc_dims is not None and autograd:  # differentiable: out-of-place directions
        grads = gc_update_directions(params, grads, gc_dims, weight_decay=decay, maximize=maximize)
        decay, maximize = 0.0, False
    elif gc_dims is not None:
        means = gc_direction_means(params, grads, gc_dims, weight_decay=decay, maximize=maximize)
    if decoupled_weight_decay and (isinstance(weight_decay, Tensor) or weight_decay != 0):
        shrink = 1 - lr * weight_decay  # theta <- (1 - lr wd) theta, then SGD without decay
        if isinstance(shrink, Tensor):
            for param in params:
                param.mul_(shrink)
        else:
            torch._foreach_mul_(params, shrink)
    # per tensor: how much of its means a buffer loses before torch's step and
    # after it, and how much (times lr) the weight gets back after it
    before: dict[float, list[int]] = {}
    after: dict[float, list[int]] = {}
    weight: dict[float, list[int]] = {}
    if means is not None:
        keep = 1.0 - dampening
        for i, buffer in enumerate(buffers):
            if momentum == 0:
                weight.setdefault(1.0, []).append(i)
            elif buffer is None:  # torch's new buffer is the raw direction
                after.setdefault(1.0, []).append(i)
                weight.setdefault(1.0 + momentum if nesterov else 1.0, []).append(i)
            elif momentum >= _MIN_MOMENTUM_TO_SHIFT_FIRST:
                before.setdefault(keep / momentum, []).append(i)
                if nesterov:
                    weight.setdefault(1.0, []).append(i)
            else:  # nesterov has dampening 0: keep = 1
                after.setdefault(keep, []).append(i)
                weight.setdefault(1.0 + momentum if nesterov else keep, []).append(i)
        _shift_each(buffers, means, before, sign=-1.0)
    foreach = kernel.foreach
    if foreach is None and not kernel.fused:  # torch's own choice, made here
        foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)[1]
    decayed = isinstance(decay, Tensor) or decay != 0
    if foreach and momentum != 0 and nesterov and not (decayed or maximize):
        grads = [g.clone() for g in grads]  # torch's foreach Nesterov adds into them
    options = dict(foreach=foreach, has_sparse_grad=any(g.is_sparse for g in grads))
    if kernel.fused:  # only set where torch has it (checked at construction and load)
        options['fused'] = True
    options.update(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov)
    torch_sgd(params, grads, buffers, **options, weight_decay=decay, maximize=maximize)
    if means is not None:
        _shift_each(buffers, means, after, sign=-1.0)
        _shift_each(params, means, weight, sign=1.0, lr=lr)


def _shift_each(
    tensors: list[Tensor],
    means: list[Tensor],
    indices_by_factor: dict[float, list[int]],
    *,
    sign: float,
    lr: float | Tensor = 1.0,
) -> None:
    """``tensors[i] += sign * lr * factor * means[i]`` (broadcast), one foreach
    call per factor."""
    for factor, indices in indices_by_factor.items():
        targets = [tensors[i] for i in indices]
        if isinstance(lr, Tensor):
            scaled = [means[i] * lr for i in indices]
            torch._foreach_add_(targets, scaled, alpha=sign * factor)
        else:
            torch._foreach_add_(targets, [means[i] for i in indices], alpha=sign * factor * lr)


def _same_layout(tensor: Tensor, param: Tensor) -> bool:
    return (
        type(tensor) in _PLAIN_TYPES
        and tensor.layout == torch.strided
        and tensor.device == param.device
        and tensor.dtype == param.dtype
        and tensor.shape == param.shape
        and tensor.stride() == param.stride()
    )


def _fused_suits(param: Tensor, grad: Tensor, buffer: Tensor | None) -> bool:
    """Whether torch's fused SGD can take this tensor on the default path:
    a device and dtype this torch has it for, plain tensors (a DTensor has no
    fused SGD), one dense layout for weight, gradient and buffer."""
    device = param.device.type
    if device == 'cpu':
        available = torch_fused_sgd_on_cpu(param.dtype)
    else:
        available = device == 'cuda' and torch_has_fused_sgd()
    if not (available and type(param) in _PLAIN_TYPES and param.is_floating_point()):
        return False
    formats = [torch.contiguous_format]
    formats += {4: [torch.channels_last], 5: [torch.channels_last_3d]}.get(param.dim(), [])
    if not any(param.is_contiguous(memory_format=f) for f in formats):
        return False
    return _same_layout(grad, param) and (buffer is None or _same_layout(buffer, param))


#: Tensor types torch's fused SGD is chosen for (no subclasses).
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


class _Kernel(NamedTuple):
    """Which call updates a tensor (the key :func:`sgd_gc` sorts tensors by)."""

    mmgc: bool = False  # mmgc's CPU kernel; the rest: torch.optim.sgd.sgd
    centralized: bool = False  # torch: the generic path (P restored by unit means)
    foreach: bool | None = None
    fused: bool | None = None
    first_step: bool = False  # torch fused: lists where all or none have a buffer
