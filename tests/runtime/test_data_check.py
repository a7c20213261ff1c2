"""Missing-data checks on real configs (mmgc.runtime.data_check)."""

from __future__ import annotations

import copy
import shutil

import pytest
from mmengine.config import Config

from mmgc.runtime.data_check import MissingDataError, check_data_paths, data_paths

TINY = 'tests/data/configs/mask_rcnn_tiny_gc.py'


pytestmark = pytest.mark.usefixtures('in_the_repository')


def _config(data_root: str) -> Config:
    cfg = Config.fromfile(TINY)
    ann = f'{data_root}/annotations/instances_val.json'
    splits = ('train', 'val', 'test')
    cfg.merge_from_dict({f'{s}_dataloader.dataset.data_root': data_root + '/' for s in splits})
    cfg.merge_from_dict({f'{s}_evaluator.ann_file': ann for s in ('val', 'test')})
    return cfg


def test_paths_of_a_train_run(shapes):
    root = shapes['data_root']
    found = {(p.where, p.kind, p.path) for p in data_paths(_config(root), 'train')}
    assert found == {
        ('train_dataloader.dataset.data_root', 'data root', root + '/'),
        (
            'train_dataloader.dataset.ann_file',
            'annotation file',
            root + '/annotations/instances_train.json',
        ),
        ('train_dataloader.dataset.data_prefix.img', 'image folder', root + '/train/'),
        ('val_dataloader.dataset.data_root', 'data root', root + '/'),
        (
            'val_dataloader.dataset.ann_file',
            'annotation file',
            root + '/annotations/instances_val.json',
        ),
        ('val_dataloader.dataset.data_prefix.img', 'image folder', root + '/val/'),
        ('val_evaluator.ann_file', 'annotation file', shapes['val_ann']),
    }
    # A test run reads only the test split.
    assert {p.where.split('.')[0] for p in data_paths(_config(root), 'test')} == {
        'test_dataloader',
        'test_evaluator',
    }


def test_complete_data_passes(shapes):
    cfg = _config(shapes['data_root'])
    check_data_paths(cfg, 'train')
    check_data_paths(cfg, 'test')


@pytest.mark.parametrize(
    'remove, kind, where',
    [
        (
            'annotations/instances_train.json',
            'annotation file',
            'train_dataloader.dataset.ann_file',
        ),
        ('train', 'image folder', 'train_dataloader.dataset.data_prefix.img'),
        ('val', 'image folder', 'val_dataloader.dataset.data_prefix.img'),
    ],
)
def test_missing_piece_is_named(shapes, tmp_path, remove, kind, where):
    root = tmp_path / 'copy'
    shutil.copytree(shapes['data_root'], root)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(MissingDataError) as info:
        check_data_paths(_config(str(root)), 'train')
    message = str(info.value)
    assert f'The {kind} ' in message
    assert str(target) in message
    assert f'({where})' in message
    assert '--cfg-options train_dataloader.dataset.data_root=' in message or (
        '--cfg-options val_dataloader.dataset.data_root=' in message
    )


def test_missing_data_root_is_named_first(tmp_path):
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(MissingDataError, match=r"The data root '.*nowhere/'"):
        check_data_paths(_config(missing), 'train')


def test_dataset_wrappers_are_walked(shapes, tmp_path):
    cfg = _config(shapes['data_root'])
    inner = cfg.train_dataloader.dataset.to_dict()
    cfg.train_dataloader.dataset = dict(
        type='ConcatDataset',
        datasets=[
            dict(type='RepeatDataset', times=2, dataset=copy.deepcopy(inner)),
            copy.deepcopy(inner),
        ],
    )
    wheres = [p.where for p in data_paths(cfg, 'train')]
    assert 'train_dataloader.dataset.datasets[0].dataset.ann_file' in wheres
    assert 'train_dataloader.dataset.datasets[1].data_prefix.img' in wheres
    cfg.train_dataloader.dataset.datasets[1].ann_file = 'missing.json'
    with pytest.raises(MissingDataError, match=r'datasets\[1\]\.ann_file'):
        check_data_paths(cfg, 'train')


def test_remote_paths_are_not_checked(shapes):
    cfg = _config(shapes['data_root'])
    cfg.train_dataloader.dataset.data_root = 's3://bucket/coco/'
    assert not any(p.where.startswith('train_dataloader') for p in data_paths(cfg, 'train'))


def test_bad_run_kind():
    with pytest.raises(ValueError, match=r"run must be one of \('train', 'test'\); got 'val'"):
        data_paths({}, 'val')


def test_evaluator_lists_and_wrapped_metrics_are_walked(shapes, tmp_path):
    cfg = _config(shapes['data_root'])
    missing = str(tmp_path / 'missing.json')
    cfg.test_evaluator = [
        dict(type='CocoMetric', ann_file=shapes['val_ann']),
        dict(type='Evaluator', metrics=[dict(type='CocoMetric', ann_file=missing)]),
    ]
    wheres = [p.where for p in data_paths(cfg, 'test')]
    assert wheres[-2:] == ['test_evaluator[0].ann_file', 'test_evaluator[1].metrics[0].ann_file']
    # An evaluator's file is named as it is: there is no data_root to point elsewhere.
    with pytest.raises(MissingDataError) as info:
        check_data_paths(cfg, 'test')
    assert str(info.value) == (
        f"The annotation file '{missing}' (test_evaluator[1].metrics[0].ann_file) does not "
        'exist: make the data first, or point the config at it (e.g. --cfg-options '
        'test_evaluator[1].metrics[0].ann_file=...).'
    )
