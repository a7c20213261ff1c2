"""The command-line tools, run for real as subprocesses.

A tiny Mask R-CNN (tests/data/configs/mask_rcnn_tiny_gc.py: MMDetection's
Mask R-CNN config shrunk) is trained with ``tools/train.py`` on a synthetic
COCO-format dataset (``make_shapes_dataset``), tested with ``tools/test.py``
(pycocotools' COCOeval), resumed, trained on two CPU processes with
``tools/dist_train.sh`` (gloo), fed a malicious and a corrupt checkpoint and
a missing data root, and its metrics compared with ``tools/compare_ap.py``.
The runs are shared by the tests of this module (module-scoped fixtures).
"""

from __future__ import annotations

import csv
import json
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mmengine
import pytest
import torch

from mmgc.runtime.shapes import make_shapes_dataset
from mmgc.runtime.checkpoint import safe_torch_load

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / 'tests' / 'data' / 'configs'
GC_CONFIG = CONFIGS / 'mask_rcnn_tiny_gc.py'
BASE_CONFIG = CONFIGS / 'mask_rcnn_tiny.py'
DIST_CONFIG = CONFIGS / 'mask_rcnn_tiny_gc_dist.py'
TIMEOUT = 300


def _env(extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([extra_path] if extra_path else [])
    if env.get('PYTHONPATH'):
        paths.append(env['PYTHONPATH'])
    env['PYTHONPATH'] = os.pathsep.join(paths)
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        cwd=ROOT,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f'exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}'
        f'\n--- stderr\n{proc.stderr[-4000:]}'
    )
    return proc


def _data_options(
    paths: dict, root: str | None = None, splits=('train', 'val', 'test')
) -> list[str]:
    """--cfg-options that point the tiny config at the generated data."""
    root = root or paths['data_root']
    ann = osp.join(root, 'annotations', 'instances_val.json')
    options = [f'{split}_dataloader.dataset.data_root={root}/' for split in splits]
    options += [f'{split}_evaluator.ann_file={ann}' for split in splits if split != 'train']
    return options


def _train(config: Path, work_dir: Path, paths: dict, *extra: str):
    return _run(
        [
            sys.executable,
            'tools/train.py',
            str(config),
            '--work-dir',
            str(work_dir),
            *extra,
            '--cfg-options',
            *_data_options(paths),
        ]
    )


