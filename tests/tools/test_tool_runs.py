"""The command-line tools, run for real as subprocesses.

A tiny Mask R-CNN (tests/data/configs/mask_rcnn_tiny_gc.py: MMDetection's
Mask R-CNN config shrunk) is trained with ``tools/train.py`` on a synthetic
COCO-format dataset (``make_shapes_dataset``), tested with ``tools/test.py``
(pycocotools' COCOeval), resumed, trained on two CPU processes with
``tools/dist_train.sh`` (gloo), fed a malicious and a corrupt checkpoint and
a missing data root, and its metrics compared with ``tools/compare_ap.py``.
The runs are shared by the tests of this module (module-scoped fixtures);
both training runs log the GC diagnostics (``--gc-diagnostics``), and the
baseline is trained with another lr, given only to ``tools/train.py``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import mmengine
import pytest
import torch

from mmgc.runtime.checkpoint import safe_torch_load

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def gc_config(tools) -> Path:
    return tools.configs / 'mask_rcnn_tiny_gc.py'


@pytest.fixture(scope='module')
def base_config(tools) -> Path:
    return tools.configs / 'mask_rcnn_tiny.py'


@pytest.fixture(scope='module')
def gc_run(tools, gc_config, tmp_path_factory) -> Path:
    """Two epochs of the GC config, uninterrupted (val after each epoch), with
    the GC diagnostics on; --resume in an empty work dir starts afresh."""
    work_dir = tmp_path_factory.mktemp('gc_run')
    tools.ok(tools.train(gc_config, work_dir, '--resume', '--gc-diagnostics', '2'))
    return work_dir


@pytest.fixture(scope='module')
def gc_test(tools, gc_config, gc_run) -> Path:
    """tools/test.py on the GC run's last checkpoint, predictions dumped."""
    proc = tools.ok(
        tools.test(gc_config, gc_run / 'epoch_2.pth', gc_run, '--out', gc_run / 'predictions.pkl')
    )
    assert 'Evaluate annotation type *bbox*' in proc.stdout
    assert 'Evaluate annotation type *segm*' in proc.stdout
    return gc_run / 'test_metrics.json'


@pytest.fixture(scope='module')
def base_run(tools, base_config, tmp_path_factory) -> Path:
    """The baseline twin, trained the same way but for an lr option."""
    work_dir = tmp_path_factory.mktemp('base_run')
    options = [LR_OPTION]
    tools.ok(tools.train(base_config, work_dir, '--gc-diagnostics', '2', options=options))
    return work_dir


@pytest.fixture(scope='module')
def base_test(tools, base_config, base_run) -> Path:
    """tools/test.py on the baseline's last checkpoint, into its work dir, without
    the lr option (a new user's way)."""
    tools.ok(tools.test(base_config, base_run / 'epoch_2.pth', base_run))
    return base_run / 'test_metrics.json'


LR_OPTION = 'optim_wrapper.optimizer.lr=0.01'
COCO_KEYS = [
    f'coco/{task}_mAP{suffix}'
    for task in ('bbox', 'segm')
    for suffix in ('', '_50', '_75', '_s', '_m', '_l')
]


def test_resume_in_an_empty_work_dir_says_so_and_starts_afresh(gc_run):
    (text,) = [p.read_text() for p in gc_run.glob('*/*.log') if 'Epoch(train)' in p.read_text()]
    assert (
        f'WARNING - --resume: nothing to resume, {gc_run / "last_checkpoint"} does not exist: '
        'training starts from scratch.'
    ) in text
    assert 'Auto resumed' not in text
    assert text.index('training starts from scratch') < text.index('Epoch(train) [1][1/4]')


def test_train_saves_checkpoints_config_and_val_metrics(gc_run):
    assert (gc_run / 'epoch_1.pth').is_file()
    assert (gc_run / 'epoch_2.pth').is_file()
    assert (gc_run / 'mask_rcnn_tiny_gc.py').is_file()  # config dump
    ckpt = safe_torch_load(str(gc_run / 'epoch_2.pth'))
    assert ckpt['meta']['epoch'] == 2
    assert ckpt['meta']['iter'] == 8  # 8 images, batch 2, 2 epochs
    # The GC optimizer's per-group options are in the checkpoint.
    groups = ckpt['optimizer']['param_groups']
    assert any(g['gc'] for g in groups) and any(not g['gc'] for g in groups)
    (scalars,) = gc_run.glob('*/vis_data/scalars.json')
    val = [json.loads(line) for line in scalars.read_text().splitlines()]
    val = [r for r in val if 'coco/bbox_mAP' in r]
    assert [r['step'] for r in val] == [1, 2]


