"""Weights-only checkpoint loading (mmgc.runtime.checkpoint).

A real MMEngine ``Runner`` (the suite's toy runner: SGDGC, a message hub
with logged scalars, two lr schedulers) writes the checkpoints these tests
load.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import load_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

import mmgc  # noqa: F401  (registers SGDGC)
from mmgc.runtime.checkpoint import (
    CheckpointLoadError,
    UnsafeCheckpointError,
    _AllowListUnpickler,
    _torch_takes_named_globals,
    allowed_globals,
    install_safe_checkpoint_loader,
    load_from_local_safe,
    mmengine_safe_globals,
    safe_torch_load,
)
from tests.conftest import RunsCode, ToyData, ToyNet

#: Where torch's safe_globals takes (object, name) pairs (2.6+), the load uses
#: it; the other path, an allow-list unpickler for older torch, is tested on
#: every torch by hiding safe_globals.
HAS_SAFE_GLOBALS = hasattr(torch.serialization, 'safe_globals')


@pytest.fixture(params=['this-torch', 'no-safe-globals'])
def load_path(request, monkeypatch):
    """Run a test through each load path this torch can take."""
    if request.param == 'no-safe-globals' and HAS_SAFE_GLOBALS:
        monkeypatch.delattr(torch.serialization, 'safe_globals')
    return request.param


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory, toy_runner) -> str:
    """A checkpoint written by a real Runner after one epoch (SGDGC, a
    message hub with logged scalars, two lr schedulers)."""
    work_dir = tmp_path_factory.mktemp('toy_runner')
    runner = toy_runner(
        work_dir,
        data=ToyData(8),
        shuffle=True,
        optim_wrapper=dict(optimizer=dict(type='SGDGC', lr=0.1, momentum=0.9, weight_decay=1e-4)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
            dict(type='MultiStepLR', milestones=[1], by_epoch=True),
        ],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        default_scope='mmengine',
    )
    _SAVED_STATE.update(
        model=runner.model.state_dict(),
        optimizer=runner.optim_wrapper.state_dict(),
        log_scalars=dict(runner.message_hub.log_scalars),
    )
    return str(work_dir / 'epoch_1.pth')


#: The runner's state when it wrote the checkpoint (the end of training).
_SAVED_STATE: dict = {}


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(b, a)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, HistoryBuffer):
        _assert_same(a.data, b.data)
        assert a.mean() == b.mean() and a.current() == b.current()
        assert a._statistics_methods == b._statistics_methods
    else:
        assert a == b


@pytest.mark.skipif(
    not hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'),
    reason='this torch has no scanner of its own',
)
def test_torch_refuses_exactly_what_mmengine_adds(runner_checkpoint):
    """torch's scanner (2.5+) lists what its weights-only unpickler refuses
    by default: MMEngine's types, all in the allow list."""
    theirs = set(torch.serialization.get_unsafe_globals_in_checkpoint(runner_checkpoint))
    assert theirs, 'MMEngine checkpoints no longer need extra types'
    assert theirs <= {name for _, name in mmengine_safe_globals()} | set(allowed_globals())
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in theirs


@pytest.mark.skipif(not HAS_SAFE_GLOBALS, reason='no safe_globals in this torch')
def test_torch_does_the_loading_where_it_takes_named_globals(runner_checkpoint, monkeypatch):
    """On torch >= 2.6 torch's weights-only unpickler loads genuine checkpoints:
    the allow-list unpickler is not used (fails when add_safe_globals no longer
    takes (object, name) pairs, as on torch 2.5)."""
    assert _torch_takes_named_globals()

    def refuse(self, module, name):
        raise AssertionError(f'the allow-list unpickler ran for {module}.{name}')

    monkeypatch.setattr(_AllowListUnpickler, 'find_class', refuse)
    assert safe_torch_load(runner_checkpoint)['meta']['epoch'] == 1


