"""An optim-wrapper constructor that chooses, by module type, which weights
get Gradient Centralization.

Config interface::

    optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(type='SGDGC', lr=0.02, momentum=0.9, weight_decay=1e-4),
        constructor='GCOptimWrapperConstructor',
        paramwise_cfg=dict(gc_layers=('conv', 'fc')))
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS
from torch import nn

from .gc_step_hooks import attach_gc_hooks, supports_gc, uses_gc_hooks
from .selection import (
    GC_LAYER_KINDS,
    GCTarget,
    gc_target_of,
    is_grouped_transposed_conv,
    parse_gc_layers,
)
from .sgd_gc import _check_gc_options

__all__ = ['GCOptimWrapperConstructor']

#: ``paramwise_cfg`` keys of MMEngine's default constructor, and ours.
MMENGINE_PARAMWISE_KEYS = (
    'bias_lr_mult', 'bias_decay_mult', 'bypass_duplicate', 'custom_keys',
    'dcn_offset_lr_mult', 'dwconv_decay_mult', 'flat_decay_mult', 'norm_decay_mult',
)  # fmt: skip
PARAMWISE_KEYS = (*MMENGINE_PARAMWISE_KEYS, 'gc_layers')
#: ``custom_keys`` options already applied to ``lr`` / ``weight_decay``: they
#: do not keep groups apart.
_MULTIPLIER_KEYS = ('lr_mult', 'decay_mult')
_NOT_SETTINGS = ('params', *_MULTIPLIER_KEYS)
_MISSING = object()


def _check_paramwise_cfg(paramwise_cfg: Any) -> dict:
    """A copy of ``paramwise_cfg`` (None: empty), with its types checked.

    Raises:
        TypeError: If it, its ``custom_keys`` or an entry of those is not a
            dict, or an entry's ``gc`` / ``gc_dim`` has the wrong type.
        ValueError: On an unknown key.
    """
    if paramwise_cfg is None:
        return {}
    if not isinstance(paramwise_cfg, dict):
        raise TypeError(f'paramwise_cfg must be None or a dict; got {paramwise_cfg!r}')
    unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
    if unknown:
        raise ValueError(
            f'unknown paramwise_cfg key(s) {unknown}; valid keys are {list(PARAMWISE_KEYS)}'
        )
    custom_keys = paramwise_cfg.get('custom_keys', {})
    if not isinstance(custom_keys, dict):
        raise TypeError(
            f'paramwise_cfg.custom_keys must be a dict of {{name: options dict}}; '
            f'got {custom_keys!r}'
        )
    for key, options in custom_keys.items():
        if not isinstance(options, dict):
            raise TypeError(
                f'custom_keys[{key!r}] must be a dict of options (lr_mult, '
                f'decay_mult, gc, gc_dim, ...); got {options!r}'
            )
        try:
            _check_gc_options(options)
        except TypeError as err:
            raise TypeError(f'custom_keys[{key!r}]: {err}') from None
    return dict(paramwise_cfg)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class GCOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` plus a per-tensor GC decision.

    Every parameter gets the options MMEngine's default constructor gives it,
    and the optimizer holds the parameters MMEngine's would hold: without
    MMEngine ``paramwise_cfg`` options, all of ``model.parameters()``, frozen
    ones included (with their GC setting, so a stage unfrozen later trains
    with GC); with them, the trainable parameters of MMEngine's
    ``add_params`` walk. One ``paramwise_cfg`` option is added:

    - ``gc_layers`` (str | tuple[str]): which weights get GC, a non-empty
      subset of ``('conv', 'fc')`` (see :mod:`mmgc.engine.optimizers.selection`:
      every convolution's weight, every ``nn.Linear``'s). Defaults to both,
      as in the paper's detection experiments. No other tensor gets GC.

    A ``custom_keys`` entry may set ``gc=False`` (or ``gc=True`` with an
    optional ``gc_dim``) for the parameters whose names it matches, e.g.
    ``custom_keys={'roi_head.mask_head': dict(gc=False)}``. Parameters whose
    settings are identical (an option left to the optimizer's default counts
    as that default) share one parameter group, so torch's multi-tensor
    kernels stay usable.

    Args:
        optim_wrapper_cfg (dict): The optim wrapper config. Its ``optimizer``
            is ``SGDGC`` / ``SGD_GC`` or a ``torch.optim`` optimizer that
            :mod:`mmgc.engine.optimizers.gc_step_hooks` supports (``SGD``,
            ``Adam``, ``AdamW``, ...), which then gets GC through step hooks.
        paramwise_cfg (dict, optional): See above. Defaults to None.

    Raises:
        TypeError: On a ``paramwise_cfg`` entry of the wrong type.
        ValueError: On an unknown ``paramwise_cfg`` key, an invalid
            ``gc_layers`` or an optimizer that cannot apply GC.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        paramwise_cfg = _check_paramwise_cfg(paramwise_cfg)
        self.gc_layers = parse_gc_layers(paramwise_cfg.get('gc_layers', GC_LAYER_KINDS))
        self._use_mmengine_walk = bool(set(paramwise_cfg) - {'gc_layers'})
        # ``gc_layers`` keeps paramwise_cfg non-empty, so the parent always
        # calls add_params, through which every GC decision passes.
        super().__init__(optim_wrapper_cfg, {**paramwise_cfg, 'gc_layers': self.gc_layers})
        self._optimizer_defaults = self._check_optimizer()

    def _check_optimizer(self) -> dict[str, Any]:
        """The optimizer's default group options (its signature, then the
        config), after checking that it can apply GC."""
        optimizer_type = optimizer_cls = self.optimizer_cfg.get('type')
        with OPTIMIZERS.switch_scope_and_registry(None) as registry:
            if isinstance(optimizer_type, str):
                optimizer_cls = registry.get(optimizer_type)
            if not supports_gc(optimizer_cls):
                valid = set()
                while registry is not None:  # its names and its parents'
                    valid.update(n for n, c in registry.module_dict.items() if supports_gc(c))
                    registry = registry.parent
                raise ValueError(
                    f'GCOptimWrapperConstructor needs an optimizer that can '
                    f'apply gradient centralization, one of {sorted(valid)}; got '
                    f'optimizer type {optimizer_type!r}'
                )
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(optimizer_cls).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        return {**defaults, **{k: v for k, v in self.optimizer_cfg.items() if k != 'type'}}

    def __call__(self, model: nn.Module) -> OptimWrapper:
        """Build the optim wrapper; optimizers other than SGDGC get GC hooks."""
        optim_wrapper = super().__call__(model)
        if uses_gc_hooks(optim_wrapper.optimizer):
            attach_gc_hooks(optim_wrapper.optimizer)
        return optim_wrapper

    def add_params(
        self,
        params: list[dict],
        module: nn.Module,
        prefix: str = '',
        is_dcn_module: int | float | None = None,
    ) -> None:
        """Add the parameter groups of ``module`` to ``params``: at the top
        level, one group per parameter as MMEngine would make it, with its
        ``gc`` / ``gc_dim`` set, then groups with identical settings merged."""
        if prefix:  # recursion of the parent's walk: nothing to add here
            super().add_params(params, module, prefix, is_dcn_module)
            return
        per_param: list[dict] = []
        if self._use_mmengine_walk:
            super().add_params(per_param, module, prefix, is_dcn_module)
        else:  # MMEngine without paramwise_cfg: model.parameters(), frozen too
            per_param = [{'params': [param]} for param in module.parameters()]
        names: dict[int, str] = {}
        for name, param in module.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), name)
        targets = self._gc_targets(module)
        for group in per_param:  # an explicit custom_keys gc wins over the module type
            (param,) = group['params']
            target = targets.get(id(param))
            group.setdefault('gc', target is not None and param.ndim > 1)
            group.setdefault('gc_dim', target.out_dim if group['gc'] and target else 0)
        merged = _merge_groups(per_param, names, self._optimizer_defaults)
        self._log_summary(per_param, merged, targets)
        params.extend(merged)

    def _gc_targets(self, model: nn.Module) -> dict[int, GCTarget]:
        """``id(weight) -> GCTarget`` for the weights ``gc_layers`` selects."""
        targets: dict[int, GCTarget] = {}
        for name, mod in model.named_modules():
            weight = dict(mod.named_parameters(recurse=False)).get('weight')
            if weight is None:
                continue
            target = gc_target_of(mod)
            if target is not None and target.kind in self.gc_layers:
                targets.setdefault(id(weight), target)
            elif 'conv' in self.gc_layers and is_grouped_transposed_conv(mod):
                print_log(
                    f'GCOptimWrapperConstructor: {name}.weight (grouped '
                    f'transposed conv, groups={mod.groups}) is not centralized: '
                    f'its output units do not lie along one dim',
                    logger='current',
                    level=logging.WARNING,
                )
        return targets

    def _log_summary(
        self, per_param: list[dict], merged: list[dict], targets: dict[int, GCTarget]
    ) -> None:
        counts: dict[str, list[int]] = {}
        for group in per_param:
            (param,) = group['params']
            if group['gc'] and param.ndim > 1:
                target = targets.get(id(param))
                entry = counts.setdefault(target.kind if target else 'custom_keys', [0, 0])
                entry[0] += 1
                entry[1] += param.numel()
        if not counts:
            print_log(
                f'GCOptimWrapperConstructor: no weight gets gradient '
                f'centralization (gc_layers={self.gc_layers}); the optimizer holds no '
                f'{" or ".join(self.gc_layers)} weight',
                logger='current',
                level=logging.WARNING,
            )
        all_params = [group['params'][0] for group in per_param]
        frozen = sum(not param.requires_grad for param in all_params)
        total = f'{sum(c[0] for c in counts.values())} of {len(all_params)} tensors'
        numel = f'{sum(c[1] for c in counts.values()):,} of {sum(p.numel() for p in all_params):,}'
        detail = ', '.join(f'{k} {n} tensors / {size:,} params' for k, (n, size) in counts.items())
        kept = (
            f'; {frozen} frozen tensors (requires_grad=False) are kept in the '
            "optimizer, as MMEngine's default constructor keeps them"
            if frozen
            else ''
        )
        print_log(
            f'GCOptimWrapperConstructor: gradient centralization on {total} in the '
            f'optimizer ({numel} params; {detail or "none"}), '
            f'gc_layers={self.gc_layers}, {len(merged)} parameter groups{kept}',
            logger='current',
        )


def _merge_groups(groups: list[dict], names: dict[int, str], defaults: dict) -> list[dict]:
    """Merge parameter groups whose settings are equal, in first-seen order.

    An option a group leaves out counts as its value in ``defaults``, so
    ``dict(gc=False)`` from ``custom_keys`` (to which MMEngine adds the base
    ``lr`` and ``weight_decay``) joins the other ``gc=False`` group.
    ``lr_mult`` / ``decay_mult`` do not count; a merged group keeps them only
    where all its members agree.

    Raises:
        ValueError: If a parameter appears twice (a shared parameter added
            twice, which torch would also refuse).
    """
    merged: dict[tuple, dict[str, Any]] = {}
    seen: set[int] = set()
    for group in groups:
        for param in group['params']:
            if id(param) in seen:
                raise ValueError(
                    f'parameter {names.get(id(param), "?")!r} appears more than '
                    f'once in the model (a shared parameter); set '
                    f'paramwise_cfg.bypass_duplicate=True to add it once'
                )
            seen.add(id(param))
        settings = {k: v for k, v in {**defaults, **group}.items() if k not in _NOT_SETTINGS}
        key = tuple(sorted((k, _hashable(v)) for k, v in settings.items()))
        if key not in merged:
            merged[key] = {**group, 'params': list(group['params'])}
            continue
        target = merged[key]
        target['params'].extend(group['params'])
        for k in _MULTIPLIER_KEYS:
            if target.get(k, _MISSING) != group.get(k, _MISSING):
                target.pop(k, None)
    return list(merged.values())


def _hashable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ('tensor', id(value))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value
