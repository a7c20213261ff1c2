"""The demo: its configs, its plots, and a small setting of its one-line
command with two seeds, end to end (and again, reusing the finished runs)."""

import ast
import importlib.util
import json
import math
import os
import re
import statistics
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hub import get_config

from mmgc.runtime.shapes import SHAPES_CLASSES

GC = 'configs/demo/mask_rcnn_r18_fpn_shapes_gc.py'
BASELINE = 'configs/demo/baselines/mask_rcnn_r18_fpn_shapes.py'
ITERS = 2
SEEDS = (0, 1)
AP_KEYS = [
    f'coco/{task}_mAP{suffix}'
    for task in ('bbox', 'segm')
    for suffix in ('', '_50', '_75', '_s', '_m', '_l')
]


@pytest.fixture(scope='module')
def gc_config(tools) -> Path:
    return tools.root / GC


@pytest.fixture(scope='module')
def baseline_config(tools) -> Path:
    return tools.root / BASELINE


def _load(path):
    return _unscoped(Config.fromfile(str(path)).to_dict())


def _demo_config(path, **kwargs) -> Config:
    """``path`` with the demo's options for one run merged in."""
    from mmgc.runtime.demo import demo_options

    cfg = Config.fromfile(str(path))
    cfg.merge_from_dict(demo_options(path, **kwargs))
    return cfg


def _unscoped(obj):
    """``obj`` without the ``_scope_`` keys that ``mmdet::`` inheritance adds."""
    if isinstance(obj, dict):
        return {k: _unscoped(v) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unscoped(v) for v in obj)
    return obj


def test_demo_twins_differ_only_in_the_optimizer(gc_config, baseline_config):
    gc, base = _load(gc_config), _load(baseline_config)
    differ = {k for k in set(gc) | set(base) if gc.get(k) != base.get(k)}
    assert differ == {'optim_wrapper', 'custom_imports'}
    assert gc['custom_imports'] == dict(imports=['mmgc'], allow_failed_imports=False)
    g, b = gc['optim_wrapper'], base['optim_wrapper']
    assert b == dict(
        type='OptimWrapper',
        optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001),
    )
    assert g['optimizer'] == {**b['optimizer'], 'type': 'SGDGC'}
    assert g['constructor'] == 'GCOptimWrapperConstructor'
    assert g['paramwise_cfg'] == dict(gc_layers=('conv', 'fc'))


def test_demo_baseline_is_mmdetections_mask_rcnn_shrunk(baseline_config):
    ours = _load(baseline_config)
    mmdet = _unscoped(get_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py').to_dict())
    # MMDetection's optimizer, model type, heads, losses and metric are kept.
    assert ours['optim_wrapper'] == mmdet['optim_wrapper']
    model, ref = ours['model'], mmdet['model']
    assert model['type'] == ref['type'] == 'MaskRCNN'
    assert model['data_preprocessor'] == ref['data_preprocessor']
    for head in ('bbox_head', 'mask_head'):
        assert model['roi_head'][head]['type'] == ref['roi_head'][head]['type']
        assert model['roi_head'][head]['num_classes'] == len(SHAPES_CLASSES)
        for key, value in ref['roi_head'][head].items():
            if key.startswith('loss_'):
                assert model['roi_head'][head][key] == value
    assert model['rpn_head']['anchor_generator'] == ref['rpn_head']['anchor_generator']
    assert ours['val_evaluator']['type'] == 'CocoMetric'
    assert ours['val_evaluator']['metric'] == ['bbox', 'segm']
    # What the data and the CPU require.
    assert model['backbone']['depth'] == 18 and model['backbone']['init_cfg'] is None
    assert model['backbone']['norm_eval'] is False
    assert tuple(ours['train_dataloader']['dataset']['metainfo']['classes']) == (SHAPES_CLASSES)
    assert ours['train_cfg']['type'] == 'IterBasedTrainLoop'
    assert ours['randomness'] == dict(seed=0, deterministic=True)
    assert ours['train_dataloader']['num_workers'] == 0


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(iters=0), 'iters must be an int >= 1; got 0'),
        (dict(seed=-2), 'seed must be an int >= 0; got -2'),
    ],
)
def test_demo_options_reject_bad_settings(gc_config, tmp_path, kwargs, match):
    from mmgc.runtime.demo import demo_options

    with pytest.raises(ValueError, match=match):
        demo_options(gc_config, data_root=tmp_path, **kwargs)


@pytest.mark.parametrize(
    'seeds, match',
    [
        ((), 'seeds must name at least one training seed; got none'),
        ((0, -1), 'seeds must be ints >= 0; got -1'),
        ((2, 0, 2), r'seeds must differ; \[2\] given more than once'),
    ],
)
def test_run_demo_rejects_bad_seeds_before_any_work(
    gc_config, baseline_config, tmp_path, seeds, match
):
    from mmgc.runtime.demo import run_demo

    with pytest.raises(ValueError, match=match):
        run_demo(gc_config, baseline_config, seeds=seeds, data_root=tmp_path / 'data')
    assert not (tmp_path / 'data').exists()


