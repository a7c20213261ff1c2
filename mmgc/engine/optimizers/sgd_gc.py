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

from ..._compat import (
    default_foreach,
    foreach_add,
    foreach_add_,
    foreach_mul,
    foreach_mul_,
    foreach_neg,
)
from ...errors import ConfigError, ConfigTypeError
from ...ops import gc_direction_means, gc_update_directions, reduce_dims
from ...ops.cpu_kernel import SGDHyper, cpu_kernel_supports, fused_sgd_gc_cpu_, load_cpu_kernel
from .capability import GC_GROUP_DEFAULTS, GCInStep
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


@functools.cache
def torch_has_fused_sgd() -> bool:
    """Whether ``torch.optim.sgd.sgd`` takes ``fused`` (torch 2.1's does not);
    read once per process (``inspect.signature`` costs tens of µs a call)."""
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


def _check_hyper(
    lr: Any,
    momentum: Any,
    dampening: Any,
    weight_decay: Any,
    nesterov: Any,
    *,
    fused: Any = None,
    foreach: Any = None,
    differentiable: Any = False,
    where: str = '',
    values: bool = True,
) -> None:
    """Raise, in one sentence, on a hyperparameter ``torch.optim.SGD`` refuses
    at construction, and on Nesterov momentum without momentum or with
    dampening (SGDGC's rule has none).

    ``where`` starts the sentence (``'param group 1: '``). With
    ``values=False`` a tensor's size is checked but not its value (a step
    makes no host sync for it)."""
    named = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    for name, value in named.items():
        if isinstance(value, Tensor) and value.numel() != 1:
            raise ConfigError(
                f'{where}Tensor {name} must have one element; got shape {tuple(value.shape)}'
            )
    known = {k: v for k, v in named.items() if values or not isinstance(v, Tensor)}
    if 'lr' in known and lr < 0.0:
        raise ConfigError(f'{where}Invalid learning rate: {lr} (must be >= 0)')
    if 'momentum' in known and momentum < 0.0:
        raise ConfigError(f'{where}Invalid momentum value: {momentum} (must be >= 0)')
    if 'weight_decay' in known and weight_decay < 0.0:
        raise ConfigError(f'{where}Invalid weight_decay value: {weight_decay} (must be >= 0)')
    if nesterov and {'momentum', 'dampening'} <= known.keys():
        if momentum <= 0 or dampening != 0:
            raise ConfigError(
                f'{where}Nesterov momentum requires a momentum > 0 and zero dampening; '
                f'got momentum={momentum}, dampening={dampening}'
            )
    if fused and differentiable:
        raise ConfigError(f'{where}fused=True does not support differentiable=True')
    if fused and foreach:
        raise ConfigError(f'{where}fused=True and foreach=True cannot be set together')


def _check_group(group: dict, index: int | None, *, values: bool = True) -> None:
    """The checks :class:`SGDGC`'s constructor makes, on one parameter group
    (``index`` names it in the sentence; None: the constructor's arguments)."""
    where = '' if index is None else f'param group {index}: '
    _check_hyper(
        group['lr'],
        group['momentum'],
        group['dampening'],
        group['weight_decay'],
        group['nesterov'],
        fused=group.get('fused'),
        foreach=group.get('foreach'),
        differentiable=group.get('differentiable', False),
        where=where,
        values=values,
    )
    try:
        _check_gc_options(group)
    except ValueError as err:  # ConfigTypeError included
        raise type(err)(f'{where}{err}') from None


#: The group options whose change between steps makes SGDGC check the group again.
_CHECKED_OPTIONS = (
    'lr',
    'momentum',
    'dampening',
    'weight_decay',
    'nesterov',
    'foreach',
    'fused',
    'differentiable',
    'gc',
    'gc_dim',
    'gc_variant',
    'decoupled_weight_decay',
)


