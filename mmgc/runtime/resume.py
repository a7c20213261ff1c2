"""Pick a complete checkpoint to resume from, and resume plain-SGD states.

``--resume`` without a path (auto-resume): MMEngine 0.10 resumes from
whatever ``<work_dir>/last_checkpoint`` names, and fails when that file is
truncated or corrupt. :func:`find_resume_checkpoint` checks it first (a
checkpoint is a zip archive whose every member carries a CRC-32, so a
truncated file or a flipped byte is found without unpickling anything) and,
when it is not complete, falls back to the newest complete checkpoint in the
same directory, saying so in the log. If no complete checkpoint is left it
stops with one sentence that lists what it found.

:class:`PlainOptimizerStateHook` lets a run with a GC optimizer (groups with
``gc`` / ``gc_dim``, as ``GCOptimWrapperConstructor`` builds them) resume
from a checkpoint of a plain optimizer (a baseline run with
``torch.optim.SGD``): MMEngine's default constructor puts the parameters in
the optimizer in ``model.parameters()`` order, in one group, while the GC
constructor groups them by their GC setting, so torch's
``Optimizer.load_state_dict`` refuses the state ("different number of
parameter groups"). The hook maps the saved state onto the GC groups by
parameter, before the optimizer loads it.
"""

from __future__ import annotations

import glob
import logging
import os
import os.path as osp
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS

from .checkpoint import CheckpointLoadError, UnsafeCheckpointError, safe_torch_load

__all__ = [
    'PlainOptimizerStateHook',
    'ResumePoint',
    'checkpoint_problem',
    'find_resume_checkpoint',
]

#: The names ``CheckpointHook`` gives (its default ``filename_tmpl``); ``best_*``
#: files hold no optimizer state and are never resume points.
_RESUMABLE_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def checkpoint_problem(path: str) -> Optional[str]:
    """What is wrong with the checkpoint file ``path``, or None if complete.

    A zip checkpoint (``torch.save``'s format since torch 1.6) is read
    through and every member's CRC-32 checked; nothing is unpickled. A
    legacy (non-zip) file is loaded with :func:`safe_torch_load`.

    Args:
        path (str): The checkpoint file.

    Returns:
        str | None: A short reason ("missing", "truncated or corrupt (...)").

    Raises:
        UnsafeCheckpointError: If a legacy file holds a forbidden object.
    """
    if not osp.isfile(path):
        return 'missing'
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            return f'truncated or corrupt ({type(err).__name__}: {err})'
        return None if bad is None else f'truncated or corrupt (CRC mismatch in {bad!r})'
    try:
        safe_torch_load(path, map_location='cpu')
    except UnsafeCheckpointError:
        raise
    except CheckpointLoadError:
        return 'truncated or corrupt (no complete torch checkpoint)'
    return None


@dataclass
class ResumePoint:
    """The outcome of :func:`find_resume_checkpoint`.

    Attributes:
        path: The checkpoint to resume from; None: nothing to resume.
        notes: Log lines saying why, for the run's log.
        level: Their logging level: ``WARNING`` when a checkpoint other
            than the one ``last_checkpoint`` names is chosen, else ``INFO``.
    """

    path: Optional[str]
    notes: list[str] = field(default_factory=list)
    level: int = logging.INFO


def _candidates(directory: str, exclude: Optional[str]) -> list[str]:
    found = [
        path
        for path in glob.glob(osp.join(glob.escape(directory), '*'))
        if _RESUMABLE_NAME.match(osp.basename(path))
        and osp.isfile(path)
        and (exclude is None or osp.abspath(path) != osp.abspath(exclude))
    ]
    # Newest first; the name breaks ties (same second on coarse clocks).
    return sorted(found, key=lambda p: (os.stat(p).st_mtime_ns, p), reverse=True)


