"""Fast, in-process checks of the fault handling pieces in mmgc.runtime."""

from __future__ import annotations

import logging

import pytest
import torch
from mmengine.config import Config
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
from mmgc.runtime.distributed import (
    DIST_TIMEOUT_ENV,
    describe_dist_failure,
    parse_dist_timeout,
    set_dist_timeout,
)


@pytest.mark.parametrize('bad', ['0', '-5', 'abc', 'inf', 'nan', '', None])
def test_dist_timeout_must_be_positive_seconds(bad):
    with pytest.raises(ValueError, match=r'--dist-timeout must be a positive number of seconds'):
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
    with pytest.raises(ValueError, match=r"MMGC_DIST_TIMEOUT must be .*; got 'soon'"):
        set_dist_timeout(cfg)


def test_no_process_group_means_not_a_dist_failure():
    err = RuntimeError('[gloo/transport/tcp/pair.cc:534] Connection closed by peer')
    assert describe_dist_failure(err, 3.0) is None


def test_dist_failure_sentence(tmp_path):
    torch.distributed.init_process_group(
        'gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1
    )
    try:
        gloo = RuntimeError(
            '[../third_party/gloo/gloo/transport/tcp/pair.cc:534] '
            'Connection closed by peer [127.0.0.1]:41234'
        )
        try:
            raise ValueError('while stepping') from gloo
        except ValueError as err:
            chained = err
        message = describe_dist_failure(chained, 3.0)
        assert message == (
            'Rank 0 of 1 lost the other processes of the distributed run (Connection '
            'closed by peer [127.0.0.1]:41234): one of them died, or did not answer within '
            'the timeout of 3 s (set it with --dist-timeout SECONDS or MMGC_DIST_TIMEOUT); '
            'this process stops too, and the run can be resumed with --resume.'
        )
        assert "torch's default of 30 min" in describe_dist_failure(gloo, None)
        # Not from a collective: left alone.
        assert describe_dist_failure(RuntimeError('DataLoader timed out after 5 s'), 3.0) is None
    finally:
        torch.distributed.destroy_process_group()


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