def test_demo_command_rejects_a_repeated_seed(tools, capsys):
    spec = importlib.util.spec_from_file_location('run_demo', tools.root / 'tools/run_demo.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.parse_args(['--seeds', '0', '1', '2']).seeds == [0, 1, 2]
    assert tool.parse_args(['--seed', '4']).seeds == [4]
    assert tool.parse_args([]).seeds == [0]
    with pytest.raises(SystemExit):
        tool.parse_args(['--seeds', '1', '1'])
    assert '--seeds must differ; got 1 1' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(['--iters', '0'])
    assert 'must be an int >= 1; got 0' in capsys.readouterr().err


def test_demo_options_scale_the_schedule_and_add_the_recorder(gc_config, baseline_config, tmp_path):
    from mmgc.runtime.compare import config_differences

    cfg = _demo_config(baseline_config, data_root=tmp_path / 'd', iters=120, seed=3)
    assert cfg.train_cfg.max_iters == cfg.train_cfg.val_interval == 120
    warmup, steps = cfg.param_scheduler
    assert warmup.end == 50 and steps.end == 120 and steps.milestones == [80, 110]
    assert cfg.default_hooks.checkpoint.interval == 120
    assert cfg.randomness.seed == 3
    for split in ('train', 'val', 'test'):
        assert cfg[f'{split}_dataloader'].dataset.data_root == str(tmp_path / 'd') + '/'
    assert cfg.val_evaluator.ann_file == str(tmp_path / 'd/annotations/instances_val.json')
    assert cfg.test_evaluator.ann_file == cfg.val_evaluator.ann_file
    assert [h.type for h in cfg.custom_hooks] == ['DemoRecorderHook']
    assert cfg.custom_imports.imports == ['mmgc.runtime.demo']
    gc = _demo_config(gc_config, data_root=tmp_path / 'd', iters=120, seed=3)
    assert gc.custom_imports.imports == ['mmgc', 'mmgc.runtime.demo']
    # The twins still differ only in the optimizer.
    assert config_differences(gc, cfg) == []
    # Without iters and seed, the config's schedule and seed stay.
    plain = _demo_config(baseline_config, data_root=tmp_path / 'd')
    assert plain.train_cfg.max_iters == Config.fromfile(str(baseline_config)).train_cfg.max_iters
    assert plain.param_scheduler == Config.fromfile(str(baseline_config)).param_scheduler
    assert plain.randomness.seed == 0


def test_demo_modules_do_not_import_each_other_in_a_cycle(tools):
    tree = ast.parse((tools.root / 'mmgc/runtime/demo_report.py').read_text())
    imported = {
        (node.module or '') if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not {'demo', 'mmgc.runtime.demo'} & imported, imported


# ------------------------------------------------------------------ plots


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def assert_legend_clear(fig) -> None:
    """Every legend of ``fig`` lies outside every axes and its labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    assert fig.legends, 'the figure has no figure legend'
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert ax.get_legend() is None, 'a legend inside the axes'
            assert not _overlaps(box, ax.get_window_extent(renderer)), ax.get_title()
            for text in [*ax.texts, *ax.get_xticklabels(), ax.xaxis.label]:
                if text.get_text():
                    assert not _overlaps(box, text.get_window_extent(renderer)), text


@pytest.fixture(scope='module')
def three_seeds(gc_config, baseline_config):
    """Demo-like runs of three seeds (synthetic APs and losses) and their comparison."""
    from mmgc.runtime.compare import RunResult, compare_runs
    from mmgc.runtime.demo_report import DemoRun

    gc_cfg, base_cfg = Config.fromfile(str(gc_config)), Config.fromfile(str(baseline_config))
    gen = torch.Generator().manual_seed(0)
    runs, results = [], {'gc': [], 'baseline': []}
    for seed in (0, 1, 2):
        for name, cfg in (('baseline', base_cfg), ('gc', gc_cfg)):
            level = 0.62 + (0.03 if name == 'gc' else 0.0) + 0.01 * seed
            metrics = {key: level + 0.2 * (key.endswith('_50')) for key in AP_KEYS}
            metrics['coco/bbox_mAP_l'] = -1.0
            losses = [
                (i, 3.0 / i + 0.05 * float(torch.rand(1, generator=gen))) for i in range(1, 41)
            ]
            runs.append(DemoRun(name=name, seed=seed, config=str(cfg.filename),
                                work_dir=f'/w/seed{seed}/{name}', iters=40, metrics=metrics,
                                losses=losses, train_s=30.0, train_cpu_s=29.0))  # fmt: skip
            seeded = Config(cfg.to_dict())
            seeded.merge_from_dict({'randomness.seed': seed})
            results[name].append(RunResult(f'/w/seed{seed}/{name}', metrics, seeded))
    return runs, compare_runs(results['gc'], results['baseline'])


def test_demo_plots_keep_their_legends_off_the_labels(three_seeds):
    from mmgc.runtime.compare import delta_figure
    from mmgc.runtime.demo_report import ap_figure, loss_figure

    runs, comparison = three_seeds
    for fig in (ap_figure(comparison), delta_figure(comparison, 'demo'), loss_figure(runs)):
        assert_legend_clear(fig)


def test_ap_plot_labels_each_bar_with_its_mean(three_seeds):
    from mmgc.runtime.demo_report import ap_figure

    _, comparison = three_seeds
    fig = ap_figure(comparison)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.texts]
    # bbox AP, AP50, AP75 and segm AP, AP50, AP75; baseline bars, then GC bars
    expected = [
        f'{statistics.mean(100 * (0.62 + g + 0.01 * s + d) for s in (0, 1, 2)):.1f}'
        for g in (0.0, 0.03)
        for d in (0.0, 0.2, 0.0, 0.0, 0.2, 0.0)
    ]
    assert labels == expected
    assert 'mean ± 1 std over seeds 0, 1, 2' in ax.get_title()


# ------------------------------------------------------------ end to end


@pytest.fixture(scope='module')
def demo(tools, tmp_path_factory):
    """A small run of the README's demo command with two seeds (install step skipped)."""
    tmp = tmp_path_factory.mktemp('demo')
    cmd = [
        'bash', 'tools/run_demo.sh',
        '--seeds', *SEEDS, '--iters', ITERS, '--num-train', 6, '--num-val', 2,
        '--data-root', tmp / 'data', '--work-dir', tmp / 'work', '--report-dir', tmp / 'report',
    ]  # fmt: skip
    env = {'MMGC_SKIP_SETUP': '1', 'MMGC_VENV': sys.prefix}
    proc = tools.ok(tools.run(cmd, env=env, timeout=900))
    return tmp, tools.output(proc)


@pytest.mark.slow
def test_demo_trains_the_pairs_one_after_another_each_side_by_side(demo):
    tmp, output = demo
    for number, seed in enumerate(SEEDS, start=1):
        line = (
            f'[demo] 2/3 pair {number}/{len(SEEDS)} (seed {seed}, {ITERS} iterations): '
            'training baseline and gc side by side'
        )
        assert line in output
        assert f'[demo] gc seed {seed}: ' in output and 'console log' in output
    assert output.index('pair 1/2') < output.index('pair 2/2')
    # Each run went through tools/train.py's code path (run_train makes the
    # checkpoint hook atomic), with the demo's recorder.
    for seed in SEEDS:
        for name in ('baseline', 'gc'):
            (log,) = (tmp / 'work' / f'seed{seed}' / name).glob('*/*.log')
            text = log.read_text()
            assert 'AtomicCheckpointHook' in text and 'DemoRecorderHook' in text
            assert re.search(rf'randomness = dict\([^)]*\bseed={seed}\b', text)


@pytest.mark.slow
def test_demo_report_shows_mean_spread_and_verdicts(demo):
    tmp, output = demo
    report_dir = tmp / 'report'
    assert f'Demo report: {report_dir.resolve() / "report.md"}' in output
    summary = json.loads((report_dir / 'summary.json').read_text())
    assert summary['seeds'] == list(SEEDS)
    runs = summary['runs']
    assert sorted((r['name'], r['seed']) for r in runs) == [
        (name, seed) for name in ('baseline', 'gc') for seed in SEEDS
    ]
    for run in runs:
        assert run['iters'] == ITERS
        assert set(AP_KEYS) <= set(run['metrics']), run['name']
        assert all(-1.0 <= run['metrics'][k] <= 1.0 for k in AP_KEYS)
        assert run['train_s'] > 0 and run['eval_s'] > 0 and run['total_s'] > 0
        for key in ('log_file', 'json_log', 'checkpoint'):
            assert Path(run[key]).is_file(), (run['name'], key, run[key])
        assert Path(run['checkpoint']).name == f'iter_{ITERS}.pth'
    by_run = {(r['name'], r['seed']): r for r in runs}
    assert by_run['gc', 0]['config'].endswith('mask_rcnn_r18_fpn_shapes_gc.py')

    report = (report_dir / 'report.md').read_text()
    # The AP table is the comparison's: mean ± spread of each side, the
    # paired delta with its interval, each seed's delta and the verdict.
    assert '| seed | GC run | baseline run |' in report
    for row in summary['ap']:
        values = {
            name: [100 * by_run[name, s]['metrics'][f'coco/{row["task"]}_mAP' + _suffix(row)]
                   for s in SEEDS]
            for name in ('gc', 'baseline')
        }  # fmt: skip
        if min(values['gc'] + values['baseline']) < 0:  # COCOeval's -1: no data
            assert row['verdict'] == 'n/a'
            continue
        assert row['gc'] == pytest.approx(statistics.mean(values['gc']))
        assert row['baseline_std'] == pytest.approx(statistics.stdev(values['baseline']))
        deltas = [g - b for g, b in zip(values['gc'], values['baseline'])]
        assert row['delta'] == pytest.approx(statistics.mean(deltas))
        low, high = row['interval']
        half = 12.706204736174707 * statistics.stdev(deltas) / math.sqrt(2)  # t(0.975, 1)
        assert (low, high) == pytest.approx((row['delta'] - half, row['delta'] + half))
        verdict = 'GC higher' if low > 0 else 'GC lower' if high < 0 else 'no clear difference'
        assert row['verdict'] == verdict
        cells = f'| {row["metric"]} | {row["gc"]:.2f} ± {row["gc_std"]:.2f} | '
        assert cells in report, row
        assert f'| {row["paper_delta"] or "n/a"} | {verdict} |' in report
    for run in runs:
        assert run['checkpoint'] in report and run['log_file'] in report
    assert re.search(r'overhead over the baseline \(all seeds\): [+-]\d+\.\d% in wall time', report)
    for seed in SEEDS:
        assert f'| gc seed {seed} | {ITERS} |' in report

    # The comparison's files, and the demo's plots and losses.
    for name in ('ap_comparison.md', 'ap_comparison.csv', 'ap_seeds.csv'):
        assert (report_dir / name).stat().st_size > 0
    for name in ('loss.png', 'ap.png', 'ap_deltas.png'):
        data = (report_dir / name).read_bytes()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000
    lines = (report_dir / 'loss.csv').read_text().splitlines()
    assert lines[0] == 'iter,' + ','.join(f'{n}_seed{s}' for s in SEEDS for n in ('baseline', 'gc'))
    assert len(lines) == ITERS + 1
    for line in lines[1:]:
        losses = [float(v) for v in line.split(',')[1:]]
        assert torch.isfinite(torch.tensor(losses)).all()


def _suffix(row) -> str:
    return {'AP': '', 'AP50': '_50', 'AP75': '_75'}.get(row['metric'], '_' + row['metric'][-1])


@pytest.mark.slow
def test_demo_training_is_deterministic(demo, gc_config):
    """Re-running the GC run of seed 1 on its own (as --sequential does) gives
    the same per-iteration losses and APs."""
    from mmgc.runtime.demo import DemoJob, train_in_parallel

    tmp, _ = demo
    # the demo ran a pair's runs side by side, each with half the CPU threads
    # (results depend on the thread count, so the re-run uses the same)
    threads = max(1, (os.cpu_count() or 1) // 2)
    job = DemoJob('gc', str(gc_config), 1, str(tmp / 'again'), str(tmp / 'data'), ITERS, threads)
    (again,) = train_in_parallel([job])
    lines = (tmp / 'report' / 'loss.csv').read_text().splitlines()
    column = lines[0].split(',').index('gc_seed1')
    first = [(int(line.split(',')[0]), float(line.split(',')[column])) for line in lines[1:]]
    assert again.losses == first
    summary = json.loads((tmp / 'report' / 'summary.json').read_text())
    (run,) = [r for r in summary['runs'] if (r['name'], r['seed']) == ('gc', 1)]
    assert again.metrics == run['metrics']


@pytest.mark.slow
def test_demo_again_reuses_the_finished_runs(demo, gc_config, baseline_config):
    """The same demo again trains nothing: each run finished earlier is reused."""
    from mmgc.runtime.demo import run_demo

    tmp, _ = demo
    logs = sorted((tmp / 'work').glob('seed*/*/console.log'))
    assert len(logs) == 2 * len(SEEDS)
    before = {log: log.read_bytes() for log in logs}
    result = run_demo(
        gc_config, baseline_config, seeds=SEEDS, iters=ITERS, num_train=6, num_val=2,
        data_root=tmp / 'data', work_dir=tmp / 'work', report_dir=tmp / 'report_again',
    )  # fmt: skip
    assert {log: log.read_bytes() for log in logs} == before  # no run started again
    assert result['report_dir'] == str((tmp / 'report_again').resolve())
    first, again = (
        json.loads((tmp / d / 'summary.json').read_text()) for d in ('report', 'report_again')
    )
    assert again['runs'] == first['runs'] and again['ap'] == first['ap']
