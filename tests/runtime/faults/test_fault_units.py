"""Fast, in-process checks of the fault handling pieces in mmgc.runtime."""

from __future__ import annotations

import hashlib
import inspect
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import CheckpointHook
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from torch import nn

from mmgc.runtime.atomic_checkpoint import (
    AtomicCheckpointHook,
    atomic_write_bytes,
    use_atomic_checkpoints,
)
from mmgc.runtime.checkpoint import CheckpointLoadError, safe_torch_load
from mmgc.runtime.distributed import DIST_TIMEOUT_ENV, parse_dist_timeout, set_dist_timeout
from mmgc.runtime.errors import ConfigError
from mmgc.runtime.resume import latest_checkpoint

#: sha256 of MMEngine 0.10.7's ``CheckpointHook._save_checkpoint_with_step``
#: source, which ``AtomicCheckpointHook`` overrides.
MMENGINE_SAVE_WITH_STEP_SHA256 = '9b971b6cd3cc507da3041d5432ba5766d048eeebcf8b365df4417729c92d4763'


@pytest.mark.parametrize('bad', ['0', '-5', 'abc', 'inf', 'nan', '', None])
def test_dist_timeout_must_be_positive_seconds(bad):
    with pytest.raises(ConfigError, match=r'--dist-timeout must be a positive number of seconds'):
        parse_dist_timeout(bad)


def test_dist_timeout_precedence(monkeypatch):
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl', timeout=1800))))
    monkeypatch.delenv(DIST_TIMEOUT_ENV, raising=False)
    assert set_dist_timeout(cfg) == 1800.0  # the config's own value
    monkeypatch.setenv(DIST_TIMEOUT_ENV, '60')
    assert set_dist_timeout(cfg) == 60.0
    assert cfg.env_cfg.dist_cfg.timeout == 60.0
    assert set_dist_timeout(cfg, '7.5') == 7.5  # the option wins
    assert cfg.env_cfg.dist_cfg == dict(backend='nccl', timeout=7.5)
    monkeypatch.setenv(DIST_TIMEOUT_ENV, 'soon')
    with pytest.raises(ConfigError, match=r"MMGC_DIST_TIMEOUT must be .*; got 'soon'"):
        set_dist_timeout(cfg)


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


def test_a_flipped_bit_is_refused_not_loaded(tmp_path):
    """torch.load does not check CRCs; safe_torch_load does."""
    path = tmp_path / 'weights.pth'
    torch.save({'w': torch.arange(4096, dtype=torch.float32)}, path)
    data = bytearray(path.read_bytes())
    start = data.find(torch.arange(4096, dtype=torch.float32).numpy().tobytes()[:64])
    assert start > 0
    data[start + 1000] ^= 0x01
    path.write_bytes(bytes(data))
    assert not torch.equal(
        torch.load(path, weights_only=True)['w'], torch.arange(4096, dtype=torch.float32)
    )
    with pytest.raises(CheckpointLoadError, match=r"truncated or corrupt \(CRC mismatch in '"):
        safe_torch_load(str(path))


class _Toy(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.fc(inputs)  # default_collate stacked the batch
        if mode == 'loss':
            return dict(loss=((out - labels) ** 2).mean())
        return out


def test_hook_from_a_config_in_a_plain_runner(tmp_path):
    """A config that names AtomicCheckpointHook, run by MMEngine's Runner."""
    gen = torch.Generator().manual_seed(0)
    data = [
        dict(inputs=torch.randn(3, generator=gen), labels=torch.randn(2, generator=gen))
        for _ in range(4)
    ]
    runner = Runner(
        model=_Toy(),
        work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=data,
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2,
            collate_fn=dict(type='default_collate'),
        ),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        train_cfg=dict(by_epoch=True, max_epochs=3),
        default_hooks=dict(
            checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=2),
            logger=dict(type='LoggerHook', interval=1),
        ),
        experiment_name='atomic_hook_unit',
        log_level=logging.WARNING,
    )
    (tmp_path / '.epoch_9.pth.partial-4242').write_bytes(b'half')  # a killed save
    runner.train()
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file() and p.suffix != '.py')
    assert names == ['epoch_2.pth', 'epoch_3.pth', 'last_checkpoint']  # no partial file
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'epoch_3.pth')
    ckpt = safe_torch_load(str(tmp_path / 'epoch_3.pth'))
    assert ckpt['meta']['epoch'] == 3
    assert ckpt['message_hub']['runtime_info']['keep_ckpt_ids'] == [2, 3]
    MMLogger._instance_dict.pop('atomic_hook_unit', None)


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
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split('\n')[:3] == ['False False False', 'True True False', 'True']


def test_latest_checkpoint_is_what_last_checkpoint_names(tmp_path):
    assert latest_checkpoint(str(tmp_path)) is None  # empty work dir: nothing to resume
    ckpt = tmp_path / 'epoch_3.pth'
    ckpt.write_bytes(b'not read here')
    (tmp_path / 'last_checkpoint').write_text(f'{ckpt}\n')
    assert latest_checkpoint(str(tmp_path)) == str(ckpt)
    # A remote checkpoint is left to its backend.
    (tmp_path / 'last_checkpoint').write_text('s3://bucket/run/epoch_3.pth')
    assert latest_checkpoint(str(tmp_path)) == 's3://bucket/run/epoch_3.pth'
    # A name of a deleted file, or no name: one sentence.
    ckpt.unlink()
    (tmp_path / 'last_checkpoint').write_text(str(ckpt))
    with pytest.raises(CheckpointLoadError, match=r"last_checkpoint names '.*epoch_3\.pth', which"):
        latest_checkpoint(str(tmp_path))
    (tmp_path / 'last_checkpoint').write_text('')
    with pytest.raises(CheckpointLoadError, match=r"last_checkpoint names '', which does not"):
        latest_checkpoint(str(tmp_path))
