"""Which weights get Gradient Centralization, decided by the owning module's type.

``conv``: every convolution: ``torch.nn`` ``Conv{1,2,3}d`` and
``ConvTranspose{1,2,3}d`` and their subclasses (lazy variants, MMCV's
``ConvWS2d``, ``ConvAWS2d``, ``MaskedConv2d``, ...), and MMCV's
``DeformConv2d`` / ``ModulatedDeformConv2d`` (and ``*Pack``) when MMCV's ops
are built. ``fc``: ``nn.Linear`` and its subclasses, and the input projections
of ``nn.MultiheadAttention`` (``in_proj_weight``, or ``q_proj_weight`` /
``k_proj_weight`` / ``v_proj_weight``: fully-connected weights of shape
``(out, in)`` that the module keeps as bare parameters; its ``out_proj`` is an
``nn.Linear``).

Only these weights are selected (never a bias, a norm's parameters or any
other tensor). Their output-unit dim is 0, except for transposed
convolutions, which store ``(in, out / groups, *kernel)``: there output units
run along dim 1. (The authors' code uses dim 0 for every weight,
which for a transposed convolution averages per *input* channel and breaks
Eq. 3.)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import NamedTuple

from mmengine.logging import print_log
from torch import nn

from ...errors import ConfigError

__all__ = [
    'GC_LAYER_KINDS',
    'GCTarget',
    'gc_targets',
    'gc_target_of',
    'parse_gc_layers',
    'select_gc_weights',
]

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
        raise ConfigError(
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


#: Bare fully-connected weights of ``nn.MultiheadAttention`` (``(out, in)``).
_ATTENTION_PROJECTIONS = ('in_proj_weight', 'q_proj_weight', 'k_proj_weight', 'v_proj_weight')


def _module_targets(module: nn.Module) -> dict[str, GCTarget]:
    """``{parameter name: GCTarget}`` for the selectable weights that
    ``module`` itself holds (not its children's)."""
    if isinstance(module, nn.MultiheadAttention):
        own = dict(module.named_parameters(recurse=False))
        return {n: GCTarget('fc', 0) for n in _ATTENTION_PROJECTIONS if own.get(n) is not None}
    target = gc_target_of(module)
    if target is None or not isinstance(getattr(module, 'weight', None), nn.Parameter):
        return {}
    return {'weight': target}


def gc_targets(
    model: nn.Module,
) -> tuple[dict[int, tuple[str, GCTarget]], dict[int, tuple[str, int]]]:
    """Every weight of ``model`` that has a GC target, of every layer kind
    (what a weight forced into GC, by ``custom_keys``, is centralized on),
    and the weights of grouped transposed convolutions, which have none.

    Returns:
        tuple[dict, dict]: ``id(weight) -> (name, target)``, and
        ``id(weight) -> (name, groups)`` for the grouped transposed
        convolutions (a shared weight counts once, under its first name).
    """
    targets: dict[int, tuple[str, GCTarget]] = {}
    no_axis: dict[int, tuple[str, int]] = {}
    for prefix, module in model.named_modules():
        if is_grouped_transposed_conv(module):
            if isinstance(getattr(module, 'weight', None), nn.Parameter):
                name = f'{prefix}.weight' if prefix else 'weight'
                no_axis.setdefault(id(module.weight), (name, module.groups))
            continue
        for name, target in _module_targets(module).items():
            weight = getattr(module, name)
            targets.setdefault(id(weight), (f'{prefix}.{name}' if prefix else name, target))
    return targets, no_axis


def select_gc_weights(
    model: nn.Module, gc_layers: Iterable[str]
) -> dict[int, tuple[str, GCTarget]]:
    """The weights of ``model`` that ``gc_layers`` selects, by module type.

    Args:
        model (nn.Module): The model (a shared weight counts once, under the
            first name ``named_modules`` gives it).
        gc_layers (Iterable[str]): A non-empty subset of :data:`GC_LAYER_KINDS`.

    Returns:
        dict[int, tuple[str, GCTarget]]: ``id(weight) -> (name, target)``.

    Raises:
        ValueError: If ``gc_layers`` is invalid (see :func:`parse_gc_layers`).
    """
    kinds = parse_gc_layers(gc_layers)
    targets, no_axis = gc_targets(model)
    if 'conv' in kinds:
        for name, groups in no_axis.values():
            print_log(
                f'{name} (grouped transposed conv, groups={groups}) is not '
                f'centralized: its output units do not lie along one dim',
                logger='current',
                level=logging.WARNING,
            )
    return {key: value for key, value in targets.items() if value[1].kind in kinds}
