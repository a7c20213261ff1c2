"""Checkpoints that are either complete on disk or absent.

The MMEngine gap (0.10.x, up to 0.10.7 at least): ``CheckpointHook`` writes
``epoch_N.pth`` in place (``open(path, 'wb')``), then ``last_checkpoint``
in place, and with ``max_keep_ckpts`` deletes the oldest checkpoint *before*
it writes the new one. A process killed during the save leaves a truncated
``epoch_N.pth``; with ``max_keep_ckpts=1`` it leaves nothing complete at
all; and without ``fsync`` a machine that loses power may keep a
``last_checkpoint`` that names a file whose bytes never reached the disk.

:class:`AtomicCheckpointHook` is MMEngine's ``CheckpointHook`` with three
changes, for checkpoints saved to a local directory:

1. every checkpoint file (periodic and best) is written through
   :class:`AtomicLocalBackend`: to a temporary file in the same directory,
   flushed and ``fsync``-ed, then renamed over the final name with
   ``os.replace`` (atomic on POSIX and Windows), and the directory is
   ``fsync``-ed;
2. ``last_checkpoint`` is updated the same way, and only after the
   checkpoint it names is in place;
3. checkpoints beyond ``max_keep_ckpts`` are deleted only after the new one
   is in place.

A kill at any moment therefore leaves the previous checkpoint, the previous
``last_checkpoint`` and at most one temporary file (``.<name>.partial-<pid>``,
never a resume candidate), which the hook deletes when the next run starts.

Changes 2 and 3 override ``CheckpointHook._save_checkpoint_with_step``, a
private MMEngine method (named here only);
``tests/runtime/faults/test_fault_units.py`` pins its source, so an MMEngine
that changes it fails that test.

Importing this module registers the hook (``tools/train.py`` does, and swaps
it in for ``CheckpointHook`` with :func:`use_atomic_checkpoints`); the file
backend ``'atomic_local'`` is registered when the first such hook is built.
A config can name the hook itself::

    custom_imports = dict(
        imports=['mmgc', 'mmgc.runtime.atomic_checkpoint'], allow_failed_imports=False)
    default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', interval=1))
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import os.path as osp
from pathlib import Path
from typing import Any, Union

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

__all__ = [
    'ATOMIC_BACKEND',
    'AtomicCheckpointHook',
    'AtomicLocalBackend',
    'atomic_write_bytes',
    'use_atomic_checkpoints',
]

#: Name of :class:`AtomicLocalBackend` in MMEngine's file backends.
ATOMIC_BACKEND = 'atomic_local'

_PARTIAL_MARK = '.partial-'


def _fsync_dir(directory: str) -> None:
    if os.name == 'nt':  # pragma: no cover - directories cannot be opened
        return
    fd = os.open(directory or '.', os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(data: Union[bytes, str], path: Union[str, Path]) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen half-written.

    The bytes go to ``.<name>.partial-<pid>`` in the same directory, are
    flushed and ``fsync``-ed, and the file is renamed to ``path`` with
    ``os.replace``; then the directory is ``fsync``-ed. On an error the
    temporary file is removed and ``path`` is left as it was.

    Args:
        data (bytes | str): The content (``str`` is written as UTF-8).
        path (str | Path): The final file name.
    """
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode('utf-8')
    directory, name = osp.split(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
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
    _fsync_dir(directory)


class AtomicLocalBackend(LocalBackend):
    """MMEngine's ``LocalBackend`` whose ``put`` is :func:`atomic_write_bytes`.

    Registered as the MMEngine file backend ``'atomic_local'`` when the first
    local :class:`AtomicCheckpointHook` is built.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        """Write ``obj`` to ``filepath`` atomically (see the module doc)."""
        atomic_write_bytes(obj, filepath)


@functools.cache
def _register_atomic_backend() -> None:
    register_backend(ATOMIC_BACKEND, AtomicLocalBackend)


def _is_local(path: Any) -> bool:
    return path is None or (isinstance(path, (str, Path)) and '://' not in str(path))


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose saves are atomic (see the module doc).

    Takes exactly ``CheckpointHook``'s arguments. For a local ``out_dir``
    (the default: the work dir) it saves through :class:`AtomicLocalBackend`;
    for a remote one (``s3://``, ...) or with the deprecated
    ``file_client_args`` it behaves as ``CheckpointHook`` and logs that the
    saves are not atomic.
    """

    def __init__(self, interval: int = -1, **kwargs: Any) -> None:
        backend_args = kwargs.get('backend_args')
        out_dir = kwargs.get('out_dir')
        local = (
            _is_local(out_dir)
            and kwargs.get('file_client_args') is None
            and (backend_args is None or backend_args.get('backend', 'local') == 'local')
        )
        if local:
            _register_atomic_backend()
            kwargs['backend_args'] = {**(backend_args or {}), 'backend': ATOMIC_BACKEND}
        super().__init__(interval, **kwargs)
        self.atomic = local
        if not local:
            print_log(
                f'AtomicCheckpointHook: out_dir={out_dir!r} / backend_args={backend_args!r} '
                'is not a local directory; checkpoints are saved as CheckpointHook saves them '
                '(not atomically).',
                logger='current',
                level=logging.WARNING,
            )

    def before_train(self, runner: Any) -> None:
        """Set up as ``CheckpointHook``, then delete leftovers of killed saves."""
        super().before_train(runner)
        if not (self.atomic and is_main_process()):
            return
        for directory in {self.out_dir, runner.work_dir}:
            for path in sorted(glob.glob(osp.join(glob.escape(directory), f'.*{_PARTIAL_MARK}*'))):
                os.remove(path)
                print_log(
                    f'Removed {path}, the partial file of a checkpoint save that was '
                    'interrupted; it was never a resume point.',
                    logger='current',
                    level=logging.WARNING,
                )

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: dict) -> None:
        """``CheckpointHook``'s save, reordered: save, then point, then prune."""
        if not self.atomic:
            super()._save_checkpoint_with_step(runner, step, meta)
            return
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
        for old_step in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # DeepSpeed checkpoints are folders
                self.file_backend.rmtree(path)


def use_atomic_checkpoints(cfg: Any) -> bool:
    """Make ``cfg``'s checkpoint hook an :class:`AtomicCheckpointHook`.

    ``default_hooks.checkpoint`` of type ``CheckpointHook`` (MMDetection's
    default) becomes ``AtomicCheckpointHook`` with the same arguments. Any
    other type is kept and logged.

    Args:
        cfg (mmengine.Config): The training config, changed in place.

    Returns:
        bool: Whether the config's checkpoint hook is (now) atomic.
    """
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if hook is None:
        return False
    kind = hook.get('type')
    if kind in ('CheckpointHook', CheckpointHook):
        hook['type'] = 'AtomicCheckpointHook'
        return True
    if kind in ('AtomicCheckpointHook', AtomicCheckpointHook):
        return True
    print_log(
        f'default_hooks.checkpoint is {kind!r}, not CheckpointHook: kept as it is, '
        'so its saves are not made atomic.',
        logger='current',
        level=logging.WARNING,
    )
    return False
