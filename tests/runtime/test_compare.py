"""The AP comparison (mmgc.runtime.compare and tools/compare_ap.py) on real
configs and the real metafile, with seeds, pairing, intervals and verdicts."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from mmengine.config import Config

from mmgc.runtime.compare import (
    SPREAD_UNKNOWN,
    ConfigMismatchError,
    MissingMetricsError,
    RunResult,
    compare_runs,
    comparison_to_markdown,
    config_differences,
    delta_figure,
    load_run,
    load_runs,
    paired_interval,
    paper_deltas,
    write_report,
)
from mmgc.runtime.errors import ConfigError
from mmgc.runtime.metrics import write_metrics_file

# Student's t quantiles t(0.975, df), from printed tables: an independent
# reference for the interval.
T975 = {1: 12.706204736174707, 2: 4.302652729911275, 3: 3.182446305284263}


@pytest.fixture(scope='module')
def tiny(tools) -> tuple[Config, Config]:
    return tuple(
        Config.fromfile(str(tools.configs / f))
        for f in ('mask_rcnn_tiny_gc.py', 'mask_rcnn_tiny.py')
    )


@pytest.fixture(scope='module')
def metafile(tools) -> str:
    return str(tools.root / 'configs' / 'metafile.yml')


def _with(cfg: Config, **options) -> Config:
    out = Config(cfg.to_dict())
    out.merge_from_dict(options)
    return out


def _seeded(cfg: Config, seed: int) -> Config:
    return _with(cfg, **{'randomness.seed': seed})


def _metrics(bbox: float, segm: float | None = None) -> dict:
    """CocoMetric-like results (fractions): AP50 = AP + 0.1, APm absent (-1)."""
    out = {}
    for task, ap in (('bbox', bbox), ('segm', segm)):
        if ap is None:
            continue
        out[f'coco/{task}_mAP'] = ap
        out[f'coco/{task}_mAP_50'] = ap + 0.1
        out[f'coco/{task}_mAP_75'] = ap - 0.1
        out[f'coco/{task}_mAP_s'] = ap
        out[f'coco/{task}_mAP_m'] = -1.0
        out[f'coco/{task}_mAP_l'] = ap / 2
    return out


def _runs(cfg: Config, side: str, aps: dict[int, float]) -> list[RunResult]:
    return [
        RunResult(f'{side}{seed}', _metrics(ap, ap - 0.05), _seeded(cfg, seed), f'{side}_cfg')
        for seed, ap in aps.items()
    ]


def _row(comparison, task='bbox', metric='AP'):
    return next(r for r in comparison.rows if (r.task, r.metric) == (task, metric))


# ------------------------------------------------------------ config check


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
def test_repository_twins_are_comparable(tools, gc_name, base_name):
    gc = Config.fromfile(str(tools.root / 'configs' / gc_name))
    base = Config.fromfile(str(tools.root / 'configs' / base_name))
    assert config_differences(gc, base) == []


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
    assert config_differences(gc, _with(base, **options)) == expected


def test_run_local_keys_and_ignore_list(tiny):
    gc, base = tiny
    local = _with(
        base,
        work_dir='elsewhere',
        launcher='pytorch',
        load_from='x.pth',
        resume=True,
        **{
            'env_cfg.dist_cfg.backend': 'gloo',
            'model_wrapper_cfg': dict(type='CPUDistributedDataParallel'),
        },
    )
    assert config_differences(gc, local) == []
    local.merge_from_dict({'train_cfg.max_epochs': 3})
    assert config_differences(gc, local) == ['train_cfg.max_epochs']
    assert config_differences(gc, local, ignore=['train_cfg']) == []


def test_seeds_may_differ_within_a_side_and_pair_across(tiny):
    gc_cfg, base_cfg = tiny
    comparison = compare_runs(
        _runs(gc_cfg, 'gc', {0: 0.40, 1: 0.42}), _runs(base_cfg, 'base', {1: 0.41, 0: 0.38})
    )
    assert comparison.seeds == [0, 1]
    assert [(p.gc.source, p.base.source) for p in comparison.pairs] == [
        ('gc0', 'base0'),
        ('gc1', 'base1'),
    ]


def test_within_a_side_other_differences_are_refused(tiny):
    gc_cfg, base_cfg = tiny
    gc = _runs(gc_cfg, 'gc', {0: 0.4, 1: 0.4})
    gc[1].config.merge_from_dict({'train_dataloader.batch_size': 4, 'model.backbone.depth': 34})
    with pytest.raises(
        ConfigMismatchError,
        match=r"GC runs 'gc0' and 'gc1' differ in more than the seed, in: "
        r'model\.backbone\.depth, train_dataloader\.batch_size\.',
    ):
        compare_runs(gc, _runs(base_cfg, 'base', {0: 0.4, 1: 0.4}))
    base = _runs(base_cfg, 'base', {0: 0.4, 1: 0.4})
    base[0].config.merge_from_dict({'optim_wrapper.optimizer.type': 'SGDGC'})
    with pytest.raises(
        ConfigMismatchError, match=r'baseline runs .* optim_wrapper\.optimizer\.type'
    ):
        compare_runs(_runs(gc_cfg, 'gc', {0: 0.4, 1: 0.4}), base)


def test_across_the_sides_other_differences_are_refused(tiny):
    gc_cfg, base_cfg = tiny
    base = _runs(_with(base_cfg, **{'optim_wrapper.optimizer.lr': 0.01}), 'base', {0: 0.4})
    with pytest.raises(
        ConfigMismatchError,
        match=r"'gc0' with 'base0': their configs differ in more than the optimizer, "
        r'in: optim_wrapper\.optimizer\.lr\.',
    ):
        compare_runs(_runs(gc_cfg, 'gc', {0: 0.4}), base)
    with pytest.raises(ConfigMismatchError, match="No config found for 'b'.*pass --base-config"):
        compare_runs(_runs(gc_cfg, 'gc', {0: 0.4}), RunResult('b', _metrics(0.2), None))


# --------------------------------------------------------------- statistics


def test_means_spread_deltas_and_interval_against_references(tiny):
    gc_cfg, base_cfg = tiny
    gc_ap = {0: 0.412, 1: 0.405, 2: 0.431}
    base_ap = {0: 0.401, 1: 0.407, 2: 0.409}
    comparison = compare_runs(_runs(gc_cfg, 'gc', gc_ap), _runs(base_cfg, 'base', base_ap))
    row = _row(comparison)
    gc, base = [100 * gc_ap[s] for s in (0, 1, 2)], [100 * base_ap[s] for s in (0, 1, 2)]
    deltas = [g - b for g, b in zip(gc, base)]
    assert row.gc == pytest.approx(statistics.mean(gc))
    assert row.baseline == pytest.approx(statistics.mean(base))
    assert row.gc_std == pytest.approx(statistics.stdev(gc))
    assert row.baseline_std == pytest.approx(statistics.stdev(base))
    assert row.seed_deltas == pytest.approx(dict(zip((0, 1, 2), deltas)))
    assert row.delta == pytest.approx(statistics.mean(deltas))
    half = T975[2] * statistics.stdev(deltas) / math.sqrt(3)
    assert row.interval == pytest.approx((row.delta - half, row.delta + half))
    # deltas +1.1, -0.2, +2.2: the interval contains zero
    assert row.verdict == 'no clear difference'
    # APm is -1 (no such objects) in every run: n/a everywhere
    apm = _row(comparison, 'bbox', 'APm')
    assert apm.gc is None and apm.delta is None and apm.verdict == 'n/a'


@pytest.mark.parametrize(
    'gc_ap, verdict',
    [
        ({0: 0.42, 1: 0.43, 2: 0.44, 3: 0.425}, 'GC higher'),
        ({0: 0.38, 1: 0.39, 2: 0.40, 3: 0.385}, 'GC lower'),
        ({0: 0.41, 1: 0.40, 2: 0.43, 3: 0.395}, 'no clear difference'),
    ],
)
def test_verdicts_follow_the_interval(tiny, gc_ap, verdict):
    gc_cfg, base_cfg = tiny
    base_ap = {0: 0.40, 1: 0.41, 2: 0.42, 3: 0.405}
    row = _row(compare_runs(_runs(gc_cfg, 'gc', gc_ap), _runs(base_cfg, 'base', base_ap)))
    low, high = row.interval
    deltas = list(row.seed_deltas.values())
    half = T975[3] * statistics.stdev(deltas) / 2
    assert (low, high) == pytest.approx(
        (statistics.mean(deltas) - half, statistics.mean(deltas) + half)
    )
    assert row.verdict == verdict
    assert (low > 0) == (verdict == 'GC higher') and (high < 0) == (verdict == 'GC lower')


def test_paired_interval_edge_cases():
    assert paired_interval([0.5]) is None
    assert paired_interval([0.3, 0.3, 0.3]) == (0.3, 0.3)  # no spread: zero width
    low, high = paired_interval([1.0, 3.0])
    assert (low, high) == pytest.approx((2.0 - T975[1] * 1.0, 2.0 + T975[1] * 1.0))
    with pytest.raises(ValueError, match='confidence must be in \\(0, 1\\); got 1.5'):
        paired_interval([1.0, 2.0], confidence=1.5)


def test_one_run_per_side_says_the_spread_is_unknown(tiny, metafile):
    gc_cfg, base_cfg = tiny
    comparison = compare_runs(
        RunResult('gc.json', _metrics(0.412, 0.376), gc_cfg, 'mask_rcnn_r50_fpn_gc'),
        RunResult('base.json', _metrics(0.405, 0.370), base_cfg, 'mask_rcnn_r50_fpn'),
        metafile=metafile,
    )
    row = _row(comparison)
    assert row.gc == pytest.approx(41.2) and row.delta == pytest.approx(0.7)
    assert row.gc_std is None and row.interval is None
    assert row.verdict == SPREAD_UNKNOWN
    assert row.paper_delta == pytest.approx(0.5)  # Table 6, R50: 37.9 - 37.4
    assert _row(comparison, 'bbox', 'APs').paper_delta is None
    assert any('spread over seeds is unknown' in note for note in comparison.notes())
    markdown = comparison_to_markdown(comparison)
    assert '| AP | 41.2 | 40.5 | +0.70 | unknown | 0: +0.7 | +0.5 | spread unknown (1 seed) |' in (
        markdown
    )
    assert '| APm | n/a | n/a | n/a | n/a | n/a | n/a | n/a |' in markdown


def test_unpaired_seeds_are_named_and_left_out(tiny):
    gc_cfg, base_cfg = tiny
    comparison = compare_runs(
        _runs(gc_cfg, 'gc', {0: 0.40, 1: 0.42, 5: 0.9}),
        _runs(base_cfg, 'base', {0: 0.39, 1: 0.40, 7: 0.1}),
    )
    assert comparison.seeds == [0, 1]
    row = _row(comparison)
    assert row.gc == pytest.approx(41.0)  # seed 5's 90 is not in the mean
    assert row.baseline == pytest.approx(39.5)
    notes = '\n'.join(comparison.notes())
    assert "GC run 'gc5' (seed 5)" in notes and "baseline run 'base7' (seed 7)" in notes
    assert "GC run 'gc5' (seed 5)" in comparison_to_markdown(comparison)


@pytest.mark.parametrize(
    'gc_seeds, base_seeds, match',
    [
        (
            {0: 0.4, 1: 0.4},
            {2: 0.4, 3: 0.4},
            r'No seed is on both sides.*\[.0., .1.\].*\[.2., .3.\]',
        ),
        ({0: 0.4, 1: 0.4}, {2: 0.4}, 'No seed is on both sides'),
    ],
)
def test_several_runs_per_side_without_a_shared_seed_is_an_error(tiny, gc_seeds, base_seeds, match):
    gc_cfg, base_cfg = tiny
    with pytest.raises(ConfigError, match=match):
        compare_runs(_runs(gc_cfg, 'gc', gc_seeds), _runs(base_cfg, 'base', base_seeds))


def test_one_run_per_side_pairs_whatever_the_seeds(tiny):
    """MMEngine draws a random seed for a config without one: the README's
    flow (one run of each twin) must still end in a comparison."""
    gc_cfg, base_cfg = tiny
    comparison = compare_runs(
        _runs(gc_cfg, 'gc', {159606443: 0.42}), _runs(base_cfg, 'base', {1021236518: 0.40})
    )
    ((seed, gc, base),) = comparison.pairs
    assert seed is None and (gc.seed, base.seed) == (159606443, 1021236518)
    row = _row(comparison)
    assert row.delta == pytest.approx(2.0) and row.verdict == SPREAD_UNKNOWN
    markdown = comparison_to_markdown(comparison)
    label = '159606443 (GC) / 1021236518 (baseline)'
    assert f'1 pair of runs (seeds {label}), the only run of each side:' in markdown
    assert f'| {label} | `gc159606443` | `base1021236518` |' in markdown
    assert f'| {label}: +2.0 |' in markdown
    notes = comparison.notes()
    assert any(
        'paired although their seeds differ (GC seed 159606443, baseline seed 1021236518)' in n
        for n in notes
    )
    assert any('spread over seeds is unknown' in n for n in notes)
    # the same seed on both sides: an ordinary pair, nothing more said
    same = compare_runs(_runs(gc_cfg, 'gc', {3: 0.42}), _runs(base_cfg, 'base', {3: 0.40}))
    assert same.seeds == [3] and not any('differ' in n for n in same.notes())
    assert '1 pair of runs (seeds 3), paired by seed:' in comparison_to_markdown(same)


def test_the_comparisons_refusals_are_user_errors(tiny):
    """ConfigError: the tools end them in one line with exit status 2."""
    assert issubclass(ConfigMismatchError, ConfigError)
    gc_cfg, base_cfg = tiny
    with pytest.raises(ConfigError, match='No GC run with metrics to compare'):
        compare_runs([], _runs(base_cfg, 'base', {0: 0.4}))


def test_enable_gc_on_a_config_is_comparable_with_the_config(tiny):
    """A pair without a twin file (train_pair.sh --gc): the config with
    enable_gc against the config itself differs only in the allowed keys."""
    from mmgc.engine.optimizers.gc_switch import enable_gc

    _, base_cfg = tiny
    for options in ({}, dict(layers=('conv',), variant='update'), dict(variant='sgdw')):
        gc = Config(base_cfg.to_dict())
        enable_gc(gc, **options)
        assert config_differences(gc, base_cfg) == [], options
        assert 'optim_wrapper.gc.variant' in config_differences(gc, base_cfg, allowed=())


def test_a_seed_twice_on_a_side_is_an_error(tiny):
    gc_cfg, base_cfg = tiny
    gc = _runs(gc_cfg, 'gc', {0: 0.4}) + _runs(gc_cfg, 'again', {0: 0.5})
    with pytest.raises(ValueError, match=r"GC runs 'gc0' and 'again0' have the same seed \(0\)"):
        compare_runs(gc, _runs(base_cfg, 'base', {0: 0.4}))


def test_unknown_seeds_pair_only_one_run_per_side(tiny):
    gc_cfg, base_cfg = tiny
    no_seed = _with(gc_cfg, **{'randomness.seed': None})
    base_no_seed = _with(base_cfg, **{'randomness.seed': None})
    single = compare_runs(
        RunResult('g', _metrics(0.4), no_seed), RunResult('b', _metrics(0.3), base_no_seed)
    )
    assert single.seeds == [None] and _row(single).delta == pytest.approx(10.0)
    with pytest.raises(ValueError, match="'g2' has no known seed"):
        compare_runs(
            [
                RunResult('g1', _metrics(0.4), no_seed, seed=3),
                RunResult('g2', _metrics(0.4), no_seed),
            ],
            [RunResult('b1', _metrics(0.3), base_no_seed, seed=3)],
        )


# ---------------------------------------------------------------- metafile


def _metafile_entry(metafile: str, name: str) -> dict:
    index = yaml.safe_load(Path(metafile).read_text())
    return next(m for m in index['Models'] if m['Name'] == name)


def test_paper_deltas_from_the_real_metafile(metafile):
    deltas = paper_deltas(metafile, 'configs/mask_rcnn_r50_fpn_gc.py')
    entry = _metafile_entry(metafile, 'mask_rcnn_r50_fpn_gc')
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
    faster = paper_deltas(metafile, 'faster_rcnn_r50_fpn_gc')
    assert set(faster) == {('bbox', 'AP'), ('bbox', 'AP50'), ('bbox', 'AP75')}
    assert paper_deltas(metafile, 'mask_rcnn_tiny_gc') == {}


def test_a_model_not_in_the_metafile_is_an_error_naming_the_valid_ones(tiny, metafile):
    gc_cfg, base_cfg = tiny
    with pytest.raises(
        ValueError,
        match=r"--model 'mask_rcnn_r51' is not in .*metafile.yml; valid names: .*"
        r'faster_rcnn_r101_fpn_gc, .*mask_rcnn_r50_fpn_gc',
    ):
        compare_runs(
            _runs(gc_cfg, 'gc', {0: 0.4}),
            _runs(base_cfg, 'base', {0: 0.4}),
            metafile=metafile,
            model='mask_rcnn_r51',
        )
    chosen = compare_runs(
        _runs(gc_cfg, 'gc', {0: 0.4}),
        _runs(base_cfg, 'base', {0: 0.4}),
        metafile=metafile,
        model='faster_rcnn_r50_fpn_gc',
    )
    assert chosen.model == 'faster_rcnn_r50_fpn_gc'
    assert _row(chosen).paper_delta == pytest.approx(37.0 - 36.4)  # Table 5, R50


@pytest.mark.parametrize(
    'text', ['', 'Models: 3', '- just a list', 'Models:\n  - Name: x\n    Results: 5', ':::']
)
def test_malformed_metafile_gives_no_deltas(tmp_path, text):
    path = tmp_path / 'metafile.yml'
    path.write_text(text)
    assert paper_deltas(str(path), 'x') == {}


# --------------------------------------------------------------------- input


def test_load_run_reads_the_training_config_and_seed(tiny, tmp_path):
    """A test-time config (lr 0.02, seed 0) and the training config the
    checkpoint recorded (lr 0.01, seed 3): the training one counts."""
    gc_cfg, _ = tiny
    trained = _with(gc_cfg, **{'optim_wrapper.optimizer.lr': 0.01, 'randomness.seed': 3})
    path = write_metrics_file(
        str(tmp_path / 'run' / 'test_metrics.json'),
        _metrics(0.5, 0.4),
        config='configs/x_gc.py',
        checkpoint='epoch_1.pth',
        config_text=gc_cfg.pretty_text,
        train_config_text=trained.pretty_text,
        seed=3,
    )
    for source in (path, str(tmp_path / 'run')):
        run = load_run(source)
        assert run.config_name == 'x_gc'
        assert run.seed == 3
        assert run.ap('bbox', 'AP') == pytest.approx(50.0)
        assert config_differences(run.config, trained) == []
        assert config_differences(run.config, gc_cfg) == [
            'optim_wrapper.optimizer.lr',
            'randomness.seed',
        ]


def test_load_run_does_not_import_the_runs_plugins(tiny, tmp_path):
    """Comparing needs the configs' values, not their modules."""
    gc_cfg, _ = tiny
    plugin = _with(
        gc_cfg, custom_imports=dict(imports=['no_such_plugin_xyz'], allow_failed_imports=False)
    )
    path = write_metrics_file(
        str(tmp_path / 'test_metrics.json'),
        _metrics(0.5),
        config='x_gc.py',
        checkpoint='epoch_1.pth',
        config_text=plugin.pretty_text,
        train_config_text=plugin.pretty_text,
    )
    run = load_run(path)
    assert run.config.custom_imports.imports == ['no_such_plugin_xyz']


