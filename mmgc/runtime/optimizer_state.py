"""Resume a GC run from the checkpoint of its plain-optimizer baseline.

A baseline config (``torch.optim.SGD``, MMEngine's default constructor, no
``paramwise_cfg``) holds every parameter of ``model.parameters()``, frozen
ones included, in one group; its GC twin (``GCOptimWrapperConstructor``)
holds the same parameters in a few groups, one per setting, each with the
GC options ``gc`` / ``gc_dim``. torch's ``Optimizer.load_state_dict`` pairs
groups and parameters by position, so it refuses the baseline's state
("different number of parameter groups"), or, where the counts happen to
agree, would pair the wrong tensors and drop the GC options.

:func:`plain_state_to_gc` maps the saved state by parameter: each momentum
buffer (any per-parameter state) goes to its parameter, each GC group takes
the saved hyper-parameters of its parameters (lr, initial_lr, momentum,
weight decay, ...) and keeps its own GC options.
:class:`PlainOptimizerStateHook`, which ``tools/train.py`` registers, applies
it to the checkpoint of a resumed run before MMEngine loads the optimizer
state. This module is the one place that knows how a plain state becomes a
GC one; it reads the GC option names from
:data:`mmgc.engine.optimizers.GC_GROUP_DEFAULTS`.
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

__all__ = ['PlainOptimizerStateHook', 'is_plain_state', 'plain_state_to_gc']

#: The per-group options a GC optimizer adds (``gc``, ``gc_dim``).
GC_KEYS: tuple[str, ...] = tuple(GC_GROUP_DEFAULTS)


def _has_gc_options(group: dict) -> bool:
    return all(key in group for key in GC_KEYS)


def is_plain_state(saved: Any, param_groups: list[dict]) -> bool:
    """Whether ``saved`` is a plain optimizer's state dict (no group has GC
    options) and ``param_groups`` are a GC optimizer's (every group has them).

    Args:
        saved: A checkpoint's ``'optimizer'`` entry.
        param_groups (list[dict]): The run's ``optimizer.param_groups``.

    Returns:
        bool: True when :func:`plain_state_to_gc` applies.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get('param_groups'), list):
        return False
    return (
        bool(param_groups)
        and all(_has_gc_options(group) for group in param_groups)
        and not any(_has_gc_options(group) for group in saved['param_groups'])
    )


def _saved_params(count: int, model: nn.Module) -> list[nn.Parameter]:
    """The parameters a plain optimizer of ``count`` tensors held, in order.

    MMEngine's default constructor puts ``model.parameters()`` in the
    optimizer (no ``paramwise_cfg``), or, with ``paramwise_cfg``, the
    parameters with ``requires_grad`` in the same order.

    Raises:
        ValueError: If ``count`` is neither.
    """
    params = list(model.parameters())
    if count == len(params):
        return params
    trainable = [p for p in params if p.requires_grad]
    if count == len(trainable):
        return trainable
    raise ValueError(
        f'Cannot map the saved optimizer state onto the model: it holds {count} '
        f'parameters, and the model has {len(params)} ({len(trainable)} with '
        'requires_grad); the checkpoint is not of this model. Load the weights only '
        '(load_from, without --resume) instead.'
    )


