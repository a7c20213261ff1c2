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

#: ``paramwise_cfg`` keys of MMEngine's default constructor, plus ``gc_layers``.
PARAMWISE_KEYS = (
    'bias_lr_mult',
    'bias_decay_mult',
    'bypass_duplicate',
    'custom_keys',
    'dcn_offset_lr_mult',
    'dwconv_decay_mult',
    'flat_decay_mult',
    'gc_layers',
    'norm_decay_mult',
)


def _all_registered(registry) -> dict[str, type]:
    """Every name in ``registry`` and its parents, nearest first."""
    found: dict[str, type] = {}
    while registry is not None:
        for name, cls in registry.module_dict.items():
            found.setdefault(name, cls)
        registry = registry.parent
    return found


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class GCOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` plus a per-tensor GC decision.

    Every ``paramwise_cfg`` option of the default constructor keeps its
    meaning; one is added:

    - ``gc_layers`` (str | tuple[str]): which weights get GC, a non-empty
      subset of ``('conv', 'fc')``. ``conv`` selects the weight of every
      convolution (``torch.nn`` Conv/ConvTranspose 1d/2d/3d and subclasses
      such as MMCV's ``ConvWS2d``, plus MMCV's deformable convs), ``fc`` the
      weight of every ``nn.Linear``. Defaults to both, as in the paper's
      detection experiments. Biases, norm parameters and any other tensor
      never get GC; frozen parameters are left out of the optimizer.

    A ``custom_keys`` entry may set ``gc=False`` (or ``gc=True`` with an
    optional ``gc_dim``) to override the decision for the parameters whose
    names it matches, e.g. ``custom_keys={'roi_head.mask_head': dict(gc=False)}``.

    Transposed convolutions are centralized per output channel (``gc_dim=1``),
    unlike the authors' code, which uses dim 0 for every tensor; see
    :mod:`mmgc.engine.optimizers.selection`. Parameters with identical settings share one
    parameter group, so torch's multi-tensor kernels stay usable.

    Args:
        optim_wrapper_cfg (dict): The optim wrapper config. Its ``optimizer``
            may be ``SGDGC`` / ``SGD_GC`` (GC inside its step) or any
            ``torch.optim`` optimizer that :mod:`mmgc.engine.optimizers.gc_step_hooks` supports
            (``SGD``, ``Adam``, ``AdamW``, ``Adagrad``, ``RMSprop``, ...),
            which then sees centralized gradients through step hooks.
        paramwise_cfg (dict, optional): See above. Defaults to None.

    Raises:
        ValueError: On an unknown ``paramwise_cfg`` key, an invalid
            ``gc_layers`` or an optimizer that cannot apply GC.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise ValueError(
                f'unknown paramwise_cfg key(s) {unknown}; valid keys are {list(PARAMWISE_KEYS)}'
            )
        paramwise_cfg['gc_layers'] = parse_gc_layers(paramwise_cfg.get('gc_layers', GC_LAYER_KINDS))
        for key, options in (paramwise_cfg.get('custom_keys') or {}).items():
            if isinstance(options, dict):
                try:
                    _check_gc_options(options)
                except TypeError as err:
                    raise TypeError(f'custom_keys[{key!r}]: {err}') from None
        # ``gc_layers`` keeps paramwise_cfg non-empty, so the parent always
        # takes its add_params path, through which every GC decision passes.
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.gc_layers: tuple[str, ...] = paramwise_cfg['gc_layers']
        self._check_optimizer()

    def _check_optimizer(self) -> None:
        optimizer_type = self.optimizer_cfg.get('type')
        optimizer_cls = optimizer_type
        with OPTIMIZERS.switch_scope_and_registry(None) as registry:
            if isinstance(optimizer_type, str):
                optimizer_cls = registry.get(optimizer_type)
            if not supports_gc(optimizer_cls):
                valid = sorted(
                    name for name, cls in _all_registered(registry).items() if supports_gc(cls)
                )
                raise ValueError(
                    f'GCOptimWrapperConstructor needs an optimizer that can '
                    f'apply gradient centralization, one of {valid}; got '
                    f'optimizer type {optimizer_type!r}'
                )

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
        """Add the parameter groups of ``module`` to ``params``.

        The parent walks the modules and makes one group per parameter; at
        the top-level call (``prefix == ''``) this then sets each group's
        ``gc`` / ``gc_dim`` and merges groups with identical settings.
        """
        if prefix:  # recursion of the parent's walk: nothing to add here
            super().add_params(params, module, prefix, is_dcn_module)
            return
        per_param: list[dict] = []
        super().add_params(per_param, module, prefix, is_dcn_module)
        names: dict[int, str] = {}
        for name, param in module.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), name)
        targets = self._gc_targets(module)
        for group in per_param:
            self._decide_gc(group, targets)
        merged = _merge_groups(per_param, names)
        self._log_summary(per_param, merged, targets)
        params.extend(merged)

    def _gc_targets(self, model: nn.Module) -> dict[int, GCTarget]:
        """``id(weight) -> GCTarget`` for the weights ``gc_layers`` selects."""
        targets: dict[int, GCTarget] = {}
        for name, mod in model.named_modules():
            weight = mod._parameters.get('weight')
            if not isinstance(weight, nn.Parameter):
                continue
            if is_grouped_transposed_conv(mod) and 'conv' in self.gc_layers:
                print_log(
                    f'GCOptimWrapperConstructor: {name}.weight (grouped '
                    f'transposed conv, groups={mod.groups}) is not centralized: '
                    f'its output units do not lie along one dim',
                    logger='current',
                    level=logging.WARNING,
                )
            target = gc_target_of(mod)
            if target is not None and target.kind in self.gc_layers:
                targets.setdefault(id(weight), target)
        return targets

    @staticmethod
    def _decide_gc(group: dict, targets: dict[int, GCTarget]) -> None:
        (param,) = group['params']
        target = targets.get(id(param))
        if 'gc' in group:  # set explicitly by a custom_keys entry
            if group['gc']:
                group.setdefault('gc_dim', target.out_dim if target else 0)
            else:
                group.setdefault('gc_dim', 0)
            return
        group['gc'] = target is not None and param.ndim > 1
        group['gc_dim'] = target.out_dim if group['gc'] else 0

    def _log_summary(
        self,
        per_param: list[dict],
        merged: list[dict],
        targets: dict[int, GCTarget],
    ) -> None:
        counts: dict[str, list[int]] = {}
        total_tensors = total_numel = 0
        for group in per_param:
            (param,) = group['params']
            total_tensors += 1
            total_numel += param.numel()
            if group['gc'] and param.ndim > 1:
                target = targets.get(id(param))
                kind = target.kind if target else 'custom_keys'
                entry = counts.setdefault(kind, [0, 0])
                entry[0] += 1
                entry[1] += param.numel()
        if not counts:
            print_log(
                f'GCOptimWrapperConstructor: no weight gets gradient '
                f'centralization (gc_layers={self.gc_layers}); the model has no '
                f'trainable {" or ".join(self.gc_layers)} weights selected',
                logger='current',
                level=logging.WARNING,
            )
        gc_tensors = sum(c[0] for c in counts.values())
        gc_numel = sum(c[1] for c in counts.values())
        detail = ', '.join(
            f'{kind} {n} tensors / {numel:,} params' for kind, (n, numel) in counts.items()
        )
        print_log(
            f'GCOptimWrapperConstructor: gradient centralization on {gc_tensors} '
            f'of {total_tensors} trainable tensors ({gc_numel:,} of '
            f'{total_numel:,} params; {detail or "none"}), '
            f'gc_layers={self.gc_layers}, {len(merged)} parameter groups',
            logger='current',
        )


def _merge_groups(groups: list[dict], names: dict[int, str]) -> list[dict]:
    """Merge parameter groups whose options are all equal, in first-seen order.

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
        key = tuple(sorted((k, _hashable(v)) for k, v in group.items() if k != 'params'))
        if key in merged:
            merged[key]['params'].extend(group['params'])
        else:
            merged[key] = {**group, 'params': list(group['params'])}
    return list(merged.values())


def _hashable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ('tensor', id(value))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value
