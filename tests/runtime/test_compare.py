"""The AP comparison (mmgc.runtime.compare) on real configs and metafile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mmengine.config import Config

from mmgc.runtime.metrics import write_metrics_file
from mmgc.runtime.compare import (
    ConfigMismatchError,
    RunResult,
    compare_runs,
    config_differences,
    load_run,
    paper_deltas,
    rows_to_markdown,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / 'tests' / 'data' / 'configs'
METAFILE = ROOT / 'configs' / 'metafile.yml'


@pytest.fixture(scope='module')
def tiny() -> tuple[Config, Config]:
    return (
        Config.fromfile(str(TINY / 'mask_rcnn_tiny_gc.py')),
        Config.fromfile(str(TINY / 'mask_rcnn_tiny.py')),
    )


def test_gc_twin_differs_only_in_the_optimizer(tiny):
    gc, base = tiny
    assert config_differences(gc, base) == []


@pytest.mark.parametrize(
    'gc_name, base_name',
    [
        ('mask_rcnn_r50_fpn_gc.py', 'baselines/mask_rcnn_r50_fpn.py'),
        ('faster_rcnn_x101_32x4d_fpn_gc.py', 'baselines/faster_rcnn_x101_32x4d_fpn.py'),
        ('demo/mask_rcnn_r18_fpn_shapes_gc.py', 'demo/baselines/mask_rcnn_r18_fpn_shapes.py'),
    ],
)
def test_repository_twins_are_comparable(gc_name, base_name):
    gc_path, base_path = ROOT / 'configs' / gc_name, ROOT / 'configs' / base_name
    if not gc_path.is_file() or not base_path.is_file():
        pytest.skip(f'{gc_name} or its twin is not in this checkout')
    assert config_differences(Config.fromfile(str(gc_path)), Config.fromfile(str(base_path))) == []


@pytest.mark.parametrize(
    'options, expected',
    [
        ({'model.backbone.depth': 34}, ['model.backbone.depth']),
        ({'optim_wrapper.optimizer.lr': 0.01}, ['optim_wrapper.optimizer.lr']),
        (
            {'optim_wrapper.type': 'AmpOptimWrapper', 'optim_wrapper.loss_scale': 'dynamic'},
            ['optim_wrapper.loss_scale', 'optim_wrapper.type'],
        ),
        ({'randomness.seed': 1}, ['randomness.seed']),
        (
            {'train_dataloader.dataset.pipeline.3.prob': 0.0},
            ['train_dataloader.dataset.pipeline'],
        ),
        (
            {'optim_wrapper.paramwise_cfg.norm_decay_mult': 0.0},
            ['optim_wrapper.paramwise_cfg.norm_decay_mult'],
        ),
    ],
)
def test_other_differences_are_named(tiny, options, expected):
    gc, base = tiny
    changed = Config(base.to_dict())
    changed.merge_from_dict(options)
    assert config_differences(gc, changed) == expected


def test_run_local_keys_and_ignore_list(tiny):
    gc, base = tiny
    local = Config(base.to_dict())
    local.merge_from_dict(
        {
            'work_dir': 'elsewhere',
            'launcher': 'pytorch',
            'load_from': 'x.pth',
            'resume': True,
            'env_cfg.dist_cfg.backend': 'gloo',
            'model_wrapper_cfg': dict(type='CPUDistributedDataParallel'),
        }
    )
    assert config_differences(gc, local) == []
    local.merge_from_dict({'train_cfg.max_epochs': 3})
    assert config_differences(gc, local) == ['train_cfg.max_epochs']
    assert config_differences(gc, local, ignore=['train_cfg']) == []


def _metafile_entry(name: str) -> dict:
    index = yaml.safe_load(METAFILE.read_text())
    return next(m for m in index['Models'] if m['Name'] == name)


@pytest.mark.skipif(not METAFILE.is_file(), reason='configs/metafile.yml missing')
def test_paper_deltas_from_the_real_metafile():
    deltas = paper_deltas(str(METAFILE), 'configs/mask_rcnn_r50_fpn_gc.py')
    entry = _metafile_entry('mask_rcnn_r50_fpn_gc')
    expected = {}
    for result in entry['Results']:
        task = 'bbox' if result['Task'] == 'Object Detection' else 'segm'
        prefix = 'box' if task == 'bbox' else 'mask'
        for metric in ('AP', 'AP50', 'AP75'):
            key = f'{prefix} {metric}'
            expected[task, metric] = pytest.approx(
                result['Metrics'][key] - result['Paper Baseline'][key]
            )
    assert deltas == expected
    assert deltas['bbox', 'AP'] == pytest.approx(37.9 - 37.4)  # Table 6, R50
    faster = paper_deltas(str(METAFILE), 'faster_rcnn_r50_fpn_gc')
    assert set(faster) == {('bbox', 'AP'), ('bbox', 'AP50'), ('bbox', 'AP75')}
    assert paper_deltas(str(METAFILE), 'mask_rcnn_tiny_gc') == {}


@pytest.mark.parametrize(
    'text', ['', 'Models: 3', '- just a list', 'Models:\n  - Name: x\n    Results: 5', ':::']
)
def test_malformed_metafile_gives_no_deltas(tmp_path, text):
    path = tmp_path / 'metafile.yml'
    path.write_text(text)
    assert paper_deltas(str(path), 'x') == {}


def _metrics(bbox: float, segm: float | None) -> dict:
    out = {}
    for task, ap in (('bbox', bbox), ('segm', segm)):
        if ap is None:
            continue
        for suffix in ('', '_50', '_75', '_s'):
            out[f'coco/{task}_mAP{suffix}'] = ap
        out[f'coco/{task}_mAP_m'] = -1.0
        out[f'coco/{task}_mAP_l'] = ap / 2
    return out


def test_rows_deltas_and_na(tiny):
    gc_cfg, base_cfg = tiny
    gc = RunResult('gc.json', _metrics(0.412, 0.376), gc_cfg, 'mask_rcnn_r50_fpn_gc')
    base = RunResult('base.json', _metrics(0.405, 0.370), base_cfg, 'mask_rcnn_r50_fpn')
    rows = compare_runs(gc, base, metafile=str(METAFILE))
    by_key = {(r.task, r.metric): r for r in rows}
    assert len(rows) == 12
    assert by_key['bbox', 'AP'].gc == pytest.approx(41.2)
    assert by_key['bbox', 'AP'].delta == pytest.approx(0.7)
    assert by_key['segm', 'APl'].delta == pytest.approx(0.3)
    assert by_key['bbox', 'APm'].gc is None and by_key['bbox', 'APm'].delta is None
    if METAFILE.is_file():
        assert by_key['bbox', 'AP'].paper_delta == pytest.approx(0.5)
    assert by_key['bbox', 'APs'].paper_delta is None
    markdown = rows_to_markdown(rows, gc, base)
    assert '| AP | 41.2 | 40.5 | +0.7 |' in markdown
    assert '| APm | n/a | n/a | n/a | n/a |' in markdown


def test_box_only_runs_have_no_segm_table(tiny):
    gc_cfg, base_cfg = tiny
    rows = compare_runs(
        RunResult('a', _metrics(0.3, None), gc_cfg),
        RunResult('b', _metrics(0.2, None), base_cfg),
    )
    assert {r.task for r in rows} == {'bbox'}


def test_refusal_names_the_keys(tiny):
    gc_cfg, base_cfg = tiny
    other = Config(base_cfg.to_dict())
    other.merge_from_dict({'train_dataloader.batch_size': 8})
    with pytest.raises(ConfigMismatchError, match=r'in: train_dataloader\.batch_size\.'):
        compare_runs(
            RunResult('a', _metrics(0.3, 0.3), gc_cfg),
            RunResult('b', _metrics(0.2, 0.2), other),
        )
    with pytest.raises(ConfigMismatchError, match='pass --base-config'):
        compare_runs(RunResult('a', _metrics(0.3, 0.3), gc_cfg), RunResult('b', {}, None))


def test_load_run_from_file_and_work_dir(tiny, tmp_path):
    gc_cfg, _ = tiny
    path = write_metrics_file(
        str(tmp_path / 'run' / 'test_metrics.json'),
        _metrics(0.5, 0.4),
        config='configs/x_gc.py',
        checkpoint='epoch_1.pth',
        config_text=gc_cfg.pretty_text,
    )
    for source in (path, str(tmp_path / 'run')):
        run = load_run(source)
        assert run.config_name == 'x_gc'
        assert run.ap('bbox', 'AP') == pytest.approx(50.0)
        assert config_differences(run.config, gc_cfg) == []
    with pytest.raises(FileNotFoundError, match='neither a work dir nor a metrics file'):
        load_run(str(tmp_path / 'absent'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='holds neither test_metrics.json'):
        load_run(str(tmp_path / 'empty'))
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'nothing': 1}))
    with pytest.raises(ValueError, match="has no 'metrics' object"):
        load_run(str(bad))
