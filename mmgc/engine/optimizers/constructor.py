r"""An optim-wrapper constructor that adds Gradient Centralization on top of
whatever constructor a config uses.

New form (what :func:`mmgc.engine.optimizers.gc_switch.enable_gc` writes): the
config's own optimizer, wrapper and ``paramwise_cfg`` stay as they are, and
``gc`` names the constructor that builds the parameter groups::

    optim_wrapper = dict(
        constructor='GCOptimWrapperConstructor',
        gc=dict(constructor='LearningRateDecayOptimizerConstructor',
                layers=('conv', 'fc'), variant='grad'),
        ...)  # the config's type, optimizer, paramwise_cfg, clip_grad, ...

Old form, deprecated (it still loads, with one ``FutureWarning`` that names
the new form; MMEngine's default constructor inside, ``gc_layers`` among its
options)::

    optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(type='SGDGC', lr=0.02, momentum=0.9, weight_decay=1e-4),
        constructor='GCOptimWrapperConstructor',
        paramwise_cfg=dict(gc_layers=('conv', 'fc')))

How it composes: the inner constructor runs unchanged, except that the
optimizer and optim-wrapper types it is handed are two recorders
(:class:`_RecordedOptimizer`, :class:`_RecordedOptimWrapper`) that keep what it
passes to them. mmgc then annotates the recorded parameter groups, builds the
config's real optimizer from them with the recorded arguments, and the
config's real optim wrapper around it. So every parameter keeps every group
option the inner constructor gave it, and the only keys added are
``gc``, ``gc_dim`` and (new form) ``gc_variant``.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, NamedTuple

import torch
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS
from torch import nn

from ...errors import ConfigError, ConfigTypeError
from .capability import gc_variants_of, supports_gc, why_not_variant
from .coverage import gc_local_optimizer, install_gc_coverage_check, require_gc_coverage
from .gc_step_hooks import attach_gc_hooks, uses_gc_hooks
from .selection import GC_LAYER_KINDS, GCTarget, gc_targets, parse_gc_layers, select_gc_weights
from .sgd_gc import _check_gc_options
from .strategies import check_gc_strategy
from .variants import GC_VARIANTS, check_one_of

__all__ = [
    'GC_SWITCH_VARIANTS',
    'GCOptimWrapperConstructor',
    'check_gc_switch_variant',
]

#: ``paramwise_cfg`` keys of MMEngine's default constructor, and ours.
MMENGINE_PARAMWISE_KEYS = (
    'bias_lr_mult',
    'bias_decay_mult',
    'bypass_duplicate',
    'custom_keys',
    'dcn_offset_lr_mult',
    'dwconv_decay_mult',
    'flat_decay_mult',
    'norm_decay_mult',
)
PARAMWISE_KEYS = (*MMENGINE_PARAMWISE_KEYS, 'gc_layers')
#: The keys of the ``gc`` option (new form).
GC_CFG_KEYS = ('constructor', 'layers', 'variant')
#: The variants a run can choose: GC on the gradient, on the update, and SGD
#: with decoupled weight decay plus GC on the gradient (the authors' SGDW_GC).
GC_SWITCH_VARIANTS: tuple[str, ...] = (*GC_VARIANTS, 'sgdw')
DEFAULT_CONSTRUCTOR = 'DefaultOptimWrapperConstructor'
#: ``custom_keys`` options already applied to ``lr`` / ``weight_decay``.
_MULTIPLIER_KEYS = ('lr_mult', 'decay_mult')
#: Group keys that list one entry per parameter (MMDetection's layer decay).
_PER_PARAM_KEYS = ('param_names',)
_GC_KEYS = ('gc', 'gc_dim', 'gc_variant')
_MISSING = object()


def check_gc_switch_variant(variant: Any) -> str:
    """Return ``variant`` if it is one of :data:`GC_SWITCH_VARIANTS`.

    Raises:
        ValueError: Naming the bad value and the valid ones.
    """
    return check_one_of(variant, GC_SWITCH_VARIANTS, 'the GC variant')


def _check_custom_keys_gc(custom_keys: Any) -> None:
    """TypeError if a ``custom_keys`` entry's ``gc`` / ``gc_dim`` has the wrong type."""
    if not isinstance(custom_keys, dict):
        return
    for key, options in custom_keys.items():
        if isinstance(options, dict):
            try:
                _check_gc_options(options)
            except TypeError as err:
                raise ConfigTypeError(f'custom_keys[{key!r}]: {err}') from None


