r"""Independent reference for GC + SGD, written from the paper's equations.

Everything runs in float64 with an explicit projection matrix
:math:`\mathbf{P} = \mathbf{I} - \mathbf{e}\mathbf{e}^T`, :math:`\mathbf{e} =
\mathbf{1}/\sqrt{M}` (Eq. 2), applied to each output unit's weight vector, and
a per-tensor loop of torch's SGD convention (FIELD-NOTES section 1). It shares
no code with mmgc.
"""

from __future__ import annotations

import torch


def project(grad: torch.Tensor, out_dim: int | None) -> torch.Tensor:
    """``P`` applied to each output unit's vector (rows of the unfolded W)."""
    if out_dim is None or grad.dim() <= 1 or grad.numel() == 0:
        return grad.clone()
    moved = grad.movedim(out_dim, 0)
    rows = moved.reshape(moved.shape[0], -1).to(torch.float64)
    m = rows.shape[1]
    e = torch.full((m, 1), 1.0 / m**0.5, dtype=torch.float64)
    proj = torch.eye(m, dtype=torch.float64) - e @ e.T
    projected = rows @ proj  # P is symmetric: row_i P == (P w_i)^T
    return projected.reshape(moved.shape).movedim(0, out_dim).to(grad.dtype)


class _Reference:
    """What every reference holds: float64 copies of the weights, each
    tensor's output dim for ``P`` (None: no GC), and the hyperparameters."""

    def __init__(self, weights, out_dims, **hyper) -> None:
        self.weights = [w.detach().clone().to(torch.float64) for w in weights]
        self.out_dims = list(out_dims)
        vars(self).update(hyper)


def _arguments(scope: dict) -> dict:
    """A subclass's ``__init__`` arguments, from its ``locals()``."""
    return {k: v for k, v in scope.items() if k not in ('self', '__class__')}


class ReferenceSGDGC(_Reference):
    """Per-tensor loop: ``g_hat = P(±g + wd w)``, then torch-SGD momentum."""

    def __init__(
        self,
        weights,
        out_dims,
        *,
        lr,
        momentum=0.0,
        dampening=0.0,
        weight_decay=0.0,
        nesterov=False,
        maximize=False,
    ):
        super().__init__(**_arguments(locals()))
        self.buffers = [None] * len(self.weights)

    def _momentum(self, i: int, d: torch.Tensor) -> torch.Tensor:
        """torch-SGD momentum on ``d`` (the first step's buffer is ``d``)."""
        if self.momentum == 0:
            return d
        if self.buffers[i] is None:
            self.buffers[i] = d.clone()
        else:
            self.buffers[i] = self.momentum * self.buffers[i] + (1 - self.dampening) * d
        return d + self.momentum * self.buffers[i] if self.nesterov else self.buffers[i]

    def step(self, grads) -> None:
        for i, (w, g) in enumerate(zip(self.weights, grads)):
            if g is None:  # no gradient: the tensor is skipped, as torch does
                continue
            g = g.detach().to(torch.float64)
            if self.maximize:
                g = -g
            self.weights[i] = w - self.lr * self._momentum(
                i, project(g + self.weight_decay * w, self.out_dims[i])
            )


class ReferenceAdamGC(_Reference):
    """The paper's Algorithm 2 (Adam with GC) in torch's conventions: bias
    correction, ``eps`` outside the square root; ``decoupled`` gives AdamW
    (decay on the weight, outside the projection); otherwise the L2 decay is
    projected with the gradient, ``g_hat = P(g + wd w)``."""

    def __init__(
        self,
        weights,
        out_dims,
        *,
        lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        decoupled=False,
        maximize=False,
    ):
        super().__init__(**_arguments(locals()))
        self.m = [torch.zeros_like(w) for w in self.weights]
        self.v = [torch.zeros_like(w) for w in self.weights]
        self.t = 0

    def step(self, grads) -> None:
        self.t += 1
        b1, b2 = self.betas
        for i, (w, g) in enumerate(zip(self.weights, grads)):
            g = g.detach().to(torch.float64)
            if self.maximize:
                g = -g
            if self.decoupled:
                w = w * (1 - self.lr * self.weight_decay)
                g_hat = project(g, self.out_dims[i])
            else:
                g_hat = project(g + self.weight_decay * w, self.out_dims[i])
            self.m[i] = b1 * self.m[i] + (1 - b1) * g_hat
            self.v[i] = b2 * self.v[i] + (1 - b2) * g_hat * g_hat
            m_hat = self.m[i] / (1 - b1**self.t)
            v_hat = self.v[i] / (1 - b2**self.t)
            self.weights[i] = w - self.lr * m_hat / (v_hat.sqrt() + self.eps)