def test_safe_load_gives_back_what_the_runner_saved(runner_checkpoint, load_path):
    safe = safe_torch_load(runner_checkpoint, map_location='cpu')
    _assert_same(_SAVED_STATE['model'], safe['state_dict'])
    _assert_same(_SAVED_STATE['optimizer'], safe['optimizer'])
    hub = safe['message_hub']['log_scalars']
    assert hub.keys() == _SAVED_STATE['log_scalars'].keys()
    for key, buffer in _SAVED_STATE['log_scalars'].items():
        _assert_same(buffer, hub[key])
    assert {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'} <= set(safe)
    groups = safe['optimizer']['param_groups']
    assert all('gc' in g and 'gc_dim' in g for g in groups)


def test_plain_torch_load_fails_without_the_allow_list(runner_checkpoint):
    """The failure this module fixes (torch >= 2.6 default); on older torch,
    weights_only=True refuses the same checkpoint."""
    with pytest.raises(pickle.UnpicklingError):
        torch.load(runner_checkpoint, weights_only=True)


def test_installed_loader_serves_mmengine_load_checkpoint(runner_checkpoint):
    install_safe_checkpoint_loader()
    install_safe_checkpoint_loader()  # idempotent
    assert CheckpointLoader._get_checkpoint_loader('/any/local.pth') is load_from_local_safe
    # Remote schemes stay MMEngine's.
    assert CheckpointLoader._get_checkpoint_loader('https://x/y.pth') is not (load_from_local_safe)
    model = ToyNet()
    ckpt = load_checkpoint(model, runner_checkpoint, map_location='cpu')
    torch.testing.assert_close(model.cls.weight, ckpt['state_dict']['cls.weight'])


class _LooksUpInit:
    def __reduce__(self):
        return (getattr, (HistoryBuffer, '__init__'))


@pytest.mark.parametrize(
    'save',
    [
        pytest.param(dict(), id='zip'),
        pytest.param(dict(pickle_protocol=4), id='zip-protocol-4'),
        pytest.param(dict(_use_new_zipfile_serialization=False), id='legacy'),
    ],
)
def test_refuses_code_and_runs_nothing(runner_checkpoint, tmp_path, load_path, save):
    marker = tmp_path / 'code_ran'
    ckpt = safe_torch_load(runner_checkpoint)
    ckpt['meta']['payload'] = RunsCode(str(marker))
    path = str(tmp_path / 'evil.pth')
    torch.save(ckpt, path, **save)
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_torch_load(path)
    message = str(info.value)
    assert message.startswith(f"Refusing to load checkpoint '{path}'")
    assert "'posix.system'" in message or "'nt.system'" in message
    assert message.count('. ') == 0 and message.endswith('.')  # one sentence
    assert not marker.exists()


def test_refuses_getattr_beyond_history_buffer_statistics(tmp_path, load_path):
    path = str(tmp_path / 'getattr.pth')
    torch.save({'x': _LooksUpInit()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"getattr\(HistoryBuffer, '__init__'\)"):
        safe_torch_load(path)


def test_refuses_an_unknown_class(tmp_path, load_path):
    path = str(tmp_path / 'class.pth')
    torch.save({'weird': _LooksUpInit}, path)  # a class object, pickled by name
    with pytest.raises(UnsafeCheckpointError, match='_LooksUpInit'):
        safe_torch_load(path)


@pytest.mark.parametrize(
    'corrupt',
    [
        pytest.param(lambda data: data[: len(data) // 2], id='truncated'),
        pytest.param(lambda data: b'', id='empty'),
        pytest.param(lambda data: b'not a checkpoint at all' * 4, id='garbage'),
        pytest.param(lambda data: data[:200] + bytes(64) + data[264:], id='overwritten-bytes'),
    ],
)
def test_corrupt_file_names_the_file(runner_checkpoint, tmp_path, corrupt):
    with open(runner_checkpoint, 'rb') as f:
        data = f.read()
    path = str(tmp_path / 'broken.pth')
    with open(path, 'wb') as f:
        f.write(corrupt(data))
    with pytest.raises(CheckpointLoadError) as info:
        safe_torch_load(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert str(info.value).startswith(f"Cannot read checkpoint '{path}'")
    assert 'truncated or corrupt' in str(info.value)


def test_missing_file(tmp_path):
    path = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        safe_torch_load(path)


def test_legacy_format_loads(runner_checkpoint, tmp_path, load_path):
    ckpt = safe_torch_load(runner_checkpoint)
    path = str(tmp_path / 'legacy.pth')
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    _assert_same(ckpt, safe_torch_load(path))


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