def test_load_run_of_an_older_file_uses_its_test_config(tiny, tmp_path):
    gc_cfg, _ = tiny
    record = {
        'format': 'mmgc-test-metrics/1',
        'config': 'configs/x_gc.py',
        'checkpoint': 'epoch_1.pth',
        'metrics': _metrics(0.5),
        'config_text': gc_cfg.pretty_text,
    }
    path = tmp_path / 'test_metrics.json'
    path.write_text(json.dumps(record))
    run = load_run(str(path))
    assert run.seed == 0 and config_differences(run.config, gc_cfg) == []


def test_load_run_of_a_training_work_dir(tiny, tmp_path):
    """The last validation, and the config saved beside it, not the test dump."""
    gc_cfg, _ = tiny
    work_dir = tmp_path / 'work'
    vis = work_dir / '20240101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    lines = [{'loss': 1.0, 'step': 1}, {**_metrics(0.2), 'step': 1}, {**_metrics(0.3), 'step': 2}]
    (vis / 'scalars.json').write_text('\n'.join(json.dumps(r) for r in lines) + '\n')
    _seeded(gc_cfg, 4).dump(str(vis / 'config.py'))
    _seeded(gc_cfg, 5).dump(str(work_dir / 'x_gc.py'))  # older than the copy beside
    gc_cfg.dump(str(work_dir / 'x_gc_test.py'))  # what tools/test.py dumps
    run = load_run(str(work_dir))
    assert run.ap('bbox', 'AP') == pytest.approx(30.0)
    assert run.seed == 4 and run.config_name == 'x_gc'


