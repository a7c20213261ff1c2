"""The demo: its configs, its options, its call of the pair runner, its plots,
and its one-line command at a tiny size with two seeds, end to end (and again:
the finished runs reused, a removed one trained again to the same numbers)."""

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config, DictAction
from mmengine.hub import get_config

from mmgc.runtime.shapes import SHAPES_CLASSES
from tests.conftest import load_tool, without_scope

GC = 'configs/demo/mask_rcnn_r18_fpn_shapes_gc.py'
BASELINE = 'configs/demo/baselines/mask_rcnn_r18_fpn_shapes.py'
ITERS = 2
SIDES = ('baseline', 'gc')
SEEDS = (0, 1)
SUFFIX = {'AP': '', 'AP50': '_50', 'AP75': '_75'}  # the rest: _s, _m, _l
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
    return without_scope(Config.fromfile(str(path)).to_dict())


def _demo_config(path, **kwargs) -> Config:
    """``path`` with the demo's options merged in, parsed as tools/train.py parses them."""
    from mmgc.runtime.demo import demo_options

    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg = Config.fromfile(str(path))
    options = demo_options(path, **kwargs)
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', *options]).cfg_options)
    return cfg


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
    assert g['gc'] == dict(layers=('conv', 'fc'))


def test_demo_baseline_is_mmdetections_mask_rcnn_shrunk(baseline_config):
    ours = _load(baseline_config)
    mmdet = without_scope(get_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py').to_dict())
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


BAD_ITERS = [(dict(iters=n), f'iters must be an int >= 1; got {n!r}') for n in (0, -3, True, 2.5)]


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(seeds=()), 'seeds must name at least one training seed; got none'),
        (dict(seeds=(0, -1)), 'seeds must be ints >= 0; got -1'),
        (dict(seeds=(2, 0, 2)), r'seeds must differ; \[2\] given more than once'),
        *BAD_ITERS,
    ],
)
def test_run_demo_rejects_bad_settings_before_any_work(
    gc_config, baseline_config, tmp_path, kwargs, match
):
    from mmgc.runtime.demo import run_demo

    with pytest.raises(ValueError, match=match):
        run_demo(gc_config, baseline_config, **kwargs, data_root=tmp_path / 'data')
    assert not (tmp_path / 'data').exists()


def test_demo_command_rejects_a_repeated_seed(tools, capsys):
    tool = load_tool('run_demo')
    assert tool.parse_args(['--seeds', '0', '1', '2']).seeds == [0, 1, 2]
    assert tool.parse_args(['--seed', '4']).seeds == [4]
    assert tool.parse_args([]).seeds == [0]
    with pytest.raises(SystemExit):
        tool.parse_args(['--seeds', '1', '1'])
    assert '--seeds must differ; got 1 1' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(['--iters', '0'])
    assert 'must be an int >= 1; got 0' in capsys.readouterr().err


def test_demo_options_scale_the_schedule_and_switch_validation_off(
    gc_config, baseline_config, tmp_path
):
    from mmgc.runtime.compare import config_differences

    cfg = _demo_config(baseline_config, data_root=tmp_path / 'd', iters=120)
    assert cfg.train_cfg.max_iters == 120
    warmup, steps = cfg.param_scheduler
    assert warmup.end == 50 and steps.end == 120 and steps.milestones == [80, 110]
    assert cfg.default_hooks.checkpoint.interval == 120
    for split in ('train', 'test'):
        assert cfg[f'{split}_dataloader'].dataset.data_root == str(tmp_path / 'd') + '/'
    assert cfg.test_evaluator.ann_file == str(tmp_path / 'd/annotations/instances_val.json')
    # the test evaluates what validation would: it is off; every iteration is logged
    assert cfg.val_dataloader is None and cfg.val_cfg is None and cfg.val_evaluator is None
    assert cfg.default_hooks.logger.interval == 1 and cfg.log_processor.window_size == 1
    assert cfg.randomness.seed == 0  # the pair runner gives the seed
    # The twins still differ only in the optimizer.
    gc = _demo_config(gc_config, data_root=tmp_path / 'd', iters=120)
    assert config_differences(gc, cfg) == []
    # Without iters, the config's schedule stays.
    plain = _demo_config(baseline_config, data_root=tmp_path / 'd')
    assert plain.train_cfg.max_iters == Config.fromfile(str(baseline_config)).train_cfg.max_iters
    assert plain.param_scheduler == Config.fromfile(str(baseline_config)).param_scheduler


RUNNER = """#!/usr/bin/env bash
printf '%s\\n' "$@" >"$(dirname "$0")/args"
exit 7
"""


