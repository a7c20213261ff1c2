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
from torch.optim.sgd import sgd as torch_sgd

from ...ops import gc_update_directions, reduce_dims
from ...ops.cpu_kernel import cpu_kernel_supports, fused_sgd_gc_cpu_, load_cpu_kernel

__all__ = ['SGDGC', 'sgd_gc', 'GC_GROUP_DEFAULTS', 'torch_has_fused_sgd', 'torch_fused_sgd_on_cpu']

#: Per-parameter-group options that SGDGC adds to ``torch.optim.SGD``'s
#: (see :class:`SGDGC`).
GC_GROUP_DEFAULTS: dict[str, Any] = {'gc': True, 'gc_dim': 0}
#: The group options :meth:`SGDGC.step` hands to :func:`sgd_gc`.
_STEP_OPTIONS = ('lr', 'dampening', 'weight_decay', 'nesterov', 'maximize', 'foreach', 'fused')


def torch_has_fused_sgd() -> bool:
    """Whether ``torch.optim.sgd.sgd`` takes ``fused`` (torch 2.1's does not)."""
    return 'fused' in inspect.signature(torch_sgd).parameters


@functools.cache
def torch_fused_sgd_on_cpu() -> bool:
    """Whether this torch's fused SGD runs on CPU tensors (tried once on a
    one-element tensor: the first fused SGDs were CUDA-only)."""
    if not torch_has_fused_sgd():
        return False
    param = torch.zeros(1)
    zero = dict(weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False, maximize=False)
    try:
        torch_sgd([param], [torch.ones(1)], [None], lr=1.0, fused=True, **zero)
    except RuntimeError:
        return False
    return bool(param.item() == -1.0)


def _check_fused_supported(params: Iterable[Tensor]) -> None:
    """Raise, in one sentence, where ``fused=True`` cannot run here."""
    if not torch_has_fused_sgd():
        raise ValueError(
            f'fused=True needs a torch with a fused SGD kernel; torch '
            f'{torch.__version__} has none: use the default (fused=None) or '
            f'foreach=True/False'
        )
    if any(p.device.type == 'cpu' for p in params) and not torch_fused_sgd_on_cpu():
        raise ValueError(
            f'fused=True on CPU tensors needs a torch whose fused SGD runs on the '
            f'CPU; torch {torch.__version__} has it for GPUs only: use the '
            f'default (fused=None) or foreach=True/False'
        )


def _check_gc_options(group: dict) -> None:
    """Raise ``TypeError`` if a group's (or ``custom_keys`` entry's) ``gc`` /
    ``gc_dim`` has the wrong type."""
    gc = group.get('gc', GC_GROUP_DEFAULTS['gc'])
    if not isinstance(gc, bool):
        raise TypeError(f'param group option gc must be True or False; got {gc!r}')
    gc_dim = group.get('gc_dim', GC_GROUP_DEFAULTS['gc_dim'])
    if isinstance(gc_dim, bool) or not isinstance(gc_dim, int):
        raise TypeError(
            f'param group option gc_dim must be an int (the output-unit dim, '
            f'0 for Conv/Linear, 1 for ConvTranspose); got {gc_dim!r}'
        )