def _settings_key(group: dict) -> tuple:
    """What :data:`_CHECKED_OPTIONS` hold (a tensor by identity) and the
    group's tensor list (by identity and length)."""
    values = tuple(
        ('tensor', id(v)) if isinstance(v, Tensor) else v
        for v in (group.get(k) for k in _CHECKED_OPTIONS)
    )
    return (*values, id(group['params']), len(group['params']))


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
class SGDGC(GCInStep, Optimizer):
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

    Every parameter group is checked as the arguments are (the groups given
    here, those of :meth:`add_param_group`, and a group whose options change
    between steps, before the next step moves anything), Nesterov's rule
    included: it needs a momentum and no dampening. A one-element tensor of
    any shape may stand for ``lr``, ``momentum`` or ``weight_decay``, on any
    device, as in ``torch.optim.SGD``. float16/bfloat16 weights step on
    :math:`\mathbf{P}(\pm g + \lambda\theta)` formed in float32 and rounded
    once to their dtype (:func:`sgd_gc`).

    Args:
        params (iterable): Parameters or parameter-group dicts.
        lr (float | Tensor): Learning rate :math:`\gamma`. Defaults to 1e-3.
        momentum (float | Tensor): Momentum factor :math:`\mu`. Defaults to 0.
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
        momentum: float | Tensor = 0,
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
        _check_hyper(
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
            fused=fused,
            foreach=foreach,
            differentiable=differentiable,
        )
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
        """Add a group, checking it first as the constructor checks its
        arguments (the groups given to the constructor come through here too).
        A group whose options change later is checked again at the next step,
        before any tensor moves.

        Raises:
            TypeError: If ``gc`` / ``gc_dim`` / ``decoupled_weight_decay`` have
                the wrong type.
            ValueError: If ``lr`` / ``momentum`` / ``weight_decay`` is negative
                or a tensor of more than one element, Nesterov momentum has no
                momentum or has dampening, ``fused`` is combined with
                ``foreach`` / ``differentiable`` or cannot run here, or
                ``gc_variant`` is not one of
                :data:`~mmgc.engine.optimizers.variants.GC_VARIANTS`.
            ValueError: If the group lists the same tensor twice (torch only
                warns, then updates it twice per step).
        """
        index = len(self.param_groups)
        _check_group({**self.defaults, **param_group}, index if index else None)
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
        group = self.param_groups[-1]
        if group['fused'] and index:  # the constructor's groups: checked there, at once
            _check_fused_supported(group['params'])

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
        self._checked = {}

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

        Every check that can refuse the step (a group's options changed since
        they were last checked, a sparse gradient to centralize, a ``gc_dim``
        out of range) runs before any tensor moves.

        Args:
            closure (Callable, optional): Re-evaluates the model and returns
                the loss; the gradients it computes are the ones centralized.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        calls = [self._gather(i, group) for i, group in enumerate(self.param_groups)]
        with torch.set_grad_enabled(self.defaults['differentiable']):
            for call in calls:
                if call is None:
                    continue
                params, grads, buffers, gc_dims, options = call
                sgd_gc(params, grads, buffers, gc_dims, **options)
                if options['momentum'] != 0:
                    for p, buffer in zip(params, buffers):
                        self.state[p]['momentum_buffer'] = buffer
        return loss

    def _gather(self, index: int, group: dict[str, Any]) -> tuple | None:
        """Group ``index``'s tensors and state (torch's ``_init_group``),
        checked; None if no tensor has a gradient."""
        checked = getattr(self, '_checked', None)
        if checked is None:
            checked = self._checked = {}
        key = _settings_key(group)
        if checked.get(id(group)) != key:  # new or changed since the last check
            _check_group(group, index, values=False)
            if group['fused']:
                _check_fused_supported(group['params'])
            checked[id(group)] = key
        momentum = _as_float(group['momentum'])
        centralize, gc_dim = group['gc'], group['gc_dim']
        params, grads, gc_dims, buffers = [], [], [], []
        for p in group['params']:
            grad = p.grad
            if grad is None:
                continue
            centralized = centralize and p.ndim > 1
            if centralized:
                _check_centralizable(p, grad, gc_dim)
            params.append(p)
            grads.append(grad)
            gc_dims.append(gc_dim if centralized else None)
            buffers.append(self.state[p].get('momentum_buffer') if momentum != 0 else None)
        if not params:
            return None
        options = {key: group[key] for key in _STEP_OPTIONS}
        return params, grads, buffers, gc_dims, dict(options, momentum=momentum)


