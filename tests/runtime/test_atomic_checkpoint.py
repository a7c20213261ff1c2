"""Checkpoints that are never half-written (mmgc.runtime.atomic_checkpoint):
the atomic write, the hook a config names or the tools swap in, its
MMEngine override pinned, and what importing registers. A killed save in
a real run: tests/runtime/test_resume.py."""

from __future__ import annotations

import hashlib
import inspect
import logging
import subprocess
import sys
import textwrap

import pytest
from mmengine.config import Config
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from mmgc.runtime.atomic_checkpoint import (
    AtomicCheckpointHook,
    atomic_write_bytes,
    use_atomic_checkpoints,
)
from mmgc.runtime.checkpoint import safe_torch_load
from tests.conftest import ToyData, excerpt

#: sha256 of MMEngine 0.10.7's ``CheckpointHook._save_checkpoint_with_step``
#: source, which ``AtomicCheckpointHook`` overrides.
MMENGINE_SAVE_WITH_STEP_SHA256 = '9b971b6cd3cc507da3041d5432ba5766d048eeebcf8b365df4417729c92d4763'


def test_atomic_write_replaces_or_leaves_the_old_file(tmp_path):
    target = tmp_path / 'last_checkpoint'
    atomic_write_bytes('first', target)
    atomic_write_bytes(b'second', target)
    assert target.read_bytes() == b'second'
    assert [p.name for p in tmp_path.iterdir()] == ['last_checkpoint']
    # The rename fails (the target is a non-empty folder): the temporary
    # file is removed and what was there stays.
    folder = tmp_path / 'epoch_1.pth'
    folder.mkdir()
    (folder / 'keep').write_text('x')
    with pytest.raises(OSError):
        atomic_write_bytes(b'new', folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['epoch_1.pth', 'last_checkpoint']
    assert (folder / 'keep').read_text() == 'x'


def test_use_atomic_checkpoints_swaps_only_checkpoint_hook():
    cfg = Config(dict(default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2))))
    assert use_atomic_checkpoints(cfg)
    assert cfg.default_hooks.checkpoint == dict(type='AtomicCheckpointHook', interval=2)
    other = Config(dict(default_hooks=dict(checkpoint=dict(type='MyCheckpointHook'))))
    assert not use_atomic_checkpoints(other)
    assert other.default_hooks.checkpoint.type == 'MyCheckpointHook'


def test_remote_out_dir_keeps_mmengine_behaviour():
    hook = HOOKS.build(dict(type='AtomicCheckpointHook', interval=1, out_dir='s3://bucket/ckpt'))
    assert isinstance(hook, AtomicCheckpointHook) and not hook.atomic
    local = HOOKS.build(dict(type='AtomicCheckpointHook', interval=1))
    assert local.atomic and local.backend_args == dict(backend='atomic_local')


def test_hook_from_a_config_in_a_plain_runner(tmp_path, toy_runner):
    """A config that names AtomicCheckpointHook, run by MMEngine's Runner."""
    (tmp_path / '.epoch_9.pth.partial-4242').write_bytes(b'half')  # a killed save
    toy_runner(
        tmp_path,
        data=ToyData(4),
        epochs=3,
        default_hooks=dict(
            checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=2),
            logger=dict(type='LoggerHook', interval=1),
        ),
        log_level=logging.WARNING,
    )
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file() and p.suffix != '.py')
    assert names == ['epoch_2.pth', 'epoch_3.pth', 'last_checkpoint']  # no partial file
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'epoch_3.pth')
    ckpt = safe_torch_load(str(tmp_path / 'epoch_3.pth'))
    assert ckpt['meta']['epoch'] == 3
    assert ckpt['message_hub']['runtime_info']['keep_ckpt_ids'] == [2, 3]


def test_mmengine_save_with_step_is_the_one_overridden():
    """AtomicCheckpointHook overrides this private MMEngine method. If this
    fails, MMEngine changed it: compare the new source with the override in
    mmgc/runtime/atomic_checkpoint.py, port what changed, then update the hash."""
    source = textwrap.dedent(inspect.getsource(CheckpointHook._save_checkpoint_with_step))
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == MMENGINE_SAVE_WITH_STEP_SHA256, (
        'mmengine.hooks.CheckpointHook._save_checkpoint_with_step changed; '
        f're-check AtomicCheckpointHook against it. New source:\n{source}'
    )


def test_importing_registers_the_hook_and_building_it_the_backend():
    """``import mmgc`` registers no tools' hook; importing the module
    registers the hook, and only building a hook registers the backend."""
    code = textwrap.dedent(
        """
        from mmengine.fileio.backends import backends
        from mmengine.registry import HOOKS
        import mmgc
        print('StepSeedHook' in HOOKS, 'AtomicCheckpointHook' in HOOKS, 'atomic_local' in backends)
        import mmgc.runtime.atomic_checkpoint, mmgc.runtime.hooks
        print('StepSeedHook' in HOOKS, 'AtomicCheckpointHook' in HOOKS, 'atomic_local' in backends)
        HOOKS.build(dict(type='AtomicCheckpointHook', interval=1))
        HOOKS.build(dict(type='AtomicCheckpointHook', interval=2))
        print('atomic_local' in backends)
        """
    )
    proc = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, excerpt(proc.stderr)
    assert proc.stdout.split('\n')[:3] == ['False False False', 'True True False', 'True']
