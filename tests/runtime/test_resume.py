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
- a GC checkpoint tested with the baseline's config (a plain-SGD checkpoint
  resumed into a GC run: tests/runtime/test_optimizer_state.py).

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

from mmgc.runtime.checkpoint import CheckpointLoadError, allowed_globals, safe_torch_load
from mmgc.runtime.cli import latest_checkpoint
from tests.conftest import TEST_CONFIGS, assert_same_checkpoint, excerpt


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


#: The GC fault config (no validation: only the train and test data) and the
#: baseline of the tiny Mask R-CNN.
GC, BASE = TEST_CONFIGS / 'mask_rcnn_tiny_gc_fault.py', TEST_CONFIGS / 'mask_rcnn_tiny.py'


@pytest.fixture(scope='module')
def train(tools):
    """``tools/train.py`` on the GC fault config."""

    def run(work_dir, *extra, faults=None, options=()):
        splits = ('train', 'test')
        return tools.train(GC, work_dir, *extra, env=faults, options=options, splits=splits)

    return run


@pytest.fixture(scope='module')
def unbroken(tools, train, tmp_path_factory) -> Path:
    """The GC run that never stopped; it keeps both checkpoints."""
    work_dir = tmp_path_factory.mktemp('unbroken')
    tools.ok(train(work_dir, options=['default_hooks.checkpoint.max_keep_ckpts=-1']))
    return work_dir


def _ends_as_unbroken(unbroken: Path, work_dir: Path) -> None:
    load = safe_torch_load
    assert_same_checkpoint(load(str(unbroken / 'epoch_2.pth')), load(str(work_dir / 'epoch_2.pth')))


def _last_checkpoint(work_dir: Path) -> str:
    return (work_dir / 'last_checkpoint').read_text().strip()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tools, train, unbroken, tmp_path):
    work_dir = tmp_path / 'killed'
    killed = train(work_dir, faults={'MMGC_FAULT': 'kill_after_iter:6'})
    assert killed.returncode == -signal.SIGKILL, excerpt(tools.output(killed))
    log = tools.output(killed)
    assert 'Epoch(train) [2][2/4]' in log
    assert 'Epoch(train) [2][3/4]' not in log
    assert not (work_dir / 'epoch_2.pth').exists()
    assert _last_checkpoint(work_dir) == str(work_dir / 'epoch_1.pth')

    resumed = tools.ok(train(work_dir, '--resume'))
    log = tools.output(resumed)
    assert f"Resuming from '{work_dir / 'epoch_1.pth'}'" in log
    assert 'resumed epoch: 1, iter: 4' in log
    _ends_as_unbroken(unbroken, work_dir)


@pytest.mark.slow
def test_kill_while_saving_leaves_the_previous_checkpoint(tools, train, unbroken, tmp_path):
    work_dir = tmp_path / 'killed_in_save'
    killed = train(work_dir, faults={'MMGC_FAULT': 'kill_in_save:2'})
    assert killed.returncode == -signal.SIGXFSZ, excerpt(tools.output(killed))
    assert 'Saving checkpoint at 2 epochs' in tools.output(killed)
    # Half of epoch_2.pth was written, to a temporary file only ...
    (partial,) = work_dir.glob('.epoch_2.pth.partial-*')
    full_size = (unbroken / 'epoch_2.pth').stat().st_size
    assert 0 < partial.stat().st_size < full_size
    assert not (work_dir / 'epoch_2.pth').exists()
    # ... and max_keep_ckpts=1 did not delete epoch_1.pth before it:
    # MMEngine's CheckpointHook deletes first and would have left nothing.
    assert safe_torch_load(str(work_dir / 'epoch_1.pth'))['meta']['epoch'] == 1  # complete
    assert _last_checkpoint(work_dir) == str(work_dir / 'epoch_1.pth')

    resumed = tools.ok(train(work_dir, '--resume'))
    log = tools.output(resumed)
    assert f'Removed {partial}, the partial file of a checkpoint save' in log
    assert f"Resuming from '{work_dir / 'epoch_1.pth'}'" in log
    assert not partial.exists()
    _ends_as_unbroken(unbroken, work_dir)
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
    assert killed.returncode == -signal.SIGXFSZ, excerpt(tools.output(killed))
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
    assert proc.returncode == 2, excerpt(tools.output(proc))
    last = tools.last_line(proc)
    assert last.startswith(
        f"CheckpointLoadError: Cannot read checkpoint '{work_dir / 'epoch_2.pth'}'"
    )
    assert 'truncated or corrupt' in last
    assert 'Traceback' not in proc.stderr
    # Resuming from the previous checkpoint is one option away.
    resumed = tools.ok(train(work_dir, '--resume', work_dir / 'epoch_1.pth'))
    assert 'resumed epoch: 1, iter: 4' in tools.output(resumed)
    _ends_as_unbroken(unbroken, work_dir)


@pytest.mark.slow
def test_resume_without_a_seed_is_bit_exact(tools, train, tmp_path):
    """A run with no seed (MMEngine draws one), resumed from its epoch-1
    checkpoint with ``--resume CKPT`` and no seed either, ends as the run that
    never stopped: the resumed run takes the checkpoint's seed before its
    sampler is built (before, its data order came from a new seed)."""
    unseeded, keep_all = 'randomness.seed=None', 'default_hooks.checkpoint.max_keep_ckpts=-1'
    first = tmp_path / 'unbroken'
    tools.ok(train(first, options=[unseeded, keep_all]))
    seed = safe_torch_load(str(first / 'epoch_1.pth'))['meta']['seed']
    work_dir = tmp_path / 'resumed'
    work_dir.mkdir()
    shutil.copy(first / 'epoch_1.pth', work_dir)
    resumed = tools.ok(train(work_dir, '--resume', work_dir / 'epoch_1.pth', options=[unseeded]))
    log = tools.output(resumed)
    assert f"--resume: seed {seed}, from '{work_dir / 'epoch_1.pth'}'." in log
    assert 'resumed epoch: 1, iter: 4' in log
    _ends_as_unbroken(first, work_dir)


@pytest.mark.slow
def test_gc_checkpoint_tests_with_the_baseline_config(tools, unbroken, tmp_path):
    """Testing a GC checkpoint needs nothing of mmgc: not even its config."""
    ckpt = unbroken / 'epoch_2.pth'
    # It names no mmgc global: the allow list, which holds none, loads it.
    assert not any(name.startswith('mmgc') for name in allowed_globals())
    assert safe_torch_load(str(ckpt))['meta']['epoch'] == 2
    # The baseline config: plain MMDetection optimizer, no mmgc in custom_imports.
    proc = tools.ok(tools.test(BASE, ckpt, tmp_path))
    assert 'Evaluate annotation type *segm*' in tools.output(proc)
    record = json.loads((tmp_path / 'test_metrics.json').read_text())
    assert 'SGDGC' not in record['config_text']
    assert record['metrics']['coco/bbox_mAP_s'] >= 0.0
    assert os.path.samefile(record['checkpoint'], ckpt)