def _check_paramwise_cfg(paramwise_cfg: Any) -> dict:
    """Old form: a copy of ``paramwise_cfg`` (None: empty), its types checked.

    Raises:
        TypeError: If it, its ``custom_keys`` or an entry of those is not a
            dict, or an entry's ``gc`` / ``gc_dim`` has the wrong type.
        ValueError: On an unknown key.
    """
    if paramwise_cfg is None:
        return {}
    if not isinstance(paramwise_cfg, dict):
        raise ConfigTypeError(f'paramwise_cfg must be None or a dict; got {paramwise_cfg!r}')
    unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
    if unknown:
        raise ConfigError(
            f'unknown paramwise_cfg key(s) {unknown}; valid keys are {list(PARAMWISE_KEYS)}'
        )
    custom_keys = paramwise_cfg.get('custom_keys', {})
    if not isinstance(custom_keys, dict):
        raise ConfigTypeError(
            f'paramwise_cfg.custom_keys must be a dict of {{name: options dict}}; '
            f'got {custom_keys!r}'
        )
    for key, options in custom_keys.items():
        if not isinstance(options, dict):
            raise ConfigTypeError(
                f'custom_keys[{key!r}] must be a dict of options (lr_mult, '
                f'decay_mult, gc, gc_dim, ...); got {options!r}'
            )
    _check_custom_keys_gc(custom_keys)
    return dict(paramwise_cfg)