def plain_state_to_gc(saved: dict, param_groups: list[dict], model: nn.Module) -> dict:
    """Map a plain optimizer's state dict onto a GC optimizer's groups.

    Args:
        saved (dict): The plain optimizer's ``state_dict()`` (state keyed by
            position over its groups' ``params``).
        param_groups (list[dict]): The GC optimizer's ``param_groups``.
        model (nn.Module): The model both optimizers were built for.

    Returns:
        dict: ``saved`` in the layout of ``param_groups``, for the GC
        optimizer's ``load_state_dict``: each parameter's state at its new
        position; each group with the saved hyper-parameters of its
        parameters and its own GC options (other keys of ``saved``, e.g. AMP's
        loss scaler, kept).

    Raises:
        ValueError: If the saved state does not fit: another parameter count,
            a state tensor of another shape than its parameter, state for a
            parameter the GC optimizer does not hold, a GC parameter missing
            from the saved state, or a GC group whose parameters had
            different saved hyper-parameters.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    saved_groups = saved['param_groups']
    positions = [index for group in saved_groups for index in group['params']]
    saved_params = _saved_params(len(positions), model)
    param_at = dict(zip(positions, saved_params))
    options_at = {
        index: {k: v for k, v in group.items() if k != 'params'}
        for group in saved_groups
        for index in group['params']
    }
    current = [p for group in param_groups for p in group['params']]
    new_index = {id(p): i for i, p in enumerate(current)}
    saved_index = {id(p): index for index, p in param_at.items()}
    missing = [names.get(id(p), '?') for p in current if id(p) not in saved_index]
    if missing:
        raise ValueError(
            f'Cannot map the saved optimizer state: it holds no entry for '
            f'{len(missing)} parameter(s) of the GC optimizer ({missing[:3]}...); '
            'the two runs hold different parameters (frozen in one, trained in the '
            'other?). Load the weights only (load_from, without --resume) instead.'
        )
    state = {}
    for index, entry in saved['state'].items():
        param = param_at[index]
        for key, value in entry.items():
            shape = getattr(value, 'shape', None)
            if shape is not None and len(shape) > 0 and shape != param.shape:
                raise ValueError(
                    f'Cannot map the saved optimizer state: the {key} of '
                    f'{names.get(id(param), "?")!r} has shape {tuple(shape)}, the '
                    f'parameter {tuple(param.shape)}; the checkpoint is not of this model.'
                )
        if id(param) not in new_index:
            raise ValueError(
                f'Cannot map the saved optimizer state: it holds state for '
                f'{names.get(id(param), "?")!r}, which the GC optimizer does not hold '
                '(frozen in this run?). Load the weights only (load_from, without '
                '--resume) instead.'
            )
        state[new_index[id(param)]] = entry
    groups = []
    for number, group in enumerate(param_groups):
        options = [options_at[saved_index[id(p)]] for p in group['params']]
        if any(o != options[0] for o in options[1:]):
            raise ValueError(
                f'Cannot map the saved optimizer state: GC parameter group {number} '
                'holds parameters whose saved hyper-parameters differ; load the '
                'weights only (load_from, without --resume) instead.'
            )
        own = {k: v for k, v in group.items() if k != 'params'}
        groups.append(
            {
                **(options[0] if options else own),
                **{key: group[key] for key in GC_KEYS},
                'params': [new_index[id(p)] for p in group['params']],
            }
        )
    return {**saved, 'state': state, 'param_groups': groups}


@HOOKS.register_module()
class PlainOptimizerStateHook(Hook):
    """Resume a GC optimizer from a plain optimizer's checkpoint.

    Acts in ``after_load_checkpoint`` (before ``Runner.resume`` loads the
    optimizer state) when the run resumes (``cfg.resume``: a weights-only
    ``load_from`` needs no optimizer state), its optim wrapper is an
    ``OptimWrapper`` whose groups all carry GC options and the saved groups
    carry none (see :func:`is_plain_state`). The checkpoint's optimizer
    state is then replaced by :func:`plain_state_to_gc`'s, and the log says
    so.
    """

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        wrapper = getattr(runner, 'optim_wrapper', None)
        if not runner.cfg.get('resume', False) or not isinstance(wrapper, OptimWrapper):
            return
        saved = checkpoint.get('optimizer')
        current = wrapper.optimizer.param_groups
        if not is_plain_state(saved, current):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        checkpoint['optimizer'] = plain_state_to_gc(saved, current, model)
        print_log(
            f'Resuming {type(wrapper.optimizer).__name__} from the state of a plain '
            f'optimizer ({len(saved["param_groups"])} parameter group(s), no GC '
            f'options): its per-parameter state (momentum buffers) and '
            f'hyper-parameters are mapped onto the {len(current)} GC parameter '
            f'groups by parameter; {"/".join(GC_KEYS)} come from the config.',
            logger='current',
        )
