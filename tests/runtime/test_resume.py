"""Resuming (``--resume``, mmgc.runtime.cli): ``latest_checkpoint``, and a
real training run killed, resumed, and ending with the unbroken run's state.

Every run is ``tools/train.py`` as a subprocess on a tiny Mask R-CNN with
``SGDGC`` (tests/data/configs/mask_rcnn_tiny_gc_fault.py: 2 epochs of 4
iterations, no validation, ``max_keep_ckpts=1``). The faults come from
``tests/data/fault_hooks.py``, chosen by the environment of the run:

- SIGKILL after iteration 6 (epoch 2, iteration 2 of 4), then ``--resume``;
- the process ends (SIGXFSZ, as uncatchable as SIGKILL) when half of the
  epoch-2 checkpoint is on disk, then ``--resume``;
- a crash left by a non-atomic writer: ``last_checkpoint`` names a truncated
  ``epoch_2.pth``: ``--resume`` stops in one line;
- a checkpoint of the plain-SGD baseline resumed into the GC run, and a GC
  checkpoint tested with the baseline's config.

Each resumed run must end with the unbroken run's weights, momentum buffers,
param groups and scheduler states, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from mmgc.runtime.checkpoint import CheckpointLoadError, allowed_globals, safe_torch_load
from mmgc.runtime.cli import latest_checkpoint
from tests.conftest import assert_same_checkpoint


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


#: No validation in the fault configs: only the train and test data.
SPLITS = ('train', 'test')


@pytest.fixture(scope='module')
def configs(tools):
    c = tools.configs
    return dict(
        gc=c / 'mask_rcnn_tiny_gc_fault.py',
        base=c / 'mask_rcnn_tiny_fault.py',
        base_full=c / 'mask_rcnn_tiny.py',
    )


@pytest.fixture(scope='module')
def train(tools, configs):
    """``tools/train.py`` on the GC fault config (or ``config=...``)."""

    def run(work_dir, *extra, config=None, faults=None, options=()):
        return tools.train(
            config or configs['gc'], work_dir, *extra, env=faults, options=options, splits=SPLITS
        )

    return run


@pytest.fixture(scope='module')
def unbroken(tools, train, tmp_path_factory) -> Path:
    """The GC run that never stopped; it keeps both checkpoints."""
    work_dir = tmp_path_factory.mktemp('unbroken')
    tools.ok(train(work_dir, options=['default_hooks.checkpoint.max_keep_ckpts=-1']))
    return work_dir


def _load(path: Path) -> dict:
    return safe_torch_load(str(path))


def _last_checkpoint(work_dir: Path) -> str:
    return (work_dir / 'last_checkpoint').read_text().strip()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tools, train, unbroken, tmp_path):
    work_dir = tmp_path / 'killed'
    killed = train(work_dir, faults={'MMGC_FAULT': 'kill_after_iter:6'})
    assert killed.returncode == -signal.SIGKILL, tools.output(killed)[-3000:]
    log = tools.output(killed)
    assert 'Epoch(train) [2][2/4]' in log
    assert 'Epoch(train) [2][3/4]' not in log
    assert not (work_dir / 'epoch_2.pth').exists()
    assert _last_checkpoint(work_dir) == str(work_dir / 'epoch_1.pth')

    resumed = tools.ok(train(work_dir, '--resume'))
    log = tools.output(resumed)
    assert f"Resuming from '{work_dir / 'epoch_1.pth'}'" in log
    assert 'resumed epoch: 1, iter: 4' in log
    assert_same_checkpoint(_load(unbroken / 'epoch_2.pth'), _load(work_dir / 'epoch_2.pth'))


@pytest.mark.slow
def test_kill_while_saving_leaves_the_previous_checkpoint(tools, train, unbroken, tmp_path):
    work_dir = tmp_path / 'killed_in_save'
    killed = train(work_dir, faults={'MMGC_FAULT': 'kill_in_save:2'})
    assert killed.returncode == -signal.SIGXFSZ, tools.output(killed)[-3000:]
    assert 'Saving checkpoint at 2 epochs' in tools.output(killed)
    # Half of epoch_2.pth was written, to a temporary file only ...
    (partial,) = work_dir.glob('.epoch_2.pth.partial-*')
    full_size = (unbroken / 'epoch_2.pth').stat().st_size
    assert 0 < partial.stat().st_size < full_size
    assert not (work_dir / 'epoch_2.pth').exists()
    # ... and max_keep_ckpts=1 did not delete epoch_1.pth before it:
    # MMEngine's CheckpointHook deletes first and would have left nothing.
    assert _load(work_dir / 'epoch_1.pth')['meta']['epoch'] == 1  # complete
    assert _last_checkpoint(work_dir) == str(work_dir / 'epoch_1.pth')

    resumed = tools.ok(train(work_dir, '--resume'))
    log = tools.output(resumed)
    assert f'Removed {partial}, the partial file of a checkpoint save' in log
    assert f"Resuming from '{work_dir / 'epoch_1.pth'}'" in log
    assert not partial.exists()
    assert_same_checkpoint(_load(unbroken / 'epoch_2.pth'), _load(work_dir / 'epoch_2.pth'))
    # max_keep_ckpts=1 pruned epoch_1.pth once epoch_2.pth was in place.
    assert sorted(p.name for p in work_dir.glob('epoch_*.pth')) == ['epoch_2.pth']


@pytest.mark.slow
def test_control_mmengine_hook_loses_every_checkpoint(tools, train, tmp_path):
    """The same kill with MMEngine's own CheckpointHook (the control).

    It deletes epoch_1.pth (max_keep_ckpts=1) before writing epoch_2.pth,
    so the kill leaves a truncated epoch_2.pth and a last_checkpoint naming
    a deleted file: nothing to resume from, which --resume says in one line.
    """
    work_dir = tmp_path / 'plain'
    killed = train(
        work_dir,
        faults={'MMGC_FAULT': 'kill_in_save:2'},
        options=['default_hooks.checkpoint.type=mmengine.CheckpointHook'],
    )
    assert killed.returncode == -signal.SIGXFSZ, tools.output(killed)[-3000:]
    assert "default_hooks.checkpoint is 'mmengine.CheckpointHook'" in tools.output(killed)
    assert not (work_dir / 'epoch_1.pth').exists()
    with pytest.raises(CheckpointLoadError, match='truncated or corrupt'):
        safe_torch_load(str(work_dir / 'epoch_2.pth'))
    with pytest.raises(CheckpointLoadError) as info:
        latest_checkpoint(str(work_dir))
    assert str(info.value) == (
        f'Cannot resume from {work_dir}: its last_checkpoint names '
        f"'{work_dir / 'epoch_1.pth'}', which does not exist; pass --resume CKPT with an "
        'existing checkpoint, or delete last_checkpoint to start afresh.'
    )


@pytest.mark.slow
def test_resume_stops_at_a_truncated_last_checkpoint(tools, train, unbroken, tmp_path):
    """What a non-atomic writer leaves: last_checkpoint names a broken file."""
    work_dir = tmp_path / 'crashed'
    work_dir.mkdir()
    shutil.copy(unbroken / 'epoch_1.pth', work_dir / 'epoch_1.pth')
    data = (unbroken / 'epoch_2.pth').read_bytes()
    (work_dir / 'epoch_2.pth').write_bytes(data[: len(data) // 2])
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_2.pth'))

    proc = train(work_dir, '--resume')
    assert proc.returncode == 2, tools.output(proc)[-3000:]
    last = tools.last_line(proc)
    assert last.startswith(
        f"CheckpointLoadError: Cannot read checkpoint '{work_dir / 'epoch_2.pth'}'"
    )
    assert 'truncated or corrupt' in last
    assert 'Traceback' not in proc.stderr
    # Resuming from the previous checkpoint is one option away.
    resumed = tools.ok(train(work_dir, '--resume', work_dir / 'epoch_1.pth'))
    assert 'resumed epoch: 1, iter: 4' in tools.output(resumed)
    assert_same_checkpoint(_load(unbroken / 'epoch_2.pth'), _load(work_dir / 'epoch_2.pth'))


@pytest.mark.slow
def test_baseline_sgd_checkpoint_resumes_into_a_gc_run(tools, train, configs, tmp_path):
    base_dir, gc_dir = tmp_path / 'baseline', tmp_path / 'gc'
    tools.ok(train(base_dir, config=configs['base'], options=['train_cfg.max_epochs=1']))
    baseline = _load(base_dir / 'epoch_1.pth')
    assert all('gc' not in g for g in baseline['optimizer']['param_groups'])

    resumed = tools.ok(train(gc_dir, '--resume', base_dir / 'epoch_1.pth'))
    log = tools.output(resumed)
    assert 'resumed epoch: 1, iter: 4' in log
    assert 'Resuming SGDGC from the state of a plain optimizer' in log
    start = torch.load(gc_dir / 'optim_at_start.pth', weights_only=True)
    assert start['optimizer'] == 'SGDGC'
    assert len(start['groups']) == 3
    assert {(g['gc'], g['gc_dim']) for g in start['groups']} == {(True, 0), (False, 0), (True, 1)}
    saved_group = baseline['optimizer']['param_groups'][0]
    for group in start['groups']:
        for key in ('lr', 'initial_lr', 'momentum', 'weight_decay', 'dampening', 'nesterov'):
            assert group[key] == saved_group[key], key
    # The baseline's buffers, position i = i-th of model.parameters().
    (indices,) = [g['params'] for g in baseline['optimizer']['param_groups']]
    names = start['names']
    assert len(indices) == len(names)
    assert len(start['buffers']) == len(baseline['optimizer']['state']) > 0
    for index, name in zip(indices, names):
        torch.testing.assert_close(
            start['buffers'][name],
            baseline['optimizer']['state'][index]['momentum_buffer'],
            rtol=0,
            atol=0,
        )
    final = _load(gc_dir / 'epoch_2.pth')
    assert final['meta']['epoch'] == 2
    assert any(g['gc'] for g in final['optimizer']['param_groups'])


@pytest.mark.slow
def test_gc_checkpoint_tests_with_the_baseline_config(tools, configs, unbroken, tmp_path):
    """Testing a GC checkpoint needs nothing of mmgc: not even its config."""
    ckpt = unbroken / 'epoch_2.pth'
    # It names no mmgc global: the allow list, which holds none, loads it.
    assert not any(name.startswith('mmgc') for name in allowed_globals())
    assert safe_torch_load(str(ckpt))['meta']['epoch'] == 2
    # The baseline config: plain MMDetection optimizer, no mmgc in custom_imports.
    proc = tools.ok(tools.test(configs['base_full'], ckpt, tmp_path))
    assert 'Evaluate annotation type *segm*' in tools.output(proc)
    record = json.loads((tmp_path / 'test_metrics.json').read_text())
    assert 'SGDGC' not in record['config_text']
    assert record['metrics']['coco/bbox_mAP_s'] >= 0.0
    assert os.path.samefile(record['checkpoint'], ckpt)
