"""Resume a GC run from the checkpoint of its plain-optimizer baseline (docs/tools.md,
"What the tools add"): ``Optimizer.load_state_dict`` pairs groups and parameters by
position, so :class:`PlainOptimizerStateHook` maps the baseline's one group onto the GC
twin's groups by parameter (:func:`plain_state_to_gc`) before MMEngine loads it.
"""

from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS
from torch import nn

from ..engine.optimizers import GC_GROUP_DEFAULTS
from .errors import ConfigError

__all__ = ['GC_KEYS', 'PlainOptimizerStateHook', 'is_plain_state', 'plain_state_to_gc']

#: The per-group options a GC optimizer adds (``gc``, ``gc_dim``).
GC_KEYS: tuple[str, ...] = tuple(GC_GROUP_DEFAULTS)


def is_plain_state(saved: Any, param_groups: list[dict]) -> bool:
    """Whether ``saved`` (a checkpoint's ``'optimizer'``) is a plain optimizer's
    state dict (no group has GC options) and ``param_groups`` a GC optimizer's
    (every group has them): when :func:`plain_state_to_gc` applies."""
    groups = saved.get('param_groups') if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not param_groups:
        return False
    keys = set(GC_KEYS)
    return not any(keys <= g.keys() for g in groups) and all(keys <= g.keys() for g in param_groups)


def _options(group: dict) -> dict:
    return {key: value for key, value in group.items() if key != 'params'}


def _unfit(detail: str) -> ConfigError:
    return ConfigError(
        f'Cannot map the saved optimizer state: {detail}. Load the weights only '
        '(load_from, without --resume) instead.'
    )


def plain_state_to_gc(saved: dict, param_groups: list[dict], model: nn.Module) -> dict:
    """Map a plain optimizer's state dict onto a GC optimizer's groups, by parameter.

    Args:
        saved (dict): The plain optimizer's ``state_dict()``, over ``model.parameters()``
            (MMEngine's default constructor) or, with ``paramwise_cfg``, the trainable ones.
        param_groups (list[dict]): The GC optimizer's ``param_groups``.
        model (nn.Module): The model both optimizers were built for.

    Returns:
        dict: ``saved`` in the layout of ``param_groups``: each parameter's state
        at its new position, each group with its parameters' saved options (lr,
        momentum, ...) and its own GC options, other keys of ``saved`` kept.

    Raises:
        ConfigError: (a ``ValueError``) If the state does not fit: the parameter
            count, a state's shape, parameters held by one optimizer only, or a
            GC group over parameters with different saved options.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    indices = [index for group in saved['param_groups'] for index in group['params']]
    params = list(model.parameters())
    if len(indices) != len(params):
        params = [p for p in params if p.requires_grad]
    if len(indices) != len(params):
        raise _unfit(
            f'it holds {len(indices)} parameters, and the model has {len(names)} '
            f'({len(params)} with requires_grad); the checkpoint is not of this model'
        )
    param_at = dict(zip(indices, params))
    saved_index = {id(p): index for index, p in param_at.items()}
    group_at = {index: group for group in saved['param_groups'] for index in group['params']}
    current = [p for group in param_groups for p in group['params']]
    missing = [names.get(id(p), '?') for p in current if id(p) not in saved_index]
    if missing:
        raise _unfit(f'it holds no entry for {len(missing)} GC parameter(s) ({missing[:3]}...)')
    new_index = {saved_index[id(p)]: i for i, p in enumerate(current)}
    state = {}
    for index, entry in saved['state'].items():
        param, name = param_at[index], names.get(id(param_at[index]), '?')
        for key, value in entry.items():
            shape = tuple(getattr(value, 'shape', ()))
            if shape and shape != tuple(param.shape):
                raise _unfit(
                    f'the {key} of {name!r} has shape {shape}, the parameter '
                    f'{tuple(param.shape)}; the checkpoint is not of this model'
                )
        if index not in new_index:
            raise _unfit(f'it holds state for {name!r}, which the GC optimizer does not hold')
        state[new_index[index]] = entry
    groups = []
    for number, group in enumerate(param_groups):
        options = [_options(group_at[saved_index[id(p)]]) for p in group['params']] or [group]
        if any(o != options[0] for o in options[1:]):
            raise _unfit(f'GC parameter group {number} holds parameters whose saved options differ')
        positions = [new_index[saved_index[id(p)]] for p in group['params']]
        gc_options = {key: group[key] for key in GC_KEYS}
        groups.append({**_options(options[0]), **gc_options, 'params': positions})
    return {**saved, 'state': state, 'param_groups': groups}


@HOOKS.register_module()
class PlainOptimizerStateHook(Hook):
    """Resume a GC optimizer from a plain optimizer's checkpoint: in a resumed run
    (``cfg.resume``; ``load_from`` alone needs no optimizer state) with an
    ``OptimWrapper``, where :func:`is_plain_state`, maps the checkpoint's
    optimizer state before ``Runner.resume`` loads it, and logs it."""

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        wrapper = getattr(runner, 'optim_wrapper', None)
        if not runner.cfg.get('resume', False) or not isinstance(wrapper, OptimWrapper):
            return
        saved, current = checkpoint.get('optimizer'), wrapper.optimizer.param_groups
        if not is_plain_state(saved, current):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        checkpoint['optimizer'] = plain_state_to_gc(saved, current, model)
        print_log(
            f'Resuming {type(wrapper.optimizer).__name__} from the state of a plain '
            f'optimizer: its buffers and options are mapped onto the {len(current)} GC '
            f'parameter groups by parameter; {"/".join(GC_KEYS)} come from the config.',
            logger='current',
        )