def _check_centralizable(param: Tensor, grad: Tensor, gc_dim: int) -> None:
    """Raise if ``param`` (``ndim > 1``, with GC) cannot be centralized on
    ``gc_dim``: a sparse gradient, or a dim out of range."""
    if grad.is_sparse:
        raise RuntimeError(
            f'SGDGC cannot centralize a sparse gradient (parameter of '
            f'shape {tuple(param.shape)}); set gc=False for its parameter '
            f'group, e.g. with custom_keys in paramwise_cfg'
        )
    reduce_dims(param.dim(), gc_dim)


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
    momentum: float | Tensor,
    dampening: float | Tensor,
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
    on the first step). A hyperparameter may be a one-element tensor of any
    shape, as in ``torch.optim.SGD``: ``lr`` and ``weight_decay`` are viewed
    as 0-dim tensors (a 0-dim CPU tensor mixes with tensors of any device),
    ``momentum`` and ``dampening`` read as numbers. The tensors are sorted
    once by kernel:

    - default (``foreach`` and ``fused`` both None), plain dense contiguous
      float32/float64 CPU tensors (:func:`~mmgc.ops.cpu_kernel.cpu_kernel_supports`):
      centralized ones go to mmgc's CPU kernel, the others to torch's fused
      SGD where it runs on the CPU, else to mmgc's kernel too;
    - other tensors with the default: torch's fused SGD where this torch has
      one for their device and dtype (plain tensors of one layout), else
      torch's own default; with ``foreach`` / ``fused`` set: that kernel.

    On torch's kernels a centralized float32/float64 tensor takes the
    **generic path**: torch steps on the raw direction :math:`r = \pm g +
    \lambda\theta`, and since :math:`\mathbf{P}` is linear its effect is
    restored with the per-unit means :math:`\mathbf{a} = \mathrm{mean}(r)`
    alone (:func:`~mmgc.ops.gc_direction_means`; no full-size copy). With
    torch's new buffer :math:`\mathbf{b}'` and weight :math:`\theta'`:

    .. math::
        \begin{aligned}
        &\text{existing buffer, } \mu \ge 10^{-3}:\;
            \mathbf{b}_{t-1} \mathrel{-}= \tfrac{1-\tau}{\mu}\mathbf{a}
            \text{ before the step, so } \mathbf{b}' = \mathbf{b}_t,\;
            \theta_t = \theta' + \gamma k\mathbf{a},\; k = [\text{nesterov}] \\
        &\text{existing buffer, } \mu < 10^{-3}:\;
            \mathbf{b}_t = \mathbf{b}' - (1-\tau)\mathbf{a},\;
            \theta_t = \theta' + \gamma k\mathbf{a},\;
            k = 1 + \mu(1-\tau) \text{ (nesterov) or } 1-\tau \\
        &\text{new buffer}:\; \mathbf{b}_t = \mathbf{b}' - \mathbf{a},\;
            \theta_t = \theta' + \gamma k\mathbf{a},\; k = 1 + \mu
            \text{ (nesterov) or } 1 \\
        &\mu = 0:\; \theta_t = \theta' + \gamma\mathbf{a}
        \end{aligned}

    These hold for any dampening :math:`\tau`, Nesterov's included. An
    inherited, uncentralized buffer is kept as it is, as the rule says.
    Torch's foreach Nesterov without decay adds into the gradients it is
    given; there torch steps without Nesterov and the weight gets
    :math:`-\gamma r + \gamma(1-\mu)\mathbf{b}'` (before the buffer's
    correction), which is the Nesterov step, so ``p.grad`` is left as it was
    without a copy. float16/bfloat16 tensors and steps under autograd
    (``differentiable=True``) take the **direction path** instead: the
    directions :math:`\mathbf{P}(\pm g + \lambda\theta)` are built out of
    place (for half precision in float32, rounded once to the tensor's
    dtype: shifting a half buffer by means would round twice) and torch steps
    on them without decay. With ``decoupled_weight_decay`` torch's kernels
    get every tensor scaled by :math:`1 - \gamma\lambda` first and step
    without decay; mmgc's kernel scales the weight in its one pass.

    Raises:
        ValueError: If a ``gc_dim`` is out of range or a hyperparameter tensor
            has more than one element, before any tensor moves.
        RuntimeError: If a centralized tensor has a sparse gradient, before
            any tensor moves.
    """
    lr, weight_decay = _as_scalar(lr, 'lr'), _as_scalar(weight_decay, 'weight_decay')
    momentum, dampening = _as_float(momentum), _as_float(dampening)
    default = foreach is None and fused is None
    cpu_scalars = not any(
        isinstance(value, Tensor) and value.device.type != 'cpu' for value in (lr, weight_decay)
    )
    autograd = torch.is_grad_enabled()
    cpu_fused = default and torch_fused_sgd_on_cpu()
    kernels: dict[_Kernel, list[int]] = {}  # tensor indices by the call that updates them
    for i, (param, grad, dim) in enumerate(zip(params, grads, gc_dims)):
        centralized = dim is not None and param.dim() > 1
        if centralized:
            _check_centralizable(param, grad, dim)  # raises before any tensor moves
        buffer = momentum_buffers[i]
        mmgc_kernel, kernel_foreach, kernel_fused = False, foreach, fused
        if default and not autograd:
            if (
                cpu_scalars
                and (centralized or not cpu_fused)
                and cpu_kernel_supports(param, grad, buffer, autograd)
            ):
                mmgc_kernel = load_cpu_kernel() is not None
            if mmgc_kernel:
                kernel_foreach = kernel_fused = None
            elif _fused_suits(param, grad, buffer):
                kernel_fused = True
        generic = centralized and not mmgc_kernel
        kernel = _Kernel(
            mmgc=mmgc_kernel,
            centralized=generic,
            foreach=kernel_foreach,
            fused=kernel_fused,
            first_step=bool(kernel_fused) and buffer is None,
            directions=generic and (autograd or param.dtype in _HALF_DTYPES),
        )
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
            _torch_step(sub_params, sub_grads, sub_buffers, dims, kernel, hyper)
        for i, buffer in zip(indices, sub_buffers):
            momentum_buffers[i] = buffer


#: Dtypes whose centralized tensors take the direction path (P formed in float32).
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _as_scalar(value: float | Tensor, name: str) -> float | Tensor:
    """A one-element tensor viewed as 0-dim (torch's ``_to_scalar``); numbers as they are."""
    if not isinstance(value, Tensor):
        return value
    if value.numel() != 1:
        raise ConfigError(f'Tensor {name} must have one element; got shape {tuple(value.shape)}')
    return value if value.dim() == 0 else value.reshape(())


def _as_float(value: float | Tensor) -> float:
    """A number, or a one-element tensor's value (read on the host)."""
    return float(value) if isinstance(value, Tensor) else value


#: Below this momentum an existing buffer is corrected after torch's step,
#: not before it (the shift before divides by the momentum).
_MIN_MOMENTUM_TO_SHIFT_FIRST = 1e-3


def _torch_step(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor | None],
    gc_dims: list[int] | None,
    kernel: _Kernel,
    hyper: SGDHyper,
) -> None:
    """One call of ``torch.optim.sgd.sgd`` on tensors of one kernel; with
    ``gc_dims`` (all centralized) the generic or direction path of
    :func:`sgd_gc`."""
    lr, momentum, dampening, weight_decay, nesterov, maximize, decoupled_weight_decay = hyper
    decay = 0.0 if decoupled_weight_decay else weight_decay
    foreach = kernel.foreach
    if foreach is None and not kernel.fused:  # torch's own choice, made here
        foreach = default_foreach(params)
    has_sparse_grad = any(g.is_sparse for g in grads)
    means, owned = None, kernel.directions  # owned: grads are this step's own tensors
    if gc_dims is not None and kernel.directions:  # out-of-place directions
        grads = gc_update_directions(params, grads, gc_dims, weight_decay=decay, maximize=maximize)
        decay, maximize = 0.0, False
    elif gc_dims is not None:
        if foreach and not has_sparse_grad and (maximize or _decayed(decay)) and _on_host(decay):
            # r = ±g + λθ, made as torch's foreach SGD makes it (its own temporaries):
            # then one reduction per weight, mean(r), and torch steps on r, undecayed
            grads, decay, maximize, owned = _raw_directions(params, grads, decay, maximize)
        means = gc_direction_means(params, grads, gc_dims, weight_decay=decay, maximize=maximize)
    if decoupled_weight_decay:
        _decay_decoupled(params, lr, weight_decay)
    # torch's foreach Nesterov without decay or sign adds into the gradients:
    # unless they are this step's own, step without Nesterov, then add what
    # Nesterov adds (see sgd_gc); sparse gradients (which foreach ops do not
    # take) are copied instead
    in_place = foreach and momentum != 0 and nesterov and not (_decayed(decay) or maximize)
    late_nesterov = bool(in_place and not (owned or has_sparse_grad))
    if in_place and has_sparse_grad and not owned:
        grads = [g.clone() for g in grads]
    shifts = _Shifts.plan(buffers, momentum, dampening, nesterov) if means is not None else None
    if shifts is not None:
        _shift_each(buffers, means, shifts.before, sign=-1.0)
    options = dict(foreach=foreach, has_sparse_grad=has_sparse_grad)
    if kernel.fused:  # only set where torch has it (checked at construction and load)
        options['fused'] = True
    options.update(lr=lr, momentum=momentum, dampening=dampening, weight_decay=decay)
    nesterov_now = nesterov and not late_nesterov
    torch_sgd(params, grads, buffers, **options, nesterov=nesterov_now, maximize=maximize)
    if late_nesterov:
        alpha = float(lr) if isinstance(lr, Tensor) else lr  # as torch's foreach reads it
        foreach_add_(params, grads, alpha=-alpha)
        foreach_add_(params, buffers, alpha=alpha * (1.0 - momentum))
    if shifts is not None:
        _shift_each(buffers, means, shifts.after, sign=-1.0)
        _shift_each(params, means, shifts.weight, sign=1.0, lr=lr)


