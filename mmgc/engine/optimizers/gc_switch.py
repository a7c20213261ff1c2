"""One switch that turns Gradient Centralization on for any MMEngine / MMDetection config.

:func:`enable_gc` edits a loaded config so that its run gets GC on top of
everything the config already chose (its constructor, optimizer, optim
wrapper and ``paramwise_cfg``). The same in a config, in two lines::

    custom_imports = dict(imports=['mmgc'], allow_failed_imports=False)
    optim_wrapper = dict(
        constructor='GCOptimWrapperConstructor',
        gc=dict(constructor='DefaultOptimWrapperConstructor',  # the config's own
                layers=('conv', 'fc'), variant='grad'))

(plus ``optimizer=dict(type='SGDGC')`` where the config trains with ``SGD``).
On the command line: ``tools/train.py CONFIG --gc [--gc-layers conv fc]
[--gc-variant grad|update|sgdw]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from mmengine.registry import OPTIMIZERS

from ...errors import ConfigError
from .constructor import DEFAULT_CONSTRUCTOR, check_gc_switch_variant
from .selection import GC_LAYER_KINDS, parse_gc_layers
from .sgd_gc import SGDGC
from .sgdw import SGDW

__all__ = ['enable_gc']

_CONSTRUCTOR = 'GCOptimWrapperConstructor'


def _resolve(optimizer_type: Any) -> Any:
    """The optimizer class a config's ``type`` names (None if unknown here)."""
    if not isinstance(optimizer_type, str):
        return optimizer_type
    with OPTIMIZERS.switch_scope_and_registry(None) as registry:
        return registry.get(optimizer_type)


def _gc_optimizer_type(optimizer_type: Any, variant: str) -> Any:
    """The optimizer type of the GC run: ``SGD`` becomes ``SGDGC`` (variants
    'grad' / 'update') or ``SGDWGC`` ('sgdw'), ``SGDW`` becomes ``SGDWGC``
    (any variant); other types are kept.

    Raises:
        ValueError: For 'sgdw' on an optimizer that is not SGD.
    """
    cls = _resolve(optimizer_type)
    is_sgd = isinstance(cls, type) and issubclass(cls, (torch.optim.SGD, SGDGC))
    if variant == 'sgdw':
        if not is_sgd:
            raise ConfigError(
                f"GC variant 'sgdw' (SGD with decoupled weight decay) needs an SGD config; "
                f"the optimizer is {optimizer_type!r}: use variant 'grad' or 'update'"
            )
        return 'SGDWGC' if cls in (torch.optim.SGD, SGDGC, SGDW) else optimizer_type
    if cls is torch.optim.SGD:
        return 'SGDGC'
    if cls is SGDW:  # SGDWGC is SGDW with GC; SGD's two variants are one update
        return 'SGDWGC'
    return optimizer_type


def enable_gc(
    cfg: Any, layers: str | Iterable[str] = GC_LAYER_KINDS, variant: str = 'grad'
) -> None:
    """Switch GC on in ``cfg``, in place, on top of whatever it had.

    Afterwards ``optim_wrapper.constructor`` is ``'GCOptimWrapperConstructor'``
    and ``optim_wrapper.gc`` is ``dict(constructor=<the config's previous
    constructor, default 'DefaultOptimWrapperConstructor'>, layers=[...],
    variant=...)``; an ``SGD`` optimizer becomes ``SGDGC`` (``SGDWGC`` for
    'sgdw'), any other is kept (it gets GC through mmgc's step hooks); and
    ``'mmgc'`` is in ``custom_imports.imports``. Nothing else changes. On a
    config that already has GC, the layers and variant are replaced (the old
    form's ``paramwise_cfg.gc_layers`` is dropped for ``gc.layers``).

    Args:
        cfg (Config | dict): A training config (with ``optim_wrapper.optimizer``).
        layers (str | Iterable[str]): A non-empty subset of ``('conv', 'fc')``.
            Defaults to both (the paper's detection setting).
        variant (str): ``'grad'`` (GC on the gradient, the paper's),
            ``'update'`` (GC on the optimizer's update, the authors'
            ``Adam_GC2``), or ``'sgdw'`` (SGD with decoupled weight decay plus
            GC, the authors' ``SGDW_GC``; SGD configs only). Defaults to 'grad'.

    Raises:
        ValueError: On a bad ``layers`` or ``variant`` (naming the valid ones),
            'sgdw' on a config that is not SGD, or a config without
            ``optim_wrapper.optimizer``.
    """
    kinds = parse_gc_layers(layers)
    variant = check_gc_switch_variant(variant)
    optim_wrapper = cfg.get('optim_wrapper')
    if not isinstance(optim_wrapper, dict) or not isinstance(optim_wrapper.get('optimizer'), dict):
        raise ConfigError(
            'enable_gc needs a training config with optim_wrapper.optimizer (one optimizer); '
            f'got optim_wrapper={optim_wrapper!r}'
        )
    optimizer = optim_wrapper['optimizer']
    optimizer_type = _gc_optimizer_type(optimizer.get('type'), variant)
    inner = optim_wrapper.get('constructor', DEFAULT_CONSTRUCTOR)
    if inner == _CONSTRUCTOR:  # GC already on: keep the constructor it composes over
        previous = optim_wrapper.get('gc')
        inner = (
            previous.get('constructor', DEFAULT_CONSTRUCTOR) if previous else DEFAULT_CONSTRUCTOR
        )
        paramwise_cfg = optim_wrapper.get('paramwise_cfg')
        if isinstance(paramwise_cfg, dict):
            paramwise_cfg.pop('gc_layers', None)
    optimizer['type'] = optimizer_type
    optim_wrapper['constructor'] = _CONSTRUCTOR
    optim_wrapper['gc'] = dict(constructor=inner, layers=list(kinds), variant=variant)
    imports = cfg.get('custom_imports')
    if not isinstance(imports, dict):
        cfg['custom_imports'] = dict(imports=['mmgc'], allow_failed_imports=False)
        return
    names = imports.get('imports', [])
    names = [names] if isinstance(names, str) else list(names)
    if 'mmgc' not in names:
        names.append('mmgc')
    imports['imports'] = names
    imports.setdefault('allow_failed_imports', False)