class _RecordedOptimizer:
    """Stands in for the optimizer while the inner constructor runs: keeps the
    parameters (or groups) and the arguments it is built with."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        self.params = params if isinstance(params, torch.Tensor) else list(params)
        self.kwargs = kwargs


class _RecordedOptimWrapper:
    """Stands in for the optim wrapper while the inner constructor runs."""

    def __init__(self, optimizer: Any = None, **kwargs: Any) -> None:
        self.optimizer = optimizer
        self.kwargs = kwargs


def _registry_names(registry: Any, accept: Any) -> list[str]:
    """The names in ``registry`` and its parents whose class ``accept`` takes."""
    names: set[str] = set()
    while registry is not None:
        names.update(n for n, c in registry.module_dict.items() if accept(c))
        registry = registry.parent
    return sorted(names)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class GCOptimWrapperConstructor:
    """Any optim-wrapper constructor, plus a per-tensor GC decision.

    The inner constructor (``gc.constructor``; the old form: MMEngine's
    ``DefaultOptimWrapperConstructor``) builds the parameter groups as it
    would without GC. Then each group is split by the GC decision of its
    members, which adds only ``gc`` (bool), ``gc_dim`` (the output-unit dim)
    and, in the new form, ``gc_variant`` to the selected weights' groups, and
    groups whose settings are equal are merged (an option left to the
    optimizer's default counts as that default), so torch's multi-tensor
    kernels stay usable. The selected weights are those of the chosen layer
    kinds (:mod:`mmgc.engine.optimizers.selection`: every convolution's
    weight, every fully-connected one); an explicit ``gc`` in a group (from
    ``custom_keys``, e.g. ``{'roi_head.mask_head': dict(gc=False)}``) wins.

    SGDGC centralizes in its own step; every other supported ``torch.optim``
    optimizer gets GC through :func:`~mmgc.engine.optimizers.attach_gc_hooks`.

    Args:
        optim_wrapper_cfg (dict): The optim wrapper config. Its ``gc`` (new
            form) is a dict of ``constructor`` (str or class, the inner
            constructor; defaults to ``'DefaultOptimWrapperConstructor'``),
            ``layers`` (a non-empty subset of ``('conv', 'fc')``; defaults to
            both) and ``variant`` (one of :data:`GC_SWITCH_VARIANTS`; defaults
            to ``'grad'``). Without ``gc`` (old form) the inner constructor is
            MMEngine's default, and ``paramwise_cfg.gc_layers`` the layers.
        paramwise_cfg (dict, optional): The inner constructor's options.
            Old form: MMEngine's ``paramwise_cfg`` keys plus ``gc_layers``,
            and MMEngine's walk is used only with MMEngine keys (without,
            ``model.parameters()``, frozen ones included, as MMEngine).
            Defaults to None.

    Raises:
        TypeError: On a ``gc`` / ``paramwise_cfg`` entry of the wrong type.
        ValueError: On an unknown key, layer kind or variant, or an optimizer
            that cannot take the variant; when called, on groups mmgc cannot
            annotate (a tensor that is not a parameter of the model, or one
            listed twice).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        if not isinstance(optim_wrapper_cfg, dict) or 'optimizer' not in optim_wrapper_cfg:
            raise ConfigTypeError(
                f'optim_wrapper_cfg must be a dict with an optimizer; got {optim_wrapper_cfg!r}'
            )
        optim_wrapper_cfg = dict(optim_wrapper_cfg)
        gc_cfg = optim_wrapper_cfg.pop('gc', None)
        self.legacy = gc_cfg is None
        if self.legacy:
            paramwise_cfg = _check_paramwise_cfg(paramwise_cfg)
            self.gc_layers = parse_gc_layers(paramwise_cfg.pop('gc_layers', GC_LAYER_KINDS))
            self.variant = 'grad'
            inner = DEFAULT_CONSTRUCTOR
            warnings.warn(
                f'optim_wrapper with GCOptimWrapperConstructor and no gc=dict(...) is the '
                f'deprecated form (paramwise_cfg.gc_layers); write gc=dict(layers='
                f'{self.gc_layers!r}) in optim_wrapper instead (the same parameter groups)',
                FutureWarning,
                stacklevel=2,
            )
        else:
            inner, self.gc_layers, self.variant = self._parse_gc_cfg(gc_cfg)
            paramwise_cfg = self._inner_paramwise_cfg(paramwise_cfg)
        self.optim_wrapper_cfg = optim_wrapper_cfg
        self.optimizer_cfg = dict(optim_wrapper_cfg['optimizer'])
        self.paramwise_cfg = paramwise_cfg
        self._optimizer_cls, self._optimizer_defaults = self._check_optimizer()
        recording = dict(
            optim_wrapper_cfg,
            type=_RecordedOptimWrapper,
            optimizer=dict(self.optimizer_cfg, type=_RecordedOptimizer),
        )
        self.inner = OPTIM_WRAPPER_CONSTRUCTORS.build(
            dict(type=inner, optim_wrapper_cfg=recording, paramwise_cfg=paramwise_cfg or None)
        )
        self._inner_name = getattr(inner, '__name__', inner)

    @staticmethod
    def _parse_gc_cfg(gc_cfg: Any) -> tuple[Any, tuple[str, ...], str]:
        if not isinstance(gc_cfg, dict):
            raise ConfigTypeError(
                f'optim_wrapper.gc must be a dict with keys {GC_CFG_KEYS}; got {gc_cfg!r}'
            )
        unknown = sorted(set(gc_cfg) - set(GC_CFG_KEYS))
        if unknown:
            raise ConfigError(
                f'unknown optim_wrapper.gc key(s) {unknown}; valid keys are {list(GC_CFG_KEYS)}'
            )
        inner = gc_cfg.get('constructor', DEFAULT_CONSTRUCTOR)
        if inner in ('GCOptimWrapperConstructor', GCOptimWrapperConstructor):
            raise ConfigError(
                'optim_wrapper.gc.constructor must be the constructor GC is added to '
                "(e.g. 'DefaultOptimWrapperConstructor'); got 'GCOptimWrapperConstructor'"
            )
        if not isinstance(inner, (str, type)):
            raise ConfigTypeError(
                f'optim_wrapper.gc.constructor must be a registered constructor name or '
                f'class; got {inner!r}'
            )
        layers = parse_gc_layers(gc_cfg.get('layers', GC_LAYER_KINDS))
        return inner, layers, check_gc_switch_variant(gc_cfg.get('variant', 'grad'))

    def _inner_paramwise_cfg(self, paramwise_cfg: Any) -> Any:
        """New form: the inner constructor's ``paramwise_cfg``, less ``gc_layers``
        (which must then agree with ``gc.layers``)."""
        if not isinstance(paramwise_cfg, dict):
            return paramwise_cfg  # the inner constructor judges it
        paramwise_cfg = dict(paramwise_cfg)
        if 'gc_layers' in paramwise_cfg:
            old = parse_gc_layers(paramwise_cfg.pop('gc_layers'))
            if old != self.gc_layers:
                raise ConfigError(
                    f'paramwise_cfg.gc_layers={old} disagrees with optim_wrapper.gc.layers='
                    f'{self.gc_layers}; set one of them'
                )
        _check_custom_keys_gc(paramwise_cfg.get('custom_keys'))
        return paramwise_cfg

    def _check_optimizer(self) -> tuple[type, dict[str, Any]]:
        """The optimizer's class and default group options (its signature,
        then the config), after checking that it can take the variant."""
        optimizer_type = optimizer_cls = self.optimizer_cfg.get('type')
        local_cls = check_gc_strategy(None, self.optimizer_cfg)  # ZeRO: its local optimizer
        with OPTIMIZERS.switch_scope_and_registry(None) as registry:
            if isinstance(optimizer_type, str):
                optimizer_cls = registry.get(optimizer_type)
            if local_cls is not None:
                optimizer_type, optimizer_cls = self.optimizer_cfg.get('optimizer_type'), local_cls
            if not supports_gc(optimizer_cls):
                valid = _registry_names(registry, supports_gc)
                raise ConfigError(
                    f'GCOptimWrapperConstructor needs an optimizer that can apply gradient '
                    f'centralization, one of {valid}; got optimizer type {optimizer_type!r}'
                )
            if self.variant not in gc_variants_of(optimizer_cls):
                valid = _registry_names(registry, lambda c: self.variant in gc_variants_of(c))
                raise ConfigError(
                    f'GC variant {self.variant!r} is not defined for optimizer type '
                    f'{optimizer_type!r} ({why_not_variant(optimizer_cls, self.variant)}), '
                    f'which takes {list(gc_variants_of(optimizer_cls))} '
                    f'(--gc-variant / gc.variant); optimizer types that take it: {valid}'
                    + (", e.g. 'SGDWGC'" if self.variant == 'sgdw' and 'SGDWGC' in valid else '')
                )
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(optimizer_cls).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        options = {k: v for k, v in self.optimizer_cfg.items() if k != 'type'}
        if local_cls is not None:  # the groups' defaults are the local optimizer's
            options.pop('optimizer_type', None)
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer_cls = registry.get(self.optimizer_cfg['type'])
        return optimizer_cls, {**defaults, **options}

    def __call__(self, model: nn.Module) -> OptimWrapper:
        """Build the optim wrapper: the inner constructor's groups, annotated."""
        check_gc_strategy(model, self.optimizer_cfg)  # FSDP1 / DeepSpeed, before unwrapping
        if hasattr(model, 'module'):
            model = model.module
        optimizer, wrapper_kwargs = self._build(model)
        wrapper_type = self.optim_wrapper_cfg.get('type', 'OptimWrapper')
        wrapper_cfg = dict(wrapper_kwargs, type=wrapper_type)
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The optimizer alone (with its GC hooks attached where it needs them),
        as :meth:`__call__` puts it in the optim wrapper. The CPU tests of
        ``AmpOptimWrapper`` configs use it: MMEngine's AMP wrapper needs a GPU.

        Raises:
            TypeError: If the inner constructor does not build one optimizer
                and one optim wrapper from the types it is given.
            ValueError: If its groups hold a tensor that is not a parameter of
                ``model``, or one tensor twice.
        """
        check_gc_strategy(model, self.optimizer_cfg)
        if hasattr(model, 'module'):
            model = model.module
        return self._build(model)[0]

    def _build(self, model: nn.Module) -> tuple[torch.optim.Optimizer, dict[str, Any]]:
        """The optimizer, and the optim wrapper's arguments the inner constructor gave."""
        recorded = self.inner(model)
        if not isinstance(recorded, _RecordedOptimWrapper) or not isinstance(
            recorded.optimizer, _RecordedOptimizer
        ):
            raise ConfigTypeError(
                f'GCOptimWrapperConstructor cannot add GC to {self._inner_name}: it built '
                f'{type(recorded).__name__}, not one optimizer in one optim wrapper from the '
                f"config's types; use a constructor that does, such as "
                f'DefaultOptimWrapperConstructor and its subclasses'
            )
        groups = self._annotate(model, _as_groups(recorded.optimizer.params))
        optimizer_cfg = dict(recorded.optimizer.kwargs, type=self.optimizer_cfg['type'])
        first_arg = next(iter(inspect.signature(self._optimizer_cls).parameters))
        optimizer_cfg[first_arg] = groups
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        if self.variant == 'sgdw':
            self._check_decoupled(optimizer)
        local = gc_local_optimizer(optimizer)  # a ZeroRedundancyOptimizer's own
        if uses_gc_hooks(local):
            attach_gc_hooks(local)
        selected = sum(p.ndim > 1 for g in groups if g.get('gc') for p in g['params'])
        require_gc_coverage(optimizer, selected, 'GCOptimWrapperConstructor')
        install_gc_coverage_check(optimizer)
        return optimizer, recorded.kwargs

    def _check_decoupled(self, optimizer: torch.optim.Optimizer) -> None:
        coupled = [
            i
            for i, g in enumerate(optimizer.param_groups)
            if g.get('gc') and not g.get('decoupled_weight_decay')
        ]
        if coupled:
            raise ConfigError(
                f"GC variant 'sgdw' needs decoupled weight decay in every GC group; "
                f'groups {coupled} of {self.optimizer_cfg["type"]!r} have '
                f"decoupled_weight_decay=False: use optimizer type 'SGDWGC'"
            )

    def _annotate(self, model: nn.Module, groups: list[dict]) -> list[dict]:
        """Split ``groups`` by GC decision, set ``gc``/``gc_dim``(/``gc_variant``),
        merge equal groups, and log the result once."""
        names: dict[int, str] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), name)
        where: dict[int, int] = {}
        for index, group in enumerate(groups):
            for param in group['params']:
                self._check_member(param, index, names, where)
            _check_gc_options(group)
        selected = select_gc_weights(model, self.gc_layers)
        targets, no_axis = gc_targets(model)
        kinds = _Targets(selected, targets, no_axis, skipped={})
        split = [sub for group in groups for sub in self._split(group, kinds)]
        merged = _merge_groups(split, self._optimizer_defaults, keep_multipliers=not self.legacy)
        self._log_summary(split, merged, selected, kinds.skipped)
        return merged

    def _check_member(
        self, param: Any, index: int, names: dict[int, str], where: dict[int, int]
    ) -> None:
        if not isinstance(param, torch.Tensor) or id(param) not in names:
            what = (
                f'a tensor of shape {tuple(param.shape)}'
                if isinstance(param, torch.Tensor)
                else repr(param)
            )
            raise ConfigError(
                f'{self._inner_name} put {what} into parameter group {index}, which is not a '
                f'parameter of the model, so GC cannot be decided for it by its module; '
                f"use a constructor whose groups hold the model's parameters"
            )
        if id(param) in where:
            hint = (
                '; set paramwise_cfg.bypass_duplicate=True to add it once'
                if isinstance(self.inner, DefaultOptimWrapperConstructor)
                else '; list each parameter once'
            )
            first = where[id(param)]
            groups = f'group {index}, twice' if first == index else f'groups {first} and {index}'
            raise ConfigError(
                f'parameter {names[id(param)]!r} appears more than once in the parameter '
                f'groups {self._inner_name} built ({groups}; a shared parameter?){hint}'
            )
        where[id(param)] = index

    def _split(self, group: dict, targets: _Targets) -> list[dict]:
        """``group`` split into groups whose members share one GC decision."""
        params = list(group['params'])
        per_param = {
            k: list(group[k])
            for k in _PER_PARAM_KEYS
            if isinstance(group.get(k), (list, tuple)) and len(group[k]) == len(params)
        }
        parts: dict[tuple, dict] = {}
        for i, param in enumerate(params):
            options = self._gc_options(group, param, targets)
            part = parts.get(tuple(options.items()))
            if part is None:
                part = parts[tuple(options.items())] = {
                    **group,
                    **options,
                    'params': [],
                    **{k: [] for k in per_param},
                }
            part['params'].append(param)
            for k, values in per_param.items():
                part[k].append(values[i])
        return list(parts.values())

    def _gc_options(self, group: dict, param: torch.Tensor, targets: _Targets) -> dict[str, Any]:
        """The GC keys of one member: the group's explicit ones, else the selection's.

        A weight forced into GC (``gc=True`` from ``custom_keys``) that the
        layer kinds did not select is centralized on its layer's output dim
        whatever ``gc_layers`` says (1 for a transposed convolution); one
        without an output-unit axis (a 1-D tensor, a tensor whose units hold
        one element each, a grouped transposed convolution's weight) is left
        out of GC and counted in the log, never centralized to zero.
        """
        selected = targets.selected.get(id(param))
        gc = group.get('gc', selected is not None and param.ndim > 1)
        entry = selected or targets.every.get(id(param))
        target = entry[1] if entry else None
        if gc and selected is None:
            reason = _no_output_axis(group, param, target, id(param) in targets.no_axis)
            if reason is not None:
                targets.skipped[reason] = targets.skipped.get(reason, 0) + 1
                gc = False
        options = {'gc': gc, 'gc_dim': group.get('gc_dim', target.out_dim if gc and target else 0)}
        if not self.legacy and gc:
            options['gc_variant'] = group.get(
                'gc_variant', 'grad' if self.variant == 'sgdw' else self.variant
            )
        return options

    def _log_summary(
        self,
        split: list[dict],
        merged: list[dict],
        selected: dict[int, tuple[str, GCTarget]],
        skipped: dict[str, int],
    ) -> None:
        counts: dict[str, list[int]] = {}
        all_params = [p for group in split for p in group['params']]
        for group in split:
            if not group['gc']:
                continue
            for param in group['params']:
                if param.ndim > 1:
                    kind = selected[id(param)][1].kind if id(param) in selected else 'custom_keys'
                    entry = counts.setdefault(kind, [0, 0])
                    entry[0] += 1
                    entry[1] += param.numel()
        if not counts and all_params:  # configured for GC, would centralize nothing
            raise ConfigError(
                f'GCOptimWrapperConstructor: no weight gets gradient centralization '
                f'(gc_layers={self.gc_layers}): the optimizer holds no '
                f'{" or ".join(self.gc_layers)} weight with an output-unit dim; choose other '
                f'gc layers (valid: {GC_LAYER_KINDS}), or train without GC'
            )
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
        variant = '' if self.legacy else f', variant={self.variant!r}, over {self._inner_name}'
        if skipped:
            kept += '; gc=True (custom_keys) left out of GC on ' + ', '.join(
                f'{n} {reason}' for reason, n in skipped.items()
            )
        print_log(
            f'GCOptimWrapperConstructor: gradient centralization on {total} in the '
            f'optimizer ({numel} params; {detail or "none"}), '
            f'gc_layers={self.gc_layers}{variant}, {len(merged)} parameter groups{kept}',
            logger='current',
        )