def test_test_tool_writes_coco_metrics(gc_test, gc_run):
    record = json.loads(gc_test.read_text())
    assert record['checkpoint'].endswith('epoch_2.pth')
    assert record['config'].endswith('mask_rcnn_tiny_gc.py')
    metrics = record['metrics']
    assert set(COCO_KEYS) <= set(metrics)
    for key in COCO_KEYS:
        assert -1.0 <= metrics[key] <= 1.0
    # 64-pixel images hold only small objects: COCOeval gives -1 for the
    # empty medium and large ranges and a real value for small ones.
    assert metrics['coco/bbox_mAP_m'] == -1.0
    assert metrics['coco/segm_mAP_l'] == -1.0
    assert metrics['coco/bbox_mAP_s'] >= 0.0
    assert 'SGDGC' in record['config_text']
    # --out dumped one prediction per val image, with boxes and masks.
    predictions = mmengine.load(str(gc_run / 'predictions.pkl'))
    assert len(predictions) == 4
    for prediction in predictions:
        assert {'bboxes', 'scores', 'labels', 'masks'} <= set(prediction['pred_instances'])
    # The test ran on the same checkpoint as the last validation: same APs.
    (scalars,) = gc_run.glob('*/vis_data/scalars.json')  # the training run's
    last_val = [
        json.loads(line) for line in scalars.read_text().splitlines() if 'coco/bbox_mAP' in line
    ][-1]
    for key in COCO_KEYS:
        assert metrics[key] == pytest.approx(last_val[key])


def _assert_same_checkpoint(a: dict, b: dict) -> None:
    assert a['meta']['epoch'] == b['meta']['epoch']
    assert a['meta']['iter'] == b['meta']['iter']
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for key, value in a['state_dict'].items():
        torch.testing.assert_close(b['state_dict'][key], value, rtol=0, atol=0)
    sa, sb = a['optimizer'], b['optimizer']
    assert sa['state'].keys() == sb['state'].keys()
    for key, state in sa['state'].items():
        torch.testing.assert_close(
            sb['state'][key]['momentum_buffer'],
            state['momentum_buffer'],
            rtol=0,
            atol=0,
        )
    for ga, gb in zip(sa['param_groups'], sb['param_groups']):
        assert ga == gb
    assert a['param_schedulers'] == b['param_schedulers']


@pytest.mark.parametrize('run', ['gc_run', 'base_run'])
def test_gc_diagnostics_flag_logs_the_statistics(run, request):
    """--gc-diagnostics 2 adds GCDiagnosticsHook: its scalars every 2 iterations."""
    (scalars,) = request.getfixturevalue(run).glob('*/vis_data/scalars.json')
    records = [json.loads(line) for line in scalars.read_text().splitlines()]
    logged = [r for r in records if any(k.startswith('gc/') for k in r)]
    assert [r['step'] for r in logged] == [2, 4, 6, 8]
    stats = {k.rsplit('/', 1)[-1] for k in logged[0] if k.startswith('gc/')}
    assert stats == {'grad_norm', 'grad_max', 'gc_grad_norm', 'gc_grad_max', 'sum_drift'}


def test_resume_equals_uninterrupted_run_bit_for_bit(tools, gc_config, gc_run, tmp_path):
    """Stop after epoch 1, resume with --resume (auto): same weights.

    The stopped run's work dir holds what a run stopped after epoch 1
    leaves (the run is deterministic, so its epoch-1 checkpoint is the
    unbroken run's); --resume without a path finds it via last_checkpoint.
    """
    work_dir = tmp_path / 'stopped'
    work_dir.mkdir()
    shutil.copy(gc_run / 'epoch_1.pth', work_dir / 'epoch_1.pth')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    proc = tools.ok(tools.train(gc_config, work_dir, '--resume'))
    assert 'resumed epoch: 1, iter: 4' in tools.output(proc)
    assert 'local_safe backend' in tools.output(proc)
    resumed = safe_torch_load(str(work_dir / 'epoch_2.pth'))
    unbroken = safe_torch_load(str(gc_run / 'epoch_2.pth'))
    _assert_same_checkpoint(unbroken, resumed)


