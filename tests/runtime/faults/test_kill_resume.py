"""Kill a real training run, resume it, and get the unbroken run's state.

Every run is ``tools/train.py`` as a subprocess on a tiny Mask R-CNN with
``SGDGC`` (tests/data/configs/mask_rcnn_tiny_gc_fault.py: 2 epochs of 4
iterations, no validation, ``max_keep_ckpts=1``). The faults come from
``tests/data/fault_hooks.py``, chosen by the environment of the run:

- SIGKILL after iteration 6 (epoch 2, iteration 2 of 4), then ``--resume``;
- the process ends (SIGXFSZ, as uncatchable as SIGKILL) when half of the
  epoch-2 checkpoint is on disk, then ``--resume``;
- a crash left by a non-atomic writer: ``last_checkpoint`` names a truncated
  ``epoch_2.pth``, next to a partial temporary file;
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
import sys
from pathlib import Path

import pytest
import torch

from mmgc.runtime.shapes import make_shapes_dataset
from mmgc.runtime.checkpoint import CheckpointLoadError, safe_torch_load
from mmgc.runtime.resume import checkpoint_problem, find_resume_checkpoint

from ._tools import BASE, BASE_FAULT, GC_FAULT, data_options, ok, output, run, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def shapes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('shapes')
    return make_shapes_dataset(root, num_train=8, num_val=4, image_size=64, seed=0)


@pytest.fixture(scope='module')
def unbroken(shapes, tmp_path_factory) -> Path:
    """The GC run that never stopped; it keeps both checkpoints."""
    work_dir = tmp_path_factory.mktemp('unbroken')
    ok(
        train(
            GC_FAULT,
            work_dir,
            shapes,
            options=['default_hooks.checkpoint.max_keep_ckpts=-1'],
        )
    )
    return work_dir


def _load(path: Path) -> dict:
    return safe_torch_load(str(path))


def assert_same_state(expected: dict, got: dict) -> None:
    """Weights, optimizer state and schedulers equal, bit for bit."""
    assert got['meta']['epoch'] == expected['meta']['epoch']
    assert got['meta']['iter'] == expected['meta']['iter']
    assert got['state_dict'].keys() == expected['state_dict'].keys()
    for key, value in expected['state_dict'].items():
        torch.testing.assert_close(got['state_dict'][key], value, rtol=0, atol=0)
    want, have = expected['optimizer'], got['optimizer']
    assert have['state'].keys() == want['state'].keys()
    for key, state in want['state'].items():
        torch.testing.assert_close(
            have['state'][key]['momentum_buffer'], state['momentum_buffer'], rtol=0, atol=0
        )
    assert have['param_groups'] == want['param_groups']
    assert any(g['gc'] for g in have['param_groups'])
    assert got['param_schedulers'] == expected['param_schedulers']


def _last_checkpoint(work_dir: Path) -> str:
    return (work_dir / 'last_checkpoint').read_text().strip()


def test_sigkill_mid_epoch_then_resume_is_bit_exact(unbroken, shapes, tmp_path):
    work_dir = tmp_path / 'killed'
    killed = train(GC_FAULT, work_dir, shapes, faults={'MMGC_FAULT': 'kill_after_iter:6'})
    assert killed.returncode == -signal.SIGKILL, output(killed)[-3000:]
    log = output(killed)
    assert 'Epoch(train) [2][2/4]' in log
    assert 'Epoch(train) [2][3/4]' not in log
    assert not (work_dir / 'epoch_2.pth').exists()
    assert _last_checkpoint(work_dir) == str(work_dir / 'epoch_1.pth')

    resumed = ok(train(GC_FAULT, work_dir, shapes, '--resume'))
    log = output(resumed)
    assert f"Resuming from '{work_dir / 'epoch_1.pth'}'" in log
    assert 'resumed epoch: 1, iter: 4' in log
    assert_same_state(_load(unbroken / 'epoch_2.pth'), _load(work_dir / 'epoch_2.pth'))


def test_kill_while_saving_leaves_the_previous_checkpoint(unbroken, shapes, tmp_path):
    work_dir = tmp_path / 'killed_in_save'
    killed = train(GC_FAULT, work_dir, shapes, faults={'MMGC_FAULT': 'kill_in_save:2'})
    assert killed.returncode == -signal.SIGXFSZ, output(killed)[-3000:]
    assert 'Saving checkpoint at 2 epochs' in output(killed)
    # Half of epoch_2.pth was written, to a temporary file only ...
    (partial,) = work_dir.glob('.epoch_2.pth.partial-*')
    full_size = (unbroken / 'epoch_2.pth').stat().st_size
    assert 0 < partial.stat().st_size < full_size
    assert not (work_dir / 'epoch_2.pth').exists()
    # ... and max_keep_ckpts=1 did not delete epoch_1.pth before it:
    # MMEngine's CheckpointHook deletes first and would have left nothing.
    assert checkpoint_problem(str(work_dir / 'epoch_1.pth')) is None
    assert _last_checkpoint(work_dir) == str(work_dir / 'epoch_1.pth')

    resumed = ok(train(GC_FAULT, work_dir, shapes, '--resume'))
    log = output(resumed)
    assert f'Removed {partial}, the partial file of a checkpoint save' in log
    assert f"Resuming from '{work_dir / 'epoch_1.pth'}'" in log
    assert not partial.exists()
    assert_same_state(_load(unbroken / 'epoch_2.pth'), _load(work_dir / 'epoch_2.pth'))
    # max_keep_ckpts=1 pruned epoch_1.pth once epoch_2.pth was in place.
    assert sorted(p.name for p in work_dir.glob('epoch_*.pth')) == ['epoch_2.pth']


def test_control_mmengine_hook_loses_every_checkpoint(shapes, tmp_path):
    """The same kill with MMEngine's own CheckpointHook (the control).

    It deletes epoch_1.pth (max_keep_ckpts=1) before writing epoch_2.pth,
    so the kill leaves a truncated epoch_2.pth and a last_checkpoint naming
    a deleted file: nothing to resume from, which --resume reports.
    """
    work_dir = tmp_path / 'plain'
    killed = train(
        GC_FAULT,
        work_dir,
        shapes,
        faults={'MMGC_FAULT': 'kill_in_save:2'},
        options=['default_hooks.checkpoint.type=mmengine.CheckpointHook'],
    )
    assert killed.returncode == -signal.SIGXFSZ, output(killed)[-3000:]
    assert "default_hooks.checkpoint is 'mmengine.CheckpointHook'" in output(killed)
    assert not (work_dir / 'epoch_1.pth').exists()
    assert 'truncated or corrupt' in checkpoint_problem(str(work_dir / 'epoch_2.pth'))
    with pytest.raises(CheckpointLoadError) as info:
        find_resume_checkpoint(str(work_dir))
    assert str(info.value) == (
        f'Cannot resume from {work_dir}: no complete checkpoint is left (skipped '
        f"'{work_dir / 'epoch_1.pth'}', which is missing; '{work_dir / 'epoch_2.pth'}', "
        'which is truncated or corrupt (no complete torch checkpoint)); pass --resume '
        'CKPT with a good checkpoint, or delete these files to start afresh.'
    )


def test_resume_skips_a_truncated_last_checkpoint(unbroken, shapes, tmp_path):
    """What a non-atomic writer leaves: last_checkpoint names a broken file."""
    work_dir = tmp_path / 'crashed'
    work_dir.mkdir()
    shutil.copy(unbroken / 'epoch_1.pth', work_dir / 'epoch_1.pth')
    data = (unbroken / 'epoch_2.pth').read_bytes()
    (work_dir / 'epoch_2.pth').write_bytes(data[: len(data) // 2])
    (work_dir / '.epoch_2.pth.partial-12345').write_bytes(data[:1000])
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_2.pth'))

    resumed = ok(train(GC_FAULT, work_dir, shapes, '--resume'))
    log = output(resumed)
    assert (
        f"names '{work_dir / 'epoch_2.pth'}', which is truncated or corrupt" in log
        and f"resuming from '{work_dir / 'epoch_1.pth'}', the newest complete checkpoint" in log
    ), log[-3000:]
    assert 'resumed epoch: 1, iter: 4' in log
    assert_same_state(_load(unbroken / 'epoch_2.pth'), _load(work_dir / 'epoch_2.pth'))


def test_find_resume_checkpoint_cases(unbroken, tmp_path):
    good = (unbroken / 'epoch_1.pth').read_bytes()
    # A flipped byte inside a stored tensor: the CRC-32 check finds it.
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / 'epoch_1.pth').write_bytes(bytes(flipped))
    assert 'CRC mismatch' in checkpoint_problem(str(tmp_path / 'epoch_1.pth'))
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_1.pth'))
    with pytest.raises(CheckpointLoadError, match=r'no complete checkpoint is left .*CRC mismatch'):
        find_resume_checkpoint(str(tmp_path))
    # An empty work dir: nothing to resume, a fresh start (as MMEngine).
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert find_resume_checkpoint(str(empty)).path is None
    # No last_checkpoint (killed between the rename and the pointer update):
    # the newest complete checkpoint.
    (tmp_path / 'epoch_0.pth').write_bytes(good)
    (tmp_path / 'last_checkpoint').unlink()
    point = find_resume_checkpoint(str(tmp_path))
    assert point.path == str(tmp_path / 'epoch_0.pth')
    assert 'last_checkpoint does not exist' in point.notes[0]


def test_baseline_sgd_checkpoint_resumes_into_a_gc_run(shapes, tmp_path):
    base_dir, gc_dir = tmp_path / 'baseline', tmp_path / 'gc'
    ok(train(BASE_FAULT, base_dir, shapes, options=['train_cfg.max_epochs=1']))
    baseline = _load(base_dir / 'epoch_1.pth')
    assert all('gc' not in g for g in baseline['optimizer']['param_groups'])

    resumed = ok(train(GC_FAULT, gc_dir, shapes, '--resume', base_dir / 'epoch_1.pth'))
    log = output(resumed)
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


def test_gc_checkpoint_tests_with_the_baseline_config(unbroken, shapes, tmp_path):
    """Testing a GC checkpoint needs nothing of mmgc: not even its config."""
    ckpt = unbroken / 'epoch_2.pth'
    found = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)))
    assert not any('mmgc' in name for name in found)
    assert found <= {
        'builtins.getattr',
        'mmengine.logging.history_buffer.HistoryBuffer',
        'numpy._core.multiarray._reconstruct',
        'numpy._core.multiarray.scalar',
        'numpy.dtype',
        'numpy.ndarray',
    } | {name for name in found if name.startswith('numpy.dtypes.')}
    proc = ok(
        run(
            [
                sys.executable,
                'tools/test.py',
                BASE,  # plain MMDetection optimizer, no mmgc in custom_imports
                ckpt,
                '--work-dir',
                tmp_path,
                '--cfg-options',
                *data_options(shapes, splits=('train', 'val', 'test')),
            ]
        )
    )
    assert 'Evaluate annotation type *segm*' in output(proc)
    record = json.loads((tmp_path / 'test_metrics.json').read_text())
    assert 'SGDGC' not in record['config_text']
    assert record['metrics']['coco/bbox_mAP_s'] >= 0.0
    assert os.path.samefile(record['checkpoint'], ckpt)