def test_runs_without_metrics_are_named(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(MissingMetricsError, match='holds neither test_metrics.json'):
        load_run(str(tmp_path / 'empty'))
    with pytest.raises(FileNotFoundError, match='neither a work dir nor a metrics file'):
        load_run(str(tmp_path / 'absent'))
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'nothing': 1}))
    with pytest.raises(ValueError, match="has no 'metrics' object"):
        load_run(str(bad))
    no_coco = tmp_path / 'no_coco.json'
    no_coco.write_text(json.dumps({'metrics': {'accuracy/top1': 0.5}}))
    runs, skipped = load_runs([str(tmp_path / 'empty'), str(no_coco)])
    assert runs == []
    assert [path for path, _ in skipped] == [str(tmp_path / 'empty'), str(no_coco)]
    assert 'no COCO bbox or segm metrics' in skipped[1][1]


def test_box_only_runs_have_no_segm_table(tiny):
    gc_cfg, base_cfg = tiny
    comparison = compare_runs(
        RunResult('a', _metrics(0.3), gc_cfg), RunResult('b', _metrics(0.2), base_cfg)
    )
    assert {r.task for r in comparison.rows} == {'bbox'}


# ------------------------------------------------------------------ output


def test_report_files_agree_with_the_rows(tiny, tmp_path):
    gc_cfg, base_cfg = tiny
    comparison = compare_runs(
        _runs(gc_cfg, 'gc', {0: 0.42, 1: 0.43, 2: 0.44}),
        _runs(base_cfg, 'base', {0: 0.40, 1: 0.41, 2: 0.425}),
    )
    paths = write_report(comparison, str(tmp_path / 'out'))
    assert sorted(Path(p).name for p in paths.values()) == [
        'ap_comparison.csv',
        'ap_comparison.md',
        'ap_deltas.png',
        'ap_seeds.csv',
    ]
    with open(paths['csv'], newline='') as f:
        rows = {(r['task'], r['metric']): r for r in csv.DictReader(f)}
    ap = _row(comparison)
    got = rows['bbox', 'AP']
    assert float(got['gc']) == pytest.approx(ap.gc, abs=1e-3)
    assert float(got['delta']) == pytest.approx(ap.delta, abs=1e-3)
    assert float(got['ci_low']) == pytest.approx(ap.interval[0], abs=1e-3)
    assert got['verdict'] == ap.verdict == 'GC higher'
    assert got['pairs'] == '3' and got['paper_delta'] == ''
    assert rows['bbox', 'APm']['delta'] == '' and rows['bbox', 'APm']['verdict'] == 'n/a'
    with open(paths['seeds_csv'], newline='') as f:
        seeds = [r for r in csv.DictReader(f) if (r['task'], r['metric']) == ('bbox', 'AP')]
    assert [r['seed'] for r in seeds] == ['0', '1', '2']
    assert [float(r['delta']) for r in seeds] == pytest.approx([2.0, 2.0, 1.5])
    markdown = Path(paths['markdown']).read_text()
    assert '### bbox' in markdown and '### segm' in markdown
    assert '| seed | GC run | baseline run |' in markdown and '| 2 | `gc2` | `base2` |' in markdown
    assert '0: +2.0, 1: +2.0, 2: +1.5' in markdown
    assert Path(paths['png']).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_delta_plot_shows_seeds_means_and_the_paper(tiny, metafile):
    """(Its legend's place: tests/runtime/test_demo.py, with the demo's plots.)"""
    gc_cfg, base_cfg = tiny
    gc = _runs(gc_cfg, 'gc', {0: 0.42, 1: 0.43})
    base = _runs(base_cfg, 'base', {0: 0.40, 1: 0.44})
    for run in gc + base:
        run.config_name = 'mask_rcnn_r50_fpn_gc'
    comparison = compare_runs(gc, base, metafile=metafile)
    fig = delta_figure(comparison, 'r50')
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ['each seed', 'mean, 95% interval', "paper's delta"]
    bbox_axes = fig.axes[0]
    # each seed's delta of bbox AP is drawn (+2.0 and -1.0 points)
    points = [
        tuple(xy)
        for collection in bbox_axes.collections
        if collection.get_label() == 'each seed'
        for xy in collection.get_offsets()
    ]
    assert sorted(round(y, 6) for x, y in points if x < 0.5) == pytest.approx([-1.0, 2.0])