def _test(config: Path, ckpt: Path, work_dir: Path, paths: dict, *extra: str):
    return _run(
        [
            sys.executable,
            'tools/test.py',
            str(config),
            str(ckpt),
            '--work-dir',
            str(work_dir),
            *extra,
            '--cfg-options',
            *_data_options(paths),
        ]
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def shapes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('shapes')
    return make_shapes_dataset(root, num_train=8, num_val=4, image_size=64, seed=0)


@pytest.fixture(scope='module')
def gc_run(shapes, tmp_path_factory) -> Path:
    """Two epochs of the GC config, uninterrupted (val after each epoch)."""
    work_dir = tmp_path_factory.mktemp('gc_run')
    _ok(_train(GC_CONFIG, work_dir, shapes))
    return work_dir


@pytest.fixture(scope='module')
def gc_test(gc_run, shapes) -> Path:
    """tools/test.py on the GC run's last checkpoint, predictions dumped."""
    proc = _ok(
        _test(
            GC_CONFIG,
            gc_run / 'epoch_2.pth',
            gc_run,
            shapes,
            '--out',
            str(gc_run / 'predictions.pkl'),
        )
    )
    assert 'Evaluate annotation type *bbox*' in proc.stdout
    assert 'Evaluate annotation type *segm*' in proc.stdout
    return gc_run / 'test_metrics.json'


@pytest.fixture(scope='module')
def base_test(shapes, tmp_path_factory) -> Path:
    """The baseline twin, trained and tested the same way."""
    work_dir = tmp_path_factory.mktemp('base_run')
    _ok(_train(BASE_CONFIG, work_dir, shapes))
    _ok(_test(BASE_CONFIG, work_dir / 'epoch_2.pth', work_dir, shapes))
    return work_dir / 'test_metrics.json'


COCO_KEYS = [
    f'coco/{task}_mAP{suffix}'
    for task in ('bbox', 'segm')
    for suffix in ('', '_50', '_75', '_s', '_m', '_l')
]


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


def test_resume_equals_uninterrupted_run_bit_for_bit(gc_run, shapes, tmp_path):
    """Stop after epoch 1, resume with --resume (auto): same weights.

    The stopped run's work dir holds what a run stopped after epoch 1
    leaves (the run is deterministic, so its epoch-1 checkpoint is the
    unbroken run's); --resume without a path finds it via last_checkpoint.
    """
    work_dir = tmp_path / 'stopped'
    work_dir.mkdir()
    shutil.copy(gc_run / 'epoch_1.pth', work_dir / 'epoch_1.pth')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    proc = _ok(_train(GC_CONFIG, work_dir, shapes, '--resume'))
    assert 'resumed epoch: 1, iter: 4' in proc.stdout + proc.stderr
    assert 'local_safe backend' in proc.stdout + proc.stderr
    resumed = safe_torch_load(str(work_dir / 'epoch_2.pth'))
    unbroken = safe_torch_load(str(gc_run / 'epoch_2.pth'))
    _assert_same_checkpoint(unbroken, resumed)


class _RunsCode:
    """Unpickling it would run a shell command (weights_only=False would)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_resume_refuses_malicious_checkpoint(gc_run, shapes, tmp_path):
    marker = tmp_path / 'code_ran'
    evil = tmp_path / 'evil.pth'
    ckpt = safe_torch_load(str(gc_run / 'epoch_1.pth'))
    ckpt['meta']['note'] = _RunsCode(str(marker))
    torch.save(ckpt, evil)
    proc = _train(GC_CONFIG, tmp_path / 'work', shapes, '--resume', str(evil))
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert f"Refusing to load checkpoint '{evil}'" in last_line
    assert "'posix.system'" in last_line or "'nt.system'" in last_line
    assert not marker.exists()


def test_test_tool_reports_truncated_checkpoint(gc_run, shapes, tmp_path):
    broken = tmp_path / 'truncated.pth'
    data = (gc_run / 'epoch_2.pth').read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    proc = _test(GC_CONFIG, broken, tmp_path / 'work', shapes)
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert f"Cannot read checkpoint '{broken}'" in last_line
    assert 'truncated or corrupt' in last_line


def test_missing_data_root_stops_before_the_runner(shapes, tmp_path):
    missing = tmp_path / 'no_such_data'
    work_dir = tmp_path / 'work'
    proc = _run(
        [
            sys.executable,
            'tools/train.py',
            str(GC_CONFIG),
            '--work-dir',
            str(work_dir),
            '--cfg-options',
            *_data_options(shapes, root=str(missing)),
        ]
    )
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert 'MissingDataError' in last_line
    assert f"'{missing}/'" in last_line
    assert 'train_dataloader.dataset.data_root' in last_line
    # The Runner creates the work dir before it builds the model: the check
    # stopped the run earlier than that.
    assert not work_dir.exists()


def test_dist_train_two_cpu_processes_keep_identical_weights(shapes, tmp_path):
    work_dir = tmp_path / 'dist'
    env = _env(extra_path=str(ROOT / 'tests' / 'data'))
    env.update(PYTHON=sys.executable, PORT=str(_free_port()))
    proc = _run(
        [
            'bash',
            'tools/dist_train.sh',
            str(DIST_CONFIG),
            '2',
            '--work-dir',
            str(work_dir),
            '--cfg-options',
            *_data_options(shapes, splits=('train', 'test')),  # no validation
        ],
        env=env,
    )
    _ok(proc)
    assert "dist_cfg=dict(backend='gloo')" in proc.stdout + proc.stderr
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


def test_compare_ap_on_real_result_files(gc_test, base_test, tmp_path):
    out_dir = tmp_path / 'report'
    proc = _ok(
        _run(
            [
                sys.executable,
                'tools/compare_ap.py',
                str(gc_test),
                str(base_test),
                '--out-dir',
                str(out_dir),
            ]
        )
    )
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


def test_compare_ap_refuses_runs_that_differ_beyond_the_optimizer(gc_test, base_test, tmp_path):
    record = json.loads(base_test.read_text())
    record['config_text'] = record['config_text'].replace('batch_size=2', 'batch_size=3', 1)
    altered = tmp_path / 'test_metrics.json'
    altered.write_text(json.dumps(record))
    proc = _run(
        [
            sys.executable,
            'tools/compare_ap.py',
            str(gc_test),
            str(altered),
            '--out-dir',
            str(tmp_path / 'report'),
        ]
    )
    assert proc.returncode == 2
    assert 'differ in more than the optimizer' in proc.stderr
    assert 'batch_size' in proc.stderr
    assert not (tmp_path / 'report').exists()