class _Targets(NamedTuple):
    """What :meth:`GCOptimWrapperConstructor._annotate` decides by: the
    weights the layer kinds select, every weight's GC target whatever its
    kind, the grouped transposed convolutions' weights, and the count of
    forced tensors left out of GC, by reason (filled while splitting)."""

    selected: dict[int, tuple[str, GCTarget]]
    every: dict[int, tuple[str, GCTarget]]
    no_axis: dict[int, tuple[str, int]]
    skipped: dict[str, int]


def _no_output_axis(
    group: dict, param: torch.Tensor, target: GCTarget | None, grouped: bool
) -> str | None:
    """Why a tensor forced into GC has no output-unit axis to centralize
    over (the log's words), or None if it has one."""
    if grouped:
        return 'grouped transposed conv weights (their output units do not lie along one dim)'
    if param.ndim <= 1:
        return '1-D tensors (biases, norm parameters: no input axis)'
    if target is None and param.numel():
        dim = group.get('gc_dim', 0)
        if isinstance(dim, int) and -param.ndim <= dim < param.ndim:
            if param.numel() == param.shape[dim]:
                return 'tensors with one element per output unit (GC would zero their step)'
    return None


def _as_groups(params: Any) -> list[dict]:
    """The recorded ``params`` argument as a list of group dicts (copies)."""
    if isinstance(params, torch.Tensor):
        return [{'params': [params]}]
    params = list(params)
    if not params or not isinstance(params[0], dict):
        return [{'params': params}] if params else []
    groups = []
    for group in params:
        group = dict(group)
        members = group['params']
        group['params'] = [members] if isinstance(members, torch.Tensor) else list(members)
        groups.append(group)
    return groups