def _decayed(weight_decay: float | Tensor) -> bool:
    return isinstance(weight_decay, Tensor) or weight_decay != 0


def _on_host(value: float | Tensor) -> bool:
    """A number, or a tensor whose value is read without a device sync."""
    return not isinstance(value, Tensor) or value.device.type == 'cpu'


def _raw_directions(
    params: list[Tensor], grads: list[Tensor], weight_decay: float | Tensor, maximize: bool
) -> tuple[list[Tensor], float, bool, bool]:
    r"""``(r, 0.0, False, True)``: the raw directions :math:`r = \pm g + \lambda\theta`
    as new tensors, formed as torch's foreach SGD forms them (``_foreach_neg``,
    then ``_foreach_add`` of the weights times :math:`\lambda`, a number or a
    CPU tensor), and the decay, sign and ownership torch then steps with."""
    alpha = float(weight_decay)  # a number, or a CPU tensor: read with no device sync
    if maximize:
        out = foreach_neg(grads)
        if alpha != 0:
            foreach_add_(out, params, alpha=alpha)
    else:
        out = foreach_add(grads, params, alpha=alpha)
    return out, 0.0, False, True


def _decay_decoupled(
    params: list[Tensor], lr: float | Tensor, weight_decay: float | Tensor
) -> None:
    """``theta <- (1 - lr wd) theta`` (torch's SGD then steps without decay)."""
    if not isinstance(weight_decay, Tensor) and weight_decay == 0:
        return
    shrink = 1 - lr * weight_decay
    if isinstance(shrink, Tensor):
        for param in params:
            param.mul_(shrink)
    else:
        foreach_mul_(params, shrink)


