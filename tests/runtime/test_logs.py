"""mmgc.runtime.logs: MMEngine's scalars.json (a real Runner's, and resumed
runs' several files) and test_metrics.json."""

from __future__ import annotations

import json

import pytest
from mmengine.evaluator import BaseMetric

from mmgc.runtime.logs import (
    METRICS_FILENAME,
    last_val_metrics,
    read_metrics,
    read_scalars,
    scalar_files,
    train_series,
)
from mmgc.runtime.metrics import write_metrics_file


def _scalars(work_dir, timestamp, records, tail=''):
    vis = work_dir / timestamp / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in records) + tail)
    return vis / 'scalars.json'


def _train(it, loss, time):
    return {'lr': 0.1, 'loss': loss, 'time': time, 'data_time': 0.1, 'iter': it, 'step': it}


def _val(step, ap, ap50):
    return {
        'coco/bbox_mAP': ap,
        'coco/bbox_mAP_50': ap50,
        'time': 0.2,
        'data_time': 0.1,
        'step': step,
    }


def _gc(step, norm, peak):
    return {'gc/conv/grad_norm': norm, 'gc/conv/grad_max': peak, 'step': step}


@pytest.fixture
def resumed(tmp_path):
    """A run stopped after iteration 3 (its last line half-written) and resumed
    from the checkpoint of iteration 2, in a later timestamp folder."""
    records = [_train(1, 2.0, 0.5), _gc(2, 1.5, 0.5), _train(2, 1.0, 0.4), _val(1, 0.1, 0.2)]
    records.append(_train(3, 0.9, 0.4))
    first = _scalars(tmp_path, '20240101_000000', records, tail='{"lr": 0.1, "lo')
    records = [_train(3, 0.8, 0.3), _gc(4, 1.2, 0.4), _train(4, 0.5, 0.3), _val(2, 0.3, 0.4)]
    second = _scalars(tmp_path, '20240101_010000', records)
    return tmp_path, first, second


def test_scalar_files_oldest_run_first(resumed):
    work_dir, first, second = resumed
    (work_dir / '20231231_235959').mkdir()  # a run that logged nothing
    assert scalar_files(work_dir) == scalar_files(str(work_dir)) == [first, second]
    assert scalar_files(second) == [second]
    with pytest.raises(FileNotFoundError, match=f'no vis_data/scalars.json under {work_dir / "x"}'):
        scalar_files(work_dir / 'x')


def test_read_scalars_skips_a_half_written_last_line(resumed, tmp_path):
    work_dir, first, second = resumed
    assert len(read_scalars(first)) == 5 and len(read_scalars(work_dir)) == 9
    assert read_scalars(work_dir)[5] == json.loads(second.read_text().splitlines()[0])
    bad = _scalars(tmp_path / 'bad', 'ts', [{'step': 1}], tail='{"oops"\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"scalars.json' line 2 is not a JSON record"):
        read_scalars(bad)


def test_train_series_the_later_file_wins(resumed):
    work_dir, first, _ = resumed
    assert train_series(work_dir, 'loss') == [(1, 2.0), (2, 1.0), (3, 0.8), (4, 0.5)]
    assert train_series(first, 'loss') == [(1, 2.0), (2, 1.0), (3, 0.9)]
    # the validation records' time is not a training iteration's
    assert train_series(work_dir, 'time') == [(1, 0.5), (2, 0.4), (3, 0.3), (4, 0.3)]
    assert train_series(work_dir, 'gc/conv/grad_norm') == [(2, 1.5), (4, 1.2)]
    assert train_series(work_dir, 'absent') == []


def test_last_val_metrics(resumed, tmp_path):
    work_dir, first, second = resumed
    assert last_val_metrics(work_dir) == (second, {'coco/bbox_mAP': 0.3, 'coco/bbox_mAP_50': 0.4})
    assert last_val_metrics(first) == (first, {'coco/bbox_mAP': 0.1, 'coco/bbox_mAP_50': 0.2})
    _scalars(tmp_path / 'later', '20240102_000000', [{'loss': 1.0, 'iter': 1, 'step': 1}])
    with pytest.raises(FileNotFoundError, match="no validation metrics \\('coco/...'\\)"):
        last_val_metrics(tmp_path / 'later')


class _Accuracy(BaseMetric):
    """The toy net's accuracy, logged as ``coco/bbox_mAP``."""

    default_prefix = 'coco'

    def process(self, data_batch, data_samples):
        for scores, label in zip(data_samples, data_batch['labels']):
            self.results.append(float(scores.argmax() == label))

    def compute_metrics(self, results):
        return {'bbox_mAP': sum(results) / len(results)}


def test_a_real_runners_scalars(toy_runner, tmp_path):
    """MMEngine's LoggerHook and LocalVisBackend: training records every 4
    iterations (8 a epoch), a validation record after each of 2 epochs."""
    from tests.conftest import ToyData

    runner = toy_runner(
        tmp_path,
        epochs=2,
        batch_size=4,
        val_dataloader=dict(
            dataset=ToyData(8),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=4,
            collate_fn=dict(type='default_collate'),
        ),
        val_cfg=dict(type='ValLoop'),
        val_evaluator=[_Accuracy()],
        default_hooks=dict(logger=dict(type='LoggerHook', interval=4)),
        visualizer=dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')]),
    )
    assert scalar_files(tmp_path) == [tmp_path / runner.timestamp / 'vis_data' / 'scalars.json']
    assert [it for it, _ in train_series(tmp_path, 'loss')] == [4, 8, 12, 16]
    assert [it for it, _ in train_series(tmp_path, 'time')] == [4, 8, 12, 16]
    val = [r for r in read_scalars(tmp_path) if 'coco/bbox_mAP' in r]
    assert len(val) == 2 and 'time' in val[0] and 'iter' not in val[0]
    file, metrics = last_val_metrics(tmp_path)
    assert metrics == {'coco/bbox_mAP': val[-1]['coco/bbox_mAP']}
    assert runner.message_hub.get_scalar('val/coco/bbox_mAP').current() == metrics['coco/bbox_mAP']


def test_read_metrics_of_the_writer(tmp_path, monkeypatch):
    from mmgc.runtime import metrics

    written = []  # the writer's one way to disk: fsync'ed, replaced whole
    atomic = metrics.atomic_write_bytes
    monkeypatch.setattr(metrics, 'atomic_write_bytes', lambda *a: written.append(a) or atomic(*a))
    path = write_metrics_file(
        str(tmp_path / METRICS_FILENAME),
        {'coco/bbox_mAP': 0.5, 'coco/segm_mAP': float('nan'), 'note': 'not a number'},
        config='x.py',
        checkpoint='epoch_1.pth',
        config_text='a = 1',
        seed=3,
    )
    record = read_metrics(path)
    assert [p for _, p in written] == [path]
    assert record['metrics'] == {'coco/bbox_mAP': 0.5, 'coco/segm_mAP': None}
    assert (record['config'], record['seed'], record['train_config_text']) == ('x.py', 3, None)
    assert [p.name for p in tmp_path.iterdir()] == [METRICS_FILENAME]  # no partial file left
    (tmp_path / 'bad.json').write_text('{"metrics": ')
    with pytest.raises(ValueError, match="Metrics file '.*bad.json' is not valid JSON"):
        read_metrics(tmp_path / 'bad.json')
    (tmp_path / 'bad.json').write_text('[1]')
    with pytest.raises(ValueError, match="has no 'metrics' object; expected test_metrics.json"):
        read_metrics(tmp_path / 'bad.json')