# --------------------------------------------------------- the command line


def _tool(tools):
    spec = importlib.util.spec_from_file_location(
        'compare_ap', tools.root / 'tools' / 'compare_ap.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics_file(path: Path, cfg: Config, ap: float, seed: int) -> str:
    return write_metrics_file(
        str(path / 'test_metrics.json'),
        _metrics(ap, ap),
        config=f'{cfg.filename}',
        checkpoint='epoch_1.pth',
        config_text=cfg.pretty_text,
        train_config_text=_seeded(cfg, seed).pretty_text,
        seed=seed,
    )


def test_tool_with_several_runs_per_side(tools, tiny, tmp_path, capsys):
    gc_cfg, base_cfg = tiny
    gc = [_metrics_file(tmp_path / f'gc{s}', gc_cfg, 0.40 + s / 100, s) for s in (0, 1, 2)]
    base = [_metrics_file(tmp_path / f'base{s}', base_cfg, 0.40, s) for s in (0, 1)]
    (tmp_path / 'running').mkdir()  # a run without metrics yet
    out = tmp_path / 'report'
    status = _tool(tools).main(
        ['--gc', *gc, str(tmp_path / 'running'), '--base', *base, '--out-dir', str(out)]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert '### bbox (AP in %)' in printed and '2 pairs of runs (seeds 0, 1)' in printed
    assert f"left out: GC run '{gc[2]}' (seed 2)" in printed
    assert f"left out: '{tmp_path / 'running'}'" in printed
    assert (out / 'ap_deltas.png').is_file() and (out / 'ap_seeds.csv').is_file()


@pytest.mark.parametrize(
    'change, status, match',
    [
        (
            {'train_dataloader.batch_size': 3},
            2,
            'differ in more than the optimizer, in: train_dataloader.batch_size',
        ),
        ({}, 2, "--model 'nope' is not in"),
    ],
)
def test_tool_writes_nothing_on_refusal(tools, tiny, tmp_path, capsys, change, status, match):
    gc_cfg, base_cfg = tiny
    gc = _metrics_file(tmp_path / 'gc', gc_cfg, 0.4, 0)
    base = _metrics_file(tmp_path / 'base', _with(base_cfg, **change), 0.4, 0)
    out = tmp_path / 'report'
    extra = [] if change else ['--model', 'nope']
    assert _tool(tools).main([gc, base, '--out-dir', str(out), *extra]) == status
    assert match in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    'argv, match',
    [
        (['a'], 'expected two runs, GC and BASE; got 1'),
        (['a', 'b', '--gc', 'c'], 'either as GC BASE or with --gc/--base'),
        (['--gc', 'a'], 'give the runs: --gc RUN'),
    ],
)
def test_tool_argument_errors(tools, argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _tool(tools).parse_args(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err