class _Shifts(NamedTuple):
    """Per tensor index, by factor: how much of its means a buffer loses
    before torch's step and after it, and how much (times lr) the weight gets
    back after it (the rule is in :func:`sgd_gc`'s docstring)."""

    before: dict[float, list[int]]
    after: dict[float, list[int]]
    weight: dict[float, list[int]]

    @classmethod
    def plan(
        cls, buffers: list[Tensor | None], momentum: float, dampening: float, nesterov: bool
    ) -> _Shifts:
        shifts = cls({}, {}, {})
        keep = 1.0 - dampening
        for i, buffer in enumerate(buffers):
            if momentum == 0:
                shifts.weight.setdefault(1.0, []).append(i)
            elif buffer is None:  # torch's new buffer is the raw direction
                shifts.after.setdefault(1.0, []).append(i)
                shifts.weight.setdefault(1.0 + momentum if nesterov else 1.0, []).append(i)
            elif momentum >= _MIN_MOMENTUM_TO_SHIFT_FIRST:
                shifts.before.setdefault(keep / momentum, []).append(i)
                if nesterov:
                    shifts.weight.setdefault(1.0, []).append(i)
            else:
                shifts.after.setdefault(keep, []).append(i)
                factor = 1.0 + momentum * keep if nesterov else keep
                shifts.weight.setdefault(factor, []).append(i)
        return shifts


def _shift_each(
    tensors: list[Tensor],
    means: list[Tensor],
    indices_by_factor: dict[float, list[int]],
    *,
    sign: float,
    lr: float | Tensor = 1.0,
) -> None:
    """``tensors[i] += sign * lr * factor * means[i]`` (broadcast), one foreach
    call per factor. A CPU tensor ``lr`` is read as a number (no sync); one on
    another device scales the means there."""
    if isinstance(lr, Tensor) and lr.device.type == 'cpu':
        lr = float(lr)
    for factor, indices in indices_by_factor.items():
        targets, shifts = [tensors[i] for i in indices], [means[i] for i in indices]
        if isinstance(lr, Tensor):
            foreach_add_(targets, foreach_mul(shifts, lr), alpha=sign * factor)
        else:
            foreach_add_(targets, shifts, alpha=sign * factor * lr)


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
    directions: bool = False  # centralized, P(±g + wd w) built (half precision, autograd)
    foreach: bool | None = None
    fused: bool | None = None
    first_step: bool = False  # torch fused: lists where all or none have a buffer