def test_run_demo_hands_the_pair_runner_its_settings(gc_config, baseline_config, tmp_path):
    """The demo's one call of tools/train_pair.sh: the twins, the seeds, one process
    per run and its threads, side by side or one after the other, the demo's options;
    --retrain when the data was made anew or the earlier demo's runs are there."""
    from mmgc.runtime.demo import demo_options, run_demo

    (runner := tmp_path / 'runner.sh').write_text(RUNNER)
    dirs = dict(data_root=tmp_path / 'data', work_dir=tmp_path / 'w', report_dir=tmp_path / 'r')

    def call(**kwargs) -> list[str]:
        with pytest.raises(RuntimeError, match=r'train_pair.sh failed \(exit status 7\)'):
            run_demo(gc_config, baseline_config, **dirs, iters=5, runner=runner, **kwargs)
        return (tmp_path / 'args').read_text().splitlines()

    first = call(seeds=[3, 1], num_train=2, num_val=1)
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    options = demo_options(gc_config, data_root=tmp_path / 'data', iters=5)
    expected = [str(gc_config), '1', '--base-config', str(baseline_config), '--seeds', '3', '1']
    expected += ['--work-dir', str(tmp_path / 'w'), '--out-dir', str(tmp_path / 'r')]
    expected += ['--threads', threads, '--side-by-side', '--retrain', '--cfg-options', *options]
    assert first == expected
    again = call(seeds=[3], num_train=2, num_val=1, parallel=False, threads=2)
    assert again[again.index('--threads') :][:3] == ['--threads', '2', '--console-log']
    assert '--retrain' not in again  # the same data, reused
    other = call(seeds=[3], num_train=3, num_val=1)
    assert '--retrain' in other  # other data: every run trained again
    (tmp_path / 'w/seed3/gc').mkdir(parents=True)
    (tmp_path / 'w/seed3/gc/demo_run.json').write_text('{}')  # the earlier demo's record
    assert '--retrain' in call(seeds=[3], num_train=3, num_val=1)


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
def three_seeds(gc_config, baseline_config, tmp_path_factory):
    """Demo-like runs of three seeds (synthetic APs and losses), and the rows of
    their comparison as ``ap_comparison.csv`` holds them."""
    from mmgc.runtime import compare
    from mmgc.runtime.demo import _number

    gc_cfg, base_cfg = Config.fromfile(str(gc_config)), Config.fromfile(str(baseline_config))
    gen = torch.Generator().manual_seed(0)
    runs, results = [], {'gc': [], 'baseline': []}  # (in compare_runs' order)
    for seed in (0, 1, 2):
        for name, cfg in (('baseline', base_cfg), ('gc', gc_cfg)):
            level = 0.62 + (0.03 if name == 'gc' else 0.0) + 0.01 * seed
            metrics = {key: level + 0.2 * (key.endswith('_50')) for key in AP_KEYS}
            metrics['coco/bbox_mAP_l'] = -1.0
            noise = torch.rand(40, generator=gen).tolist()
            losses = [(i, 3.0 / i + 0.05 * noise[i - 1]) for i in range(1, 41)]
            runs.append(dict(name=name, seed=seed, losses=losses))
            seeded = Config(cfg.to_dict())
            seeded.merge_from_dict({'randomness.seed': seed})
            results[name].append(compare.RunResult(f'/w/seed{seed}/{name}', metrics, seeded))
    out, comparison = tmp_path_factory.mktemp('three'), compare.compare_runs(*results.values())
    compare.write_report(comparison, str(out))
    with open(out / 'ap_comparison.csv', newline='') as f:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return runs, rows, comparison


def test_demo_plots_keep_their_legends_off_the_labels(three_seeds):
    from mmgc.runtime.compare import delta_figure
    from mmgc.runtime.demo import ap_figure, loss_figure

    runs, rows, comparison = three_seeds
    figures = [ap_figure(rows, [0, 1, 2]), delta_figure(comparison, 'demo'), loss_figure(runs)]
    for fig in [*figures, loss_figure(runs[:2])]:  # (one seed: every value too)
        assert_legend_clear(fig)


def test_ap_plot_labels_each_bar_with_its_mean(three_seeds):
    from mmgc.runtime.demo import ap_figure

    _, rows, _ = three_seeds
    (ax,) = ap_figure(rows, [0, 1, 2]).axes
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


def _demo_args(tmp) -> list:
    sizes = ['--iters', ITERS, '--num-train', 8, '--num-val', 4, '--seeds', *SEEDS]
    return [*sizes, '--data-root', tmp / 'data', '--work-dir', tmp / 'work']


@pytest.fixture(scope='module')
def demo(tools, tmp_path_factory):
    """A small run of the README's demo command with two seeds (install step skipped)."""
    tmp = tmp_path_factory.mktemp('demo')
    cmd = ['bash', 'tools/run_demo.sh', *_demo_args(tmp), '--report-dir', tmp / 'report']
    env = {'MMGC_SKIP_SETUP': '1', 'MMGC_VENV': sys.prefix}
    proc = tools.ok(tools.run(cmd, env=env, timeout=900))
    return tmp, tools.output(proc)


