r"""The Gradient Centralization operator (Yong et al., ECCV 2020, Sec. 3.3).

For a weight whose output units are indexed by one axis (``out_dim``), the
weight vector :math:`\mathbf{w}_i \in \mathbb{R}^M` of output unit :math:`i`
collects all of that unit's inputs and kernel positions. GC removes the mean
of the gradient over each such vector (Eq. 1):

.. math::
    \Phi_{GC}(\nabla_{\mathbf{w}_i}\mathcal{L}) = \nabla_{\mathbf{w}_i}\mathcal{L}
        - \frac{1}{M}\sum_{j=1}^{M}\nabla_{w_{i,j}}\mathcal{L},

which is the projection :math:`\mathbf{P} = \mathbf{I} - \mathbf{e}\mathbf{e}^T`,
:math:`\mathbf{e} = \mathbf{1}/\sqrt{M}` (Eq. 2); the update that uses it is
in :class:`~mmgc.SGDGC`'s docstring. Tensors with ``ndim <= 1`` (biases, norm
parameters) have no input axis and are never centralized.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from .._compat import foreach_add_, foreach_neg_
from ..errors import ConfigError

__all__ = ['centralize', 'centralize_', 'gc_direction_means', 'gc_update_directions', 'reduce_dims']


@functools.lru_cache(maxsize=256)
def reduce_dims(ndim: int, out_dim: int) -> tuple[int, ...]:
    """Dims that span one output unit's weight vector: all but ``out_dim``
    (remembered per pair: a step asks it for every centralized tensor).

    Args:
        ndim (int): Number of dims of the weight (must be > 1).
        out_dim (int): The dim that indexes output units (negative: from the end).

    Raises:
        ValueError: If ``out_dim`` is not a valid dim for an ``ndim``-D tensor.
    """
    if not -ndim <= out_dim < ndim:
        raise ConfigError(
            f'gc_dim={out_dim} is out of range for a {ndim}-D weight; '
            f'valid values are {-ndim}..{ndim - 1}'
        )
    out_dim %= ndim
    return tuple(d for d in range(ndim) if d != out_dim)


def centralize_(tensor: Tensor, out_dim: int = 0) -> Tensor:
    """``tensor -= tensor.mean(all dims but out_dim)``, in place; returns it.

    A no-op for ``ndim <= 1`` and empty tensors; ``M = 1`` gives zeros.
    """
    if tensor.ndim <= 1 or tensor.numel() == 0:
        return tensor
    dims = reduce_dims(tensor.ndim, out_dim)
    return tensor.sub_(tensor.mean(dim=dims, keepdim=True))


def centralize(tensor: Tensor, out_dim: int = 0) -> Tensor:
    """Out-of-place :func:`centralize_`: ``P tensor`` as a new tensor."""
    if tensor.ndim <= 1 or tensor.numel() == 0:
        return tensor.clone()
    dims = reduce_dims(tensor.ndim, out_dim)
    return tensor - tensor.mean(dim=dims, keepdim=True)


#: Dtypes whose directions are formed in float32 and rounded once.
_WIDENED = (torch.float16, torch.bfloat16)


def gc_update_directions(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    out_dims: Sequence[int],
    *,
    weight_decay: float | Tensor,
    maximize: bool,
) -> list[Tensor]:
    r"""New tensors :math:`\mathbf{P}(\pm\mathbf{g} + \lambda\mathbf{w})`, ``-``
    when ``maximize`` (as ``torch.optim.SGD`` negates before adding decay).

    For float16/bfloat16 gradients the direction is formed in float32 and
    rounded once to the gradient's dtype: in half precision the gradient's
    mean can be far larger than what :math:`\mathbf{P}` leaves, and the sum
    and the subtraction would each round at the mean's scale.

    Args:
        params (Sequence[Tensor]): The weights :math:`\mathbf{w}`.
        grads (Sequence[Tensor]): Their gradients :math:`\mathbf{g}`.
        out_dims (Sequence[int]): The output-unit dim of each weight.
        weight_decay (float | Tensor): L2 decay :math:`\lambda`.
        maximize (bool): Ascend instead of descend.

    Returns:
        list[Tensor]: One new tensor per weight, in its gradient's dtype.
    """
    directions = []
    decayed = isinstance(weight_decay, Tensor) or weight_decay != 0
    for param, grad, out_dim in zip(params, grads, out_dims):
        dtype = grad.dtype
        if dtype in _WIDENED:
            grad, param = grad.float(), param.float()
        if not decayed:
            direction = torch.neg(grad) if maximize else grad.clone()
        elif isinstance(weight_decay, Tensor):
            direction = torch.add(torch.neg(grad) if maximize else grad, param * weight_decay)
        elif maximize:  # -g + wd * w
            direction = torch.add(grad, param, alpha=-weight_decay).neg_()
        else:
            direction = torch.add(grad, param, alpha=weight_decay)
        directions.append(centralize_(direction, out_dim).to(dtype))
    return directions


def gc_direction_means(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    out_dims: Sequence[int],
    *,
    weight_decay: float | Tensor,
    maximize: bool,
) -> list[Tensor]:
    r"""Per-output-unit means :math:`\mathbf{a} = \mathrm{mean}_i(\pm\mathbf{g}
    + \lambda\mathbf{w})`, the part that :math:`\mathbf{P}` removes:
    :math:`\mathbf{P}(\pm\mathbf{g} + \lambda\mathbf{w}) = \pm\mathbf{g} +
    \lambda\mathbf{w} - \mathbf{a}` (broadcast over each unit's elements).

    Two reductions per tensor and no full-size temporary: each result has the
    weight's shape with every dim but ``out_dim`` of size 1. An empty tensor
    gives zeros.

    Args:
        params (Sequence[Tensor]): The weights :math:`\mathbf{w}` (``ndim > 1``).
        grads (Sequence[Tensor]): Their gradients :math:`\mathbf{g}`.
        out_dims (Sequence[int]): The output-unit dim of each weight.
        weight_decay (float | Tensor): L2 decay :math:`\lambda` (0: the
            weights are not read).
        maximize (bool): ``-g`` instead of ``g``.

    Returns:
        list[Tensor]: One small tensor per weight, in the gradient's dtype.
    """
    decayed = isinstance(weight_decay, Tensor) or weight_decay != 0
    means, param_means = [], []
    for param, grad, out_dim in zip(params, grads, out_dims):
        dims = reduce_dims(grad.ndim, out_dim)
        if grad.numel() == 0:
            shape = [1 if d in dims else n for d, n in enumerate(grad.shape)]
            means.append(grad.new_zeros(shape))
            param_means.append(grad.new_zeros(shape))
            continue
        means.append(grad.mean(dim=dims, keepdim=True))
        if decayed:  # (detach only where autograd would see it: one op less a tensor)
            tracked = param.requires_grad and torch.is_grad_enabled()
            param_means.append((param.detach() if tracked else param).mean(dim=dims, keepdim=True))
    if maximize:
        foreach_neg_(means)
    if decayed and isinstance(weight_decay, Tensor):
        for mean, param_mean in zip(means, param_means):
            mean.add_(param_mean.mul_(weight_decay))
    elif decayed:
        foreach_add_(means, param_means, alpha=weight_decay)
    return means
