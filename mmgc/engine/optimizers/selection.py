"""Which weights get Gradient Centralization, decided by the owning module's type.

``conv``: every convolution: ``torch.nn`` ``Conv{1,2,3}d`` and
``ConvTranspose{1,2,3}d`` and their subclasses (lazy variants, MMCV's
``ConvWS2d``, ``ConvAWS2d``, ``MaskedConv2d``, ...), and MMCV's
``DeformConv2d`` / ``ModulatedDeformConv2d`` (and ``*Pack``) when MMCV's ops
are built. ``fc``: ``nn.Linear`` and its subclasses.

Only a module's ``weight`` is selected. Its output-unit dim is 0, except for
transposed convolutions, which store ``(in, out / groups, *kernel)``: there
output units run along dim 1. (The authors' code uses dim 0 for every weight,
which for a transposed convolution averages per *input* channel and breaks
Eq. 3.)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

from torch import nn

__all__ = ['GC_LAYER_KINDS', 'GCTarget', 'parse_gc_layers', 'gc_target_of']

#: The layer kinds a user can select with ``paramwise_cfg.gc_layers``.
GC_LAYER_KINDS: tuple[str, ...] = ('conv', 'fc')

_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class GCTarget(NamedTuple):
    """A weight that can be centralized: its layer kind and output-unit dim."""

    kind: str
    out_dim: int


@functools.lru_cache(maxsize=1)
def _conv_types() -> tuple[type, ...]:
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *_TRANSPOSED_CONVS)
    try:  # MMCV's compiled ops; absent in an MMCV built without ops
        from mmcv.ops import DeformConv2d, ModulatedDeformConv2d
    except ImportError:
        return convs
    return (*convs, DeformConv2d, ModulatedDeformConv2d)


def parse_gc_layers(gc_layers: str | Iterable[str]) -> tuple[str, ...]:
    """Normalize ``gc_layers`` (``'conv'``, ``'fc'`` or a non-empty tuple/list
    of them) to a tuple in canonical order.

    Raises:
        ValueError: If it is empty or names an unknown kind.
    """
    kinds = (gc_layers,) if isinstance(gc_layers, str) else gc_layers
    try:
        kinds = tuple(kinds)
    except TypeError:
        kinds = ()
    if not kinds or any(not isinstance(k, str) or k not in GC_LAYER_KINDS for k in kinds):
        raise ValueError(
            f'gc_layers must be a non-empty subset of {GC_LAYER_KINDS}; got {gc_layers!r}'
        )
    return tuple(k for k in GC_LAYER_KINDS if k in kinds)


def gc_target_of(module: nn.Module) -> GCTarget | None:
    """The GC target of ``module.weight``, or None if it has none (as a
    grouped transposed convolution: its output units are not one dim)."""
    if isinstance(module, nn.Linear):
        return GCTarget('fc', 0)
    if isinstance(module, _conv_types()):
        if isinstance(module, _TRANSPOSED_CONVS):
            return GCTarget('conv', 1) if module.groups == 1 else None
        return GCTarget('conv', 0)
    return None


def is_grouped_transposed_conv(module: nn.Module) -> bool:
    """True for a ``ConvTranspose*d`` with ``groups > 1`` (no GC target)."""
    return isinstance(module, _TRANSPOSED_CONVS) and module.groups > 1
