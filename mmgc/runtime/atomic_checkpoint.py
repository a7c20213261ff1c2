"""Checkpoints that are either complete on disk or absent (docs/faults.md, "Killed runs
and checkpoints"): :class:`AtomicCheckpointHook` overrides MMEngine 0.10's private
``CheckpointHook._save_checkpoint_with_step`` (its source is pinned by the tests).
"""

from __future__ import annotations

import glob
import logging
import os
import os.path as osp
from pathlib import Path
from typing import Any, Union

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.fileio.backends import backends
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from .._compat import CHECKPOINT_HOOK_SAVE

__all__ = [
    'AtomicCheckpointHook',
    'AtomicLocalBackend',
    'atomic_write_bytes',
    'use_atomic_checkpoints',
]

ATOMIC_BACKEND = 'atomic_local'
_PARTIAL_MARK = '.partial-'


def atomic_write_bytes(data: Union[bytes, str], path: Union[str, Path]) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path``, never seen half-written: a
    temporary file in the same directory, ``fsync``, ``os.replace``, ``fsync`` of
    the directory. On an error ``path`` is left as it was."""
    path = os.fspath(path)
    data = data.encode('utf-8') if isinstance(data, str) else data
    directory, name = osp.split(path)
    os.makedirs(directory or '.', exist_ok=True)
    partial = osp.join(directory, f'.{name}{_PARTIAL_MARK}{os.getpid()}')
    try:
        with open(partial, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        if osp.exists(partial):
            os.remove(partial)
        raise
    if os.name != 'nt':  # Windows cannot open a directory
        fd = os.open(directory or '.', os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


class AtomicLocalBackend(LocalBackend):
    """MMEngine's ``LocalBackend`` whose ``put`` is :func:`atomic_write_bytes`."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write_bytes(obj, filepath)


def _warn(message: str) -> None:
    print_log(message, logger='current', level=logging.WARNING)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose local saves are atomic (else its own, with a warning);
    deletes a killed save's ``.<name>.partial-<pid>`` before training. Building one
    registers the file backend ``'atomic_local'``."""

    def __init__(self, interval: int = -1, **kwargs: Any) -> None:
        out_dir, backend_args = kwargs.get('out_dir'), kwargs.get('backend_args') or {}
        local = '://' not in str(out_dir or '') and kwargs.get('file_client_args') is None
        self.atomic = local and backend_args.get('backend', 'local') == 'local'
        if self.atomic:
            if ATOMIC_BACKEND not in backends:
                register_backend(ATOMIC_BACKEND, AtomicLocalBackend)
            kwargs['backend_args'] = {**backend_args, 'backend': ATOMIC_BACKEND}
        else:
            _warn(
                f'AtomicCheckpointHook: out_dir={out_dir!r} / backend_args={backend_args!r} '
                "is not local; saves are CheckpointHook's (not atomic)."
            )
        super().__init__(interval, **kwargs)

    def before_train(self, runner: Any) -> None:
        super().before_train(runner)
        directories = {self.out_dir, runner.work_dir} if self.atomic and is_main_process() else ()
        for directory in directories:
            for path in sorted(glob.glob(osp.join(glob.escape(directory), f'.*{_PARTIAL_MARK}*'))):
                os.remove(path)
                _warn(
                    f'Removed {path}, the partial file of a checkpoint save that was '
                    'interrupted; it was never a resume point.'
                )

    def save_atomically(self, runner: Any, step: int, meta: dict) -> None:
        """``CheckpointHook``'s save, reordered: save, then point, then prune
        (it replaces :data:`mmgc._compat.CHECKPOINT_HOOK_SAVE`, below)."""
        if not self.atomic:
            return getattr(super(), CHECKPOINT_HOOK_SAVE)(runner, step, meta)
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():
            return
        atomic_write_bytes(str(self.last_ckpt), osp.join(runner.work_dir, 'last_checkpoint'))
        for old in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # DeepSpeed checkpoints are folders
                self.file_backend.rmtree(path)


setattr(AtomicCheckpointHook, CHECKPOINT_HOOK_SAVE, AtomicCheckpointHook.save_atomically)


def use_atomic_checkpoints(cfg: Any) -> bool:
    """Make ``cfg.default_hooks.checkpoint`` (in place) an :class:`AtomicCheckpointHook`
    with the same arguments if it is a ``CheckpointHook``; other types are kept.
    Returns whether the config's checkpoint hook is (now) atomic."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    kind = None if hook is None else hook.get('type')
    if kind in ('CheckpointHook', CheckpointHook):
        hook['type'] = 'AtomicCheckpointHook'
    elif hook is not None and kind not in ('AtomicCheckpointHook', AtomicCheckpointHook):
        _warn(
            f'default_hooks.checkpoint is {kind!r}, not CheckpointHook: kept as it is, '
            'so its saves are not made atomic.'
        )
        return False
    return hook is not None