@pytest.mark.slow
def test_demo_runs_the_pair_runner_a_pair_at_a_time_side_by_side(demo):
    tmp, output = demo
    assert '[demo] 2/3 the pairs: bash ' in output and '/tools/train_pair.sh ' in output
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert f'--threads {threads} --side-by-side --retrain --cfg-options' in output
    at_once = [output.index(f'seed {seed}: gc and baseline at once') for seed in SEEDS]
    assert at_once == sorted(at_once)
    for seed in SEEDS:
        for name in SIDES:
            wd = tmp / 'work' / f'seed{seed}' / name
            assert f'Iter(train) [{ITERS}/{ITERS}]' in (wd / 'console.log').read_text()
            # trained by tools/train.py (run_train makes the checkpoint hook atomic)
            (log,) = [p for p in wd.glob('*/*.log') if 'AtomicCheckpointHook' in p.read_text()]
            assert re.search(rf'randomness = dict\([^)]*\bseed={seed}\b', log.read_text())
            assert json.loads((wd / 'test_metrics.json').read_text())['seed'] == seed


@pytest.mark.slow
def test_demo_report_is_the_comparison_plus_losses_and_timings(demo):
    tmp, output = demo
    report_dir = tmp / 'report'
    assert f'Demo report: {report_dir.resolve() / "report.md"}' in output
    summary = json.loads((report_dir / 'summary.json').read_text())
    assert summary['seeds'] == list(SEEDS) and summary['data']['num_train'] == 8
    runs = summary['runs']
    assert [(r['name'], r['seed']) for r in runs] == [(n, s) for s in SEEDS for n in SIDES]
    for run in runs:
        assert run['iters'] == ITERS
        assert set(AP_KEYS) <= set(run['metrics']), run['name']
        assert all(-1.0 <= run['metrics'][k] <= 1.0 for k in AP_KEYS)
        assert run['train_s'] > 0 and run['eval_s'] > 0
        for key in ('log_file', 'json_log', 'checkpoint'):
            assert Path(run[key]).is_file(), (run['name'], key, run[key])
        assert Path(run['checkpoint']).name == f'iter_{ITERS}.pth'
    by_run = {(r['name'], r['seed']): r for r in runs}
    assert by_run['gc', 0]['config'].endswith('mask_rcnn_r18_fpn_shapes_gc.py')

    report = (report_dir / 'report.md').read_text()
    # The AP section is the comparison's Markdown, as compare_ap.py wrote it.
    assert (report_dir / 'ap_comparison.md').read_text().strip() in report
    for row in (r for r in summary['ap'] if r['verdict'] != 'n/a'):  # (n/a: no such objects)
        key = f'coco/{row["task"]}_mAP' + SUFFIX.get(row['metric'], '_' + row['metric'][-1])
        gc = [100 * by_run['gc', s]['metrics'][key] for s in SEEDS]
        assert row['gc'] == pytest.approx(statistics.mean(gc), abs=1e-3)
        assert row['gc_std'] == pytest.approx(statistics.stdev(gc), abs=1e-3)
    for run in runs:
        assert run['checkpoint'] in report and run['log_file'] in report
    assert re.search(r'overhead over the baseline \(all seeds\): [+-]\d+\.\d% in wall time', report)
    for seed in SEEDS:
        assert f'| gc seed {seed} | {ITERS} |' in report

    # The comparison's files, and the demo's plots and losses.
    assert all((report_dir / f).stat().st_size for f in ('ap_comparison.csv', 'ap_seeds.csv'))
    for name in ('loss.png', 'ap.png', 'ap_deltas.png'):
        data = (report_dir / name).read_bytes()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000
    lines = (report_dir / 'loss.csv').read_text().splitlines()
    assert lines[0] == 'iter,' + ','.join(f'{n}_seed{s}' for s in SEEDS for n in SIDES)
    assert [line.split(',')[0] for line in lines[1:]] == [str(i) for i in range(1, ITERS + 1)]
    for line in lines[1:]:
        assert torch.isfinite(torch.tensor([float(v) for v in line.split(',')[1:]])).all()


@pytest.mark.slow
def test_demo_again_reuses_finished_runs_and_retrains_one_to_the_same_numbers(demo, tools):
    """The same command again trains only the run removed from its work dir, with
    the same per-iteration losses and APs (same seed, data and threads)."""
    tmp, _ = demo
    shutil.rmtree(tmp / 'work' / 'seed1' / 'gc')
    logs = sorted((tmp / 'work').glob('seed*/*/console.log'))
    assert len(logs) == 2 * len(SEEDS) - 1
    before = {log: log.read_bytes() for log in logs}
    cmd = [sys.executable, 'tools/run_demo.py', *_demo_args(tmp), '--report-dir', tmp / 'again']
    output = tools.output(tools.ok(tools.run(cmd, timeout=600)))
    assert {log: log.read_bytes() for log in logs} == before  # no other run started again
    assert 'seed 0 gc: done' in output and 'seed 1 gc: training' in output
    assert '--retrain' not in output  # the data was reused
    first, again = (json.loads((tmp / d / 'summary.json').read_text()) for d in ('report', 'again'))
    assert again['ap'] == first['ap']
    assert [r['metrics'] for r in again['runs']] == [r['metrics'] for r in first['runs']]
    assert (tmp / 'again' / 'loss.csv').read_text() == (tmp / 'report' / 'loss.csv').read_text()