class _RunsCode:
    """Unpickling it would run a shell command (weights_only=False would)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_resume_refuses_malicious_checkpoint(tools, gc_config, gc_run, tmp_path):
    marker = tmp_path / 'code_ran'
    evil = tmp_path / 'evil.pth'
    ckpt = safe_torch_load(str(gc_run / 'epoch_1.pth'))
    ckpt['meta']['note'] = _RunsCode(str(marker))
    torch.save(ckpt, evil)
    proc = tools.train(gc_config, tmp_path / 'work', '--resume', evil)
    assert proc.returncode == 2
    last_line = tools.last_line(proc)
    assert f"Refusing to load checkpoint '{evil}'" in last_line
    assert "'posix.system'" in last_line or "'nt.system'" in last_line
    assert not marker.exists()


def test_test_tool_reports_truncated_checkpoint(tools, gc_config, gc_run, tmp_path):
    broken = tmp_path / 'truncated.pth'
    data = (gc_run / 'epoch_2.pth').read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    proc = tools.test(gc_config, broken, tmp_path / 'work')
    assert proc.returncode == 2
    last_line = tools.last_line(proc)
    assert f"Cannot read checkpoint '{broken}'" in last_line
    assert 'truncated or corrupt' in last_line


def test_missing_data_root_stops_before_the_runner(tools, gc_config, tmp_path):
    missing = tmp_path / 'no_such_data'
    work_dir = tmp_path / 'work'
    proc = tools.run(
        [sys.executable, 'tools/train.py', gc_config, '--work-dir', work_dir, '--cfg-options']
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


def test_dist_train_two_cpu_processes_keep_identical_weights(tools, tmp_path):
    work_dir = tmp_path / 'dist'
    proc = tools.run(
        [
            'bash',
            'tools/dist_train.sh',
            tools.configs / 'mask_rcnn_tiny_gc_dist.py',
            '2',
            '--work-dir',
            work_dir,
            '--cfg-options',
            *tools.data_options(splits=('train', 'test')),  # no validation
        ],
        {'PYTHON': sys.executable, 'PORT': str(tools.free_port())},
    )
    tools.ok(proc)
    assert "dist_cfg=dict(backend='gloo')" in tools.output(proc)
    dumps = {
        (rank, when): torch.load(work_dir / f'rank{rank}_{when}.pth', weights_only=True)
        for rank in (0, 1)
        for when in ('before', 'after')
    }
    assert dumps[0, 'after']['world_size'] == 2
    assert dumps[0, 'after']['wrapper'] == 'CPUDistributedDataParallel'
    # The ranks trained on different halves of the 8 images ...
    ids0, ids1 = dumps[0, 'after']['img_ids'], dumps[1, 'after']['img_ids']
    assert len(ids0) == len(ids1) == 4
    assert not set(ids0) & set(ids1)
    # ... their weights moved ...
    before, after = dumps[0, 'before']['state_dict'], dumps[0, 'after']['state_dict']
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # ... and stayed identical across ranks (DDP averaged the gradients).
    other = dumps[1, 'after']['state_dict']
    assert after.keys() == other.keys()
    for key, value in after.items():
        torch.testing.assert_close(other[key], value, rtol=0, atol=0)


def test_compare_ap_on_real_result_files(tools, gc_test, base_test, tmp_path):
    out_dir = tmp_path / 'report'
    args = [gc_test, base_test, '--out-dir', out_dir, '--ignore-keys', 'optim_wrapper.optimizer.lr']
    proc = tools.ok(tools.run([sys.executable, 'tools/compare_ap.py', *args]))
    gc_metrics = json.loads(gc_test.read_text())['metrics']
    base_metrics = json.loads(base_test.read_text())['metrics']
    assert 'bbox (AP in %)' in proc.stdout and 'segm (AP in %)' in proc.stdout
    with open(out_dir / 'ap_comparison.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [(r['task'], r['metric']) for r in rows] == [
        (task, metric)
        for task in ('bbox', 'segm')
        for metric in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
    ]
    for row in rows:
        suffix = {'AP': '', 'AP50': '_50', 'AP75': '_75'}.get(
            row['metric'], '_' + row['metric'][-1]
        )
        key = f'coco/{row["task"]}_mAP{suffix}'
        if gc_metrics[key] < 0:  # COCO's "no such objects"
            assert row['gc'] == '' and row['delta'] == ''
            continue
        assert float(row['gc']) == pytest.approx(100 * gc_metrics[key])
        assert float(row['baseline']) == pytest.approx(100 * base_metrics[key])
        assert float(row['delta']) == pytest.approx(100 * (gc_metrics[key] - base_metrics[key]))
        assert row['paper_delta'] == ''  # the tiny config is not in the metafile
    markdown = (out_dir / 'ap_comparison.md').read_text()
    assert '### bbox' in markdown and '### segm' in markdown
    assert (out_dir / 'ap_deltas.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_compare_ap_sees_an_option_given_only_to_training(tools, gc_test, base_test, tmp_path):
    """The baseline's lr option, given to train.py only, survives its test."""
    record = json.loads(base_test.read_text())
    assert LR_OPTION.replace('optim_wrapper.optimizer.', '') in record['train_config_text']
    report = tmp_path / 'report'
    proc = tools.run(
        [sys.executable, 'tools/compare_ap.py', gc_test, base_test, '--out-dir', report]
    )
    assert proc.returncode == 2, tools.output(proc)
    assert 'differ in more than the optimizer, in: optim_wrapper.optimizer.lr.' in proc.stderr
    assert not report.exists()