@OPTIMIZERS.register_module(name=['SGDGC', 'SGD_GC'])
class SGDGC(Optimizer):
    r"""SGD with momentum and Gradient Centralization (Yong et al., ECCV 2020).

    Takes exactly ``torch.optim.SGD``'s arguments, with the same defaults;
    with GC switched off in every group it *is* ``torch.optim.SGD``. For each
    parameter :math:`\theta` of a group with ``gc=True`` and
    :math:`\theta.\mathrm{ndim} > 1` (conv and fully-connected weights), the
    gradient entering the momentum is centralized per output unit:

    .. math::
        \begin{aligned}
            &g_t \leftarrow \pm\nabla_\theta f_t(\theta_{t-1})
                \quad (- \text{ if maximize}) \\
            &\hat g_t \leftarrow \mathbf{P}\,(g_t + \lambda\theta_{t-1}),
                \qquad \mathbf{P} = \mathbf{I} - \mathbf{e}\mathbf{e}^T
                \text{ per output unit (paper, Eq. 2 and Sec. 3.4)} \\
            &\textbf{if } \mu \neq 0: \;
                \mathbf{b}_t \leftarrow
                \begin{cases} \hat g_t & t = 1 \\
                \mu\mathbf{b}_{t-1} + (1-\tau)\hat g_t & t > 1 \end{cases},
                \quad \hat g_t \leftarrow
                \begin{cases} \hat g_t + \mu\mathbf{b}_t & \text{nesterov} \\
                \mathbf{b}_t & \text{otherwise} \end{cases} \\
            &\theta_t \leftarrow \theta_{t-1} - \gamma\,\hat g_t
        \end{aligned}

    Other tensors (biases, norm parameters, groups with ``gc=False``) follow
    ``torch.optim.SGD``. Because decay is projected too, each output unit's
    weight sum :math:`\mathbf{e}^T\theta` keeps its initial value (Eq. 3).
    The momentum follows torch's convention, not the :math:`(1-\beta)` form
    of the paper's Algorithm 1, as the authors' code and MMDetection's
    learning-rate schedules do.

    Per-group options (in ``param_groups``, hence in ``state_dict()``), set
    per tensor by :class:`~mmgc.GCOptimWrapperConstructor`:

    - ``gc`` (bool): centralize this group's ``ndim > 1`` tensors. Defaults
      to True: without a constructor SGDGC is the authors' ``SGD_GC``.
    - ``gc_dim`` (int): the dim that indexes output units. Defaults to 0
      (``Conv*d``, ``Linear``); ``ConvTranspose*d`` weights need 1.

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
            None (see ``foreach``).

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
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError(f'Tensor lr must have one element; got shape {tuple(lr.shape)}')
        if lr < 0.0:
            raise ValueError(f'Invalid learning rate: {lr} (must be >= 0)')
        if momentum < 0.0:
            raise ValueError(f'Invalid momentum value: {momentum} (must be >= 0)')
        if weight_decay < 0.0:
            raise ValueError(f'Invalid weight_decay value: {weight_decay} (must be >= 0)')
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                'Nesterov momentum requires a momentum > 0 and zero dampening; '
                f'got momentum={momentum}, dampening={dampening}'
            )
        if fused and differentiable:
            raise ValueError('fused=True does not support differentiable=True')
        if fused and foreach:
            raise ValueError('fused=True and foreach=True cannot be set together')
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        defaults.update(nesterov=nesterov, maximize=maximize, foreach=foreach)
        defaults.update(differentiable=differentiable, fused=fused, **GC_GROUP_DEFAULTS)
        super().__init__(params, defaults)
        if fused:
            _check_fused_supported(p for group in self.param_groups for p in group['params'])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, checking its ``gc`` / ``gc_dim`` options first.

        Raises:
            TypeError: If ``gc`` / ``gc_dim`` have the wrong type.
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
                raise ValueError(
                    f'a parameter group lists the same tensor (shape '
                    f'{tuple(twice[0].shape)}) more than once; list each tensor once'
                )
            param_group = {**param_group, 'params': params}
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        defaults = dict(nesterov=False, maximize=False, foreach=None, differentiable=False)
        for group in self.param_groups:
            for key, value in {**defaults, 'fused': False, **GC_GROUP_DEFAULTS}.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an ``SGDGC`` state dict.

        Raises:
            ValueError: If a group has no GC options (a ``torch.optim.SGD``
                state, whose groups torch would give ``gc=True, gc_dim=0``).
        """
        missing = [i for i, g in enumerate(state_dict['param_groups']) if 'gc' not in g]
        if missing:
            raise ValueError(
                f'the state dict has no GC options in its parameter groups {missing}, so '
                f'it is not an SGDGC state (a torch.optim.SGD one?); resume a baseline '
                f'run with tools/train.py --resume, which maps it onto the GC groups by '
                f'parameter (mmgc.runtime.optimizer_state)'
            )
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
) -> None:
    r"""Functional :class:`SGDGC` step over lists of tensors (the rule is in
    :class:`SGDGC`'s docstring).

    ``gc_dims[i]`` is the output-unit dim of ``params[i]``, or None to leave
    it uncentralized. ``momentum_buffers`` is updated in place (new buffers
    on the first step). The tensors are sorted once by kernel:

    - default (``foreach`` and ``fused`` both None), dense contiguous
      float32/float64 CPU tensors: centralized ones go to mmgc's CPU kernel,
      the others to torch's fused SGD where it runs on the CPU, else to
      mmgc's kernel too;
    - everything else: ``torch.optim.sgd.sgd`` on the centralized
      directions :math:`\mathbf{P}(\pm g + \lambda\theta)` (new tensors), with
      decay and sign already applied, since :math:`\mathbf{P}` is linear.

    Raises:
        ValueError: If a ``gc_dim`` is out of range, before any tensor moves.
    """
    default = foreach is None and fused is None
    default = default and not any(
        isinstance(value, Tensor) and value.device.type != 'cpu' for value in (lr, weight_decay)
    )
    autograd = torch.is_grad_enabled()
    kernels: dict[_Kernel, list[int]] = {}  # tensor indices by the call that updates them
    for i, (param, grad, dim) in enumerate(zip(params, grads, gc_dims)):
        centralized = dim is not None and param.dim() > 1
        if centralized:
            reduce_dims(param.dim(), dim)  # raises before any tensor moves
        kernel = _Kernel(mmgc=False, foreach=foreach, fused=fused)
        if default and cpu_kernel_supports(param, grad, momentum_buffers[i], autograd):
            if not centralized and torch_fused_sgd_on_cpu():
                kernel = _Kernel(mmgc=False, fused=True)
            elif load_cpu_kernel() is not None:
                kernel = _Kernel(mmgc=True)
        if kernel.fused:
            kernel = kernel._replace(first_step=momentum_buffers[i] is None)
        if centralized and not kernel.mmgc:
            kernel = kernel._replace(centralized=True)
        kernels.setdefault(kernel, []).append(i)
    hyper = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov)
    for kernel, indices in kernels.items():
        sub_params, sub_grads = [params[i] for i in indices], [grads[i] for i in indices]
        sub_buffers = [momentum_buffers[i] for i in indices]
        sub_dims = [gc_dims[i] for i in indices]
        decay = dict(weight_decay=weight_decay, maximize=maximize)
        if kernel.mmgc:
            fused_sgd_gc_cpu_(sub_params, sub_grads, sub_buffers, sub_dims, **decay, **hyper)
        else:
            if kernel.centralized:  # decay and sign go into the directions
                sub_grads = gc_update_directions(sub_params, sub_grads, sub_dims, **decay)
                decay = dict(weight_decay=0.0, maximize=False)
            sparse = any(g.is_sparse for g in sub_grads)
            options = dict(foreach=kernel.foreach, has_sparse_grad=sparse)
            if kernel.fused:  # only set where torch has it (SGDGC checks fused=True)
                options['fused'] = True
            torch_sgd(sub_params, sub_grads, sub_buffers, **options, **decay, **hyper)
        for i, buffer in zip(indices, sub_buffers):
            momentum_buffers[i] = buffer


class _Kernel(NamedTuple):
    """Which call updates a tensor (the key :func:`sgd_gc` sorts tensors by)."""

    mmgc: bool  # mmgc's CPU kernel; the rest: torch.optim.sgd.sgd
    centralized: bool = False  # torch: the gradient is replaced by P(+-g + wd w)
    foreach: bool | None = None
    fused: bool | None = None
    first_step: bool = False  # torch fused: lists where all or none have a buffer