def find_resume_checkpoint(work_dir: str) -> ResumePoint:
    """The checkpoint that ``--resume`` (auto) should resume from.

    1. ``<work_dir>/last_checkpoint`` names a complete checkpoint: that one.
    2. Otherwise the newest complete ``epoch_<N>.pth`` / ``iter_<N>.pth``
       (by modification time) in the directory of the named file (or in
       ``work_dir``), with a warning that names the skipped file and why.
    3. No ``last_checkpoint`` and no checkpoint file: None (a fresh start,
       as MMEngine does).

    Args:
        work_dir (str): The run's work dir.

    Returns:
        ResumePoint: The checkpoint and the log lines explaining the choice.

    Raises:
        CheckpointLoadError: If checkpoint files exist but none is complete.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    named: Optional[str] = None
    where = f'{pointer} does not exist'
    if osp.isfile(pointer):
        with open(pointer, encoding='utf-8') as f:
            named = f.read().strip() or None
        where = f'{pointer} is empty'
    if named is not None:
        problem = checkpoint_problem(named)
        if problem is None:
            return ResumePoint(named, [f"Resuming from '{named}' (named by {pointer})."])
        skipped = [f"'{named}', which is {problem}"]
        where = f"{pointer} names '{named}', which is {problem}"
        directory = osp.dirname(named) or work_dir
    else:
        skipped = []
        directory = work_dir
    for path in _candidates(directory, exclude=named):
        problem = checkpoint_problem(path)
        if problem is None:
            return ResumePoint(
                path,
                [
                    f"{where}; resuming from '{path}', the newest complete "
                    'checkpoint in that directory, instead.'
                ],
                logging.WARNING,
            )
        skipped.append(f"'{path}', which is {problem}")
    if not skipped:
        return ResumePoint(None, [f'{where} and {directory} holds no checkpoint: starting afresh.'])
    raise CheckpointLoadError(
        f'Cannot resume from {work_dir}: no complete checkpoint is left '
        f'(skipped {"; ".join(skipped)}); pass --resume CKPT with a good '
        'checkpoint, or delete these files to start afresh.'
    )


def _flat_params(groups: list[dict]) -> list[Any]:
    return [p for group in groups for p in group['params']]


@HOOKS.register_module()
class PlainOptimizerStateHook(Hook):
    """Resume a GC optimizer from a plain (e.g. ``torch.optim.SGD``) state.

    Acts in ``after_load_checkpoint``, before ``Runner.resume`` loads the
    optimizer state, and only when (a) the run's optimizer has GC groups
    (every group has a ``gc`` key), (b) the saved groups have none (a plain
    optimizer's state) and (c) the group layouts differ. The saved state is
    then re-grouped by parameter: the plain optimizer holds the parameters
    in ``model.parameters()`` order (as MMEngine's default constructor puts
    them); each parameter's state (momentum buffer) goes to the parameter's
    position in the GC groups, and each GC group takes the saved group's
    hyper-parameters (lr, momentum, weight decay, ...) and keeps its own
    ``gc`` / ``gc_dim``. Every state tensor must have its parameter's
    shape, and each GC group's parameters must come from saved groups with
    equal hyper-parameters; otherwise it stops with a ``ValueError``.
    """

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        saved = checkpoint.get('optimizer')
        wrapper = getattr(runner, 'optim_wrapper', None)
        if not isinstance(saved, dict) or 'param_groups' not in saved:
            return
        if not isinstance(wrapper, OptimWrapper):
            return
        current = wrapper.optimizer.param_groups
        saved_groups = saved['param_groups']
        if not all('gc' in group for group in current):
            return
        if any('gc' in group for group in saved_groups):
            return
        if [len(g['params']) for g in saved_groups] == [len(g['params']) for g in current]:
            return  # same layout: SGDGC.load_state_dict takes it as it is
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        checkpoint['optimizer'] = regroup_plain_state(saved, current, list(model.parameters()))
        print_log(
            f'Resuming {type(wrapper.optimizer).__name__} from the state of a plain '
            f'optimizer ({len(saved_groups)} parameter group(s), no GC options): '
            f'its momentum buffers and hyper-parameters are mapped onto the '
            f'{len(current)} GC parameter groups by parameter; gc/gc_dim come from '
            'the config.',
            logger='current',
        )


def regroup_plain_state(saved: dict, current: list[dict], model_params: list[Any]) -> dict:
    """Map a plain optimizer's state dict onto ``current``'s groups.

    Args:
        saved (dict): The plain optimizer's ``state_dict()`` (state keyed by
            position; positions run over ``model_params`` in order).
        current (list[dict]): The GC optimizer's ``param_groups``.
        model_params (list): ``model.parameters()``, in order.

    Returns:
        dict: ``saved`` with ``state`` and ``param_groups`` in ``current``'s
        layout (other keys, e.g. AMP's loss scaler, kept).

    Raises:
        ValueError: If the saved state does not fit the model's parameters.
    """
    saved_groups = saved['param_groups']
    positions = [index for group in saved_groups for index in group['params']]
    if len(positions) != len(model_params):
        raise ValueError(
            f'Cannot map the saved optimizer state onto the model: it holds '
            f'{len(positions)} parameters and the model has {len(model_params)}.'
        )
    current_params = _flat_params(current)
    if {id(p) for p in current_params} != {id(p) for p in model_params}:
        raise ValueError(
            'Cannot map the saved optimizer state: the GC optimizer does not hold '
            'exactly the parameters of model.parameters().'
        )
    new_index = {id(p): i for i, p in enumerate(current_params)}
    options_of = {}
    for group in saved_groups:
        options = {k: v for k, v in group.items() if k != 'params'}
        for index in group['params']:
            options_of[index] = options
    state = {}
    param_options = {}
    for index, param in zip(positions, model_params):
        param_options[id(param)] = options_of[index]
        if index not in saved['state']:
            continue
        entry = saved['state'][index]
        for key, value in entry.items():
            shape = getattr(value, 'shape', None)
            if key == 'momentum_buffer' and shape is not None and shape != param.shape:
                raise ValueError(
                    f'Cannot map the saved optimizer state: entry {index} has a '
                    f'{key} of shape {tuple(shape)}, its parameter has shape '
                    f'{tuple(param.shape)}; the checkpoint is not of this model.'
                )
        state[new_index[id(param)]] = entry
    groups = []
    for number, group in enumerate(current):
        options = [param_options[id(p)] for p in group['params']]
        if any(o != options[0] for o in options[1:]):
            raise ValueError(
                f'Cannot map the saved optimizer state: GC parameter group {number} '
                'holds parameters whose saved hyper-parameters differ; load the '
                'weights only (load_from) instead of resuming.'
            )
        groups.append(
            {
                **(options[0] if options else {}),
                'gc': group['gc'],
                'gc_dim': group['gc_dim'],
                'params': [new_index[id(p)] for p in group['params']],
            }
        )
    return {**saved, 'state': state, 'param_groups': groups}
