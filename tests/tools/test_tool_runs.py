"""The command-line tools, run for real as subprocesses, where the README's
own commands (tests/tools/test_readme_commands.py: training, val metrics,
test metrics, --resume, --gc-diagnostics, dist_train.sh, compare_ap.py) do
not reach: --resume in an empty work dir, test.py --out, a malicious and a
corrupt checkpoint, a missing data root (the weights of the two ranks of
dist_train.sh: tests/runtime/test_distributed.py).

A tiny Mask R-CNN (tests/data/configs/mask_rcnn_tiny_gc.py: MMDetection's
Mask R-CNN config shrunk) is trained for one epoch with ``tools/train.py`` on
a synthetic COCO-format dataset (``make_shapes_dataset``) and tested with
``tools/test.py`` (pycocotools' COCOeval); the runs are shared by the tests
of this module (module-scoped fixtures).
"""

from __future__ import annotations

import sys
from pathlib import Path

import mmengine
import pytest
import torch

from mmgc.runtime.checkpoint import safe_torch_load
from tests.conftest import TEST_CONFIGS, RunsCode

pytestmark = pytest.mark.slow

GC_CONFIG = TEST_CONFIGS / 'mask_rcnn_tiny_gc.py'


@pytest.fixture(scope='module')
def gc_run(tools, tmp_path_factory) -> Path:
    """One epoch of the GC config; --resume in an empty work dir starts afresh."""
    work_dir = tmp_path_factory.mktemp('gc_run')
    tools.ok(tools.train(GC_CONFIG, work_dir, '--resume', options=['train_cfg.max_epochs=1']))
    return work_dir


def test_resume_in_an_empty_work_dir_says_so_and_starts_afresh(gc_run):
    (text,) = [p.read_text() for p in gc_run.glob('*/*.log') if 'Epoch(train)' in p.read_text()]
    assert (
        f'WARNING - --resume: nothing to resume, {gc_run / "last_checkpoint"} does not exist: '
        'training starts from scratch.'
    ) in text
    assert 'Auto resumed' not in text
    assert text.index('training starts from scratch') < text.index('Epoch(train) [1][1/4]')


def test_test_tool_dumps_predictions(tools, gc_run):
    """--out: one prediction per val image, with boxes and masks, beside the metrics."""
    out = gc_run / 'predictions.pkl'
    proc = tools.ok(tools.test(GC_CONFIG, gc_run / 'epoch_1.pth', gc_run, '--out', out))
    assert 'Evaluate annotation type *segm*' in proc.stdout
    predictions = mmengine.load(str(out))
    assert len(predictions) == 4
    for prediction in predictions:
        assert {'bboxes', 'scores', 'labels', 'masks'} <= set(prediction['pred_instances'])
    assert (gc_run / 'test_metrics.json').is_file()


def test_resume_refuses_malicious_checkpoint(tools, gc_run, tmp_path):
    marker = tmp_path / 'code_ran'
    evil = tmp_path / 'evil.pth'
    ckpt = safe_torch_load(str(gc_run / 'epoch_1.pth'))
    ckpt['meta']['note'] = RunsCode(str(marker))
    torch.save(ckpt, evil)
    proc = tools.train(GC_CONFIG, tmp_path / 'work', '--resume', evil)
    assert proc.returncode == 2
    last_line = tools.last_line(proc)
    assert f"Refusing to load checkpoint '{evil}'" in last_line
    assert "'posix.system'" in last_line or "'nt.system'" in last_line
    assert not marker.exists()


def test_test_tool_reports_truncated_checkpoint(tools, gc_run, tmp_path):
    broken = tmp_path / 'truncated.pth'
    data = (gc_run / 'epoch_1.pth').read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    proc = tools.test(GC_CONFIG, broken, tmp_path / 'work')
    assert proc.returncode == 2
    last_line = tools.last_line(proc)
    assert f"Cannot read checkpoint '{broken}'" in last_line
    assert 'truncated or corrupt' in last_line


def test_missing_data_root_stops_before_the_runner(tools, tmp_path):
    missing = tmp_path / 'no_such_data'
    work_dir = tmp_path / 'work'
    proc = tools.run(
        [sys.executable, 'tools/train.py', GC_CONFIG, '--work-dir', work_dir, '--cfg-options']
        + tools.data_options(root=str(missing))
    )
    assert proc.returncode == 2
    last_line = tools.last_line(proc)
    assert 'MissingDataError' in last_line
    assert f"'{missing}/'" in last_line
    assert 'train_dataloader.dataset.data_root' in last_line
    # The Runner creates the work dir before it builds the model: the check
    # stopped the run earlier than that.
    assert not work_dir.exists()