def _merge_groups(groups: list[dict], defaults: dict, *, keep_multipliers: bool) -> list[dict]:
    """Merge parameter groups whose settings are equal, in first-seen order.

    An option a group leaves out counts as its value in ``defaults``, so
    ``dict(gc=False)`` from ``custom_keys`` (to which MMEngine adds the base
    ``lr`` and ``weight_decay``) joins the other ``gc=False`` group. With
    ``keep_multipliers=False`` (the old form) ``lr_mult`` / ``decay_mult`` do
    not count, and a merged group keeps them only where all its members agree;
    otherwise every key counts, so each parameter keeps every key it had.
    Per-parameter keys (``param_names``) are concatenated.
    """
    ignored = ('params', *_PER_PARAM_KEYS, *(() if keep_multipliers else _MULTIPLIER_KEYS))
    merged: dict[tuple, dict[str, Any]] = {}
    for group in groups:
        settings = {k: v for k, v in {**defaults, **group}.items() if k not in ignored}
        key = tuple(sorted((k, _hashable(v)) for k, v in settings.items()))
        if key not in merged:
            merged[key] = {**group, 'params': list(group['params'])}
            continue
        target = merged[key]
        target['params'].extend(group['params'])
        for k in _PER_PARAM_KEYS:
            if isinstance(target.get(k), list) and isinstance(group.get(k), list):
                target[k] = target[k] + group[k]
            else:
                target.pop(k, None)
        for k in () if keep_multipliers else _MULTIPLIER_KEYS:
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