class ReferenceAdagradGC(_Reference):
    """Adagrad (torch's form, no lr decay) on ``g_hat = P(g + wd w)``."""

    def __init__(self, weights, out_dims, *, lr, eps=1e-10, weight_decay=0.0):
        super().__init__(**_arguments(locals()))
        self.sums = [torch.zeros_like(w) for w in self.weights]

    def step(self, grads) -> None:
        for i, (w, g) in enumerate(zip(self.weights, grads)):
            g_hat = project(g.detach().to(torch.float64) + self.weight_decay * w, self.out_dims[i])
            self.sums[i] = self.sums[i] + g_hat * g_hat
            self.weights[i] = w - self.lr * g_hat / (self.sums[i].sqrt() + self.eps)


class ReferenceRMSpropGC(_Reference):
    """RMSprop (torch's form, not centered, no momentum) on ``P(g + wd w)``."""

    def __init__(self, weights, out_dims, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0):
        super().__init__(**_arguments(locals()))
        self.sq = [torch.zeros_like(w) for w in self.weights]

    def step(self, grads) -> None:
        for i, (w, g) in enumerate(zip(self.weights, grads)):
            g_hat = project(g.detach().to(torch.float64) + self.weight_decay * w, self.out_dims[i])
            self.sq[i] = self.alpha * self.sq[i] + (1 - self.alpha) * g_hat * g_hat
            self.weights[i] = w - self.lr * g_hat / (self.sq[i].sqrt() + self.eps)


class ReferenceGCOnUpdate:
    """The authors' GC on the update (``Adam_GC2`` / ``Adam_GCC2`` /
    ``AdamW_GCC2``): the wrapped reference steps on the raw gradient (its
    ``out_dims`` must be None: no GC inside), then each weight's whole update
    :math:`\\Delta = \\mathbf{w}_{t-1} - \\mathbf{w}_t` (decoupled decay
    included, as ``AdamW_GCC2`` puts ``wd * w`` inside its centralized
    ``delta``) is projected: :math:`\\mathbf{w}_t = \\mathbf{w}_{t-1} -
    \\mathbf{P}\\Delta`, with the explicit ``P`` of :func:`project`."""

    def __init__(self, plain, out_dims):
        self.plain = plain
        self.out_dims = list(out_dims)

    @property
    def weights(self):
        return self.plain.weights

    def step(self, grads) -> None:
        before = [w.clone() for w in self.plain.weights]
        self.plain.step(grads)
        for i, (old, out_dim) in enumerate(zip(before, self.out_dims)):
            delta = old - self.plain.weights[i]
            self.plain.weights[i] = old - project(delta, out_dim)


class ReferenceSGDWGC(ReferenceSGDGC):
    """The authors' ``SGDW_GC`` (their CIFAR-100 ``algorithm/SGD.py``), in
    float64: ``d = P(±g)`` (no decay in the gradient), torch-SGD momentum on
    ``d`` (first step ``b = d``), then ``w <- w - lr * d - lr * wd * w_old``
    with ``w_old`` the weight before the step (applied to every tensor,
    centralized or not). ``maximize`` negates the gradient first, as torch
    does; the authors' code has no such option. Takes what
    :class:`ReferenceSGDGC` takes."""

    def step(self, grads) -> None:
        for i, (w, g) in enumerate(zip(self.weights, grads)):
            if g is None:
                continue
            d = g.detach().to(torch.float64)
            d = self._momentum(i, project(-d if self.maximize else d, self.out_dims[i]))
            self.weights[i] = w - self.lr * d - self.weight_decay * self.lr * w


def centralized_direction(grad, weight, out_dim, *, weight_decay=0.0, maximize=False):
    """``P(±g + wd w)`` formed in float64 with :func:`project`, returned in
    float64 (round it to the dtype under test once, as a step in that dtype
    would see it)."""
    g = grad.detach().to(torch.float64)
    d = (-g if maximize else g) + weight_decay * weight.detach().to(torch.float64)
    return project(d, out_dim)


def unit_mean_ratio(tensor, out_dim):
    """Worst per-unit ``|mean|`` of ``tensor`` over its RMS, in float64 (0 for
    a centralized tensor, up to rounding)."""
    t = tensor.detach().to(torch.float64).movedim(out_dim, 0)
    rows = t.reshape(t.shape[0], -1)
    rms = rows.square().mean().sqrt()
    return float(rows.mean(1).abs().max() / rms)
