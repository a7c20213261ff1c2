"""mmgc.runtime.compare.runs: the config check on real configs, pairing by
seed, the paper's deltas from the real metafile, and loading runs."""

from __future__ import annotations

import json

import pytest
import yaml
from mmengine.config import Config

from mmgc.runtime.compare import (
    ConfigMismatchError,
    MissingMetricsError,
    RunResult,
    check_configs,
    config_differences,
    load_run,
    load_runs,
    pair_runs,
    paper_deltas,
)
from mmgc.runtime.errors import ConfigError
from mmgc.runtime.metrics import write_metrics_file


def _with(cfg: Config, **options) -> Config:
    out = Config(cfg.to_dict())
    out.merge_from_dict(options)
    return out


# ------------------------------------------------------------ config check


@pytest.mark.parametrize(
    'gc_name, base_name',
    [
        ('mmdet/mask_rcnn_r50_fpn_gc.py', 'mmdet/baselines/mask_rcnn_r50_fpn.py'),
        ('mask_rcnn_r50_fpn_gc.py', 'mmdet/baselines/mask_rcnn_r50_fpn.py'),  # the forwarder
        ('mmdet/faster_rcnn_x101_32x4d_fpn_gc.py', 'mmdet/baselines/faster_rcnn_x101_32x4d_fpn.py'),
        ('demo/mask_rcnn_r18_fpn_shapes_gc.py', 'demo/baselines/mask_rcnn_r18_fpn_shapes.py'),
    ],
)
def test_repository_twins_are_comparable(tools, tiny, gc_name, base_name):
    assert config_differences(*tiny) == []
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


def test_within_a_side_only_the_seed_may_differ(runs):
    gc = runs('gc', {0: 0.4, 1: 0.4})
    gc[1].config.merge_from_dict({'train_dataloader.batch_size': 4, 'model.backbone.depth': 34})
    check_configs(runs('gc', {0: 0.4, 1: 0.4}), runs('base', {0: 0.4, 1: 0.4}))
    with pytest.raises(
        ConfigMismatchError,
        match=r"GC runs 'gc0' and 'gc1' differ in more than the seed, in: "
        r'model\.backbone\.depth, train_dataloader\.batch_size\.',
    ):
        check_configs(gc, runs('base', {0: 0.4}))
    base = runs('base', {0: 0.4, 1: 0.4})
    base[0].config.merge_from_dict({'optim_wrapper.optimizer.type': 'SGDGC'})
    with pytest.raises(
        ConfigMismatchError, match=r'baseline runs .* optim_wrapper\.optimizer\.type'
    ):
        check_configs(runs('gc', {0: 0.4, 1: 0.4}), base)


def test_across_the_sides_only_the_optimizer_may_differ(runs, coco):
    base = runs('base', {0: 0.4}, **{'optim_wrapper.optimizer.lr': 0.01})
    with pytest.raises(
        ConfigMismatchError,
        match=r"'gc0' with 'base0': their configs differ in more than the optimizer, "
        r'in: optim_wrapper\.optimizer\.lr\. Re-run them with equal settings, or pass '
        '--ignore-keys',
    ):
        check_configs(runs('gc', {0: 0.4}), base)
    check_configs(runs('gc', {0: 0.4}), base, ignore=['optim_wrapper.optimizer.lr'])
    with pytest.raises(ConfigMismatchError, match="No config found for 'b'.*pass --base-config"):
        check_configs(runs('gc', {0: 0.4}), [RunResult('b', coco(0.2), None)])
    assert issubclass(ConfigMismatchError, ConfigError)  # the tools exit 2


# ------------------------------------------------------------------ pairing


def test_several_runs_per_side_pair_by_seed(runs):
    pairs, unpaired = pair_runs(
        runs('gc', {0: 0.40, 1: 0.42, 5: 0.9}), runs('base', {1: 0.41, 0: 0.38, 7: 0.1})
    )
    assert [(p.seed, p.gc.source, p.base.source, p.label) for p in pairs] == [
        (0, 'gc0', 'base0', '0'),
        (1, 'gc1', 'base1', '1'),
    ]
    assert [(side, run.source) for side, run in unpaired] == [('GC', 'gc5'), ('baseline', 'base7')]


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
def test_several_runs_per_side_without_a_shared_seed_is_an_error(runs, gc_seeds, base_seeds, match):
    with pytest.raises(ConfigError, match=match):
        pair_runs(runs('gc', gc_seeds), runs('base', base_seeds))


def test_one_run_per_side_pairs_whatever_the_seeds(runs):
    """MMEngine draws a random seed for a config without one: the README's
    flow (one run of each twin) must still end in a comparison."""
    (pair,), unpaired = pair_runs(runs('gc', {159606443: 0.42}), runs('base', {1021236518: 0.4}))
    assert pair.seed is None and (pair.gc.seed, pair.base.seed) == (159606443, 1021236518)
    assert pair.label == '159606443 (GC) / 1021236518 (baseline)' and unpaired == []
    (same,), _ = pair_runs(runs('gc', {3: 0.42}), runs('base', {3: 0.40}))
    assert same.seed == 3 and same.label == '3'


def test_a_seed_twice_on_a_side_is_an_error(runs):
    gc = runs('gc', {0: 0.4}) + runs('again', {0: 0.5})
    with pytest.raises(ValueError, match=r"GC runs 'gc0' and 'again0' have the same seed \(0\)"):
        pair_runs(gc, runs('base', {0: 0.4}))


def test_unknown_seeds_pair_only_one_run_per_side(runs):
    gc, base = runs('gc', {None: 0.4, 3: 0.4}), runs('base', {None: 0.3, 3: 0.3})
    assert [p.seed for p in pair_runs(gc[:1], base[:1])[0]] == [None]
    with pytest.raises(ValueError, match="'gcNone' has no known seed"):
        pair_runs(gc, base[1:])


# ---------------------------------------------------------------- metafile


def test_paper_deltas_from_the_real_metafile(metafile):
    deltas = paper_deltas(metafile, 'configs/mmdet/mask_rcnn_r50_fpn_gc.py')
    index = yaml.safe_load(open(metafile, encoding='utf-8'))
    entry = next(m for m in index['Models'] if m['Name'] == 'mask_rcnn_r50_fpn_gc')
    expected = {}
    for result in entry['Results']:
        task, prefix = ('bbox', 'box') if result['Task'] == 'Object Detection' else ('segm', 'mask')
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
    assert paper_deltas(None, 'mask_rcnn_r50_fpn_gc') == {}


def test_a_model_not_in_the_metafile_is_an_error_naming_the_valid_ones(metafile):
    with pytest.raises(
        ConfigError,
        match=r"--model 'mask_rcnn_r51' is not in .*metafile.yml; valid names: .*"
        r'faster_rcnn_r101_fpn_gc, .*mask_rcnn_r50_fpn_gc',
    ):
        paper_deltas(metafile, 'mask_rcnn_r51', required=True)


# --------------------------------------------------------------------- input


def test_load_run_reads_the_training_config_and_seed(tiny, tmp_path):
    """A test-time config (lr 0.02, seed 0) and the training config the
    checkpoint recorded (lr 0.01, seed 3): the training one counts."""
    gc_cfg, _ = tiny
    trained = _with(gc_cfg, **{'optim_wrapper.optimizer.lr': 0.01, 'randomness.seed': 3})
    path = write_metrics_file(
        str(tmp_path / 'run' / 'test_metrics.json'),
        {'coco/bbox_mAP': 0.5, 'coco/segm_mAP': float('nan')},
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
        assert run.ap('bbox', 'AP') == pytest.approx(50.0) and run.ap('segm', 'AP') is None
        assert config_differences(run.config, trained) == []
        assert config_differences(run.config, gc_cfg) == [
            'optim_wrapper.optimizer.lr',
            'randomness.seed',
        ]


def test_load_run_with_a_given_config_and_without_plugins(tiny, coco, tmp_path):
    """Comparing needs the configs' values, not their modules; --gc-config and
    --base-config replace a run's own config."""
    gc_cfg, _ = tiny
    plugin = _with(
        gc_cfg, custom_imports=dict(imports=['no_such_plugin_xyz'], allow_failed_imports=False)
    )
    path = write_metrics_file(
        str(tmp_path / 'test_metrics.json'),
        coco(0.5),
        config='x_gc.py',
        checkpoint='epoch_1.pth',
        config_text=plugin.pretty_text,
        train_config_text=plugin.pretty_text,
    )
    assert load_run(path).config.custom_imports.imports == ['no_such_plugin_xyz']
    _with(gc_cfg, **{'randomness.seed': 8}).dump(str(tmp_path / 'other_gc.py'))
    run = load_run(path, config=str(tmp_path / 'other_gc.py'))
    assert (run.config_name, run.seed) == ('other_gc', 8)
    with pytest.raises(FileNotFoundError, match="Config file 'nope.py' does not exist"):
        load_run(path, config='nope.py')


def test_load_run_of_an_older_file_uses_its_test_config(tiny, coco, tmp_path):
    gc_cfg, _ = tiny
    record = {
        'format': 'mmgc-test-metrics/1',
        'config': 'configs/x_gc.py',
        'checkpoint': 'epoch_1.pth',
        'metrics': coco(0.5),
        'config_text': gc_cfg.pretty_text,
    }
    path = tmp_path / 'test_metrics.json'
    path.write_text(json.dumps(record))
    run = load_run(str(path))
    assert run.seed == 0 and config_differences(run.config, gc_cfg) == []


def test_load_run_of_a_training_work_dir(tiny, coco, tmp_path):
    """The last validation, and the config saved beside it, not the test dump."""
    gc_cfg, _ = tiny
    work_dir = tmp_path / 'work'
    vis = work_dir / '20240101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    lines = [
        {'loss': 1.0, 'iter': 1, 'step': 1},
        {**coco(0.2), 'step': 1},
        {**coco(0.3), 'step': 2},
    ]
    (vis / 'scalars.json').write_text('\n'.join(json.dumps(r) for r in lines) + '\n')
    _with(gc_cfg, **{'randomness.seed': 4}).dump(str(vis / 'config.py'))
    _with(gc_cfg, **{'randomness.seed': 5}).dump(str(work_dir / 'x_gc.py'))  # older than beside
    gc_cfg.dump(str(work_dir / 'x_gc_test.py'))  # what tools/test.py dumps
    run = load_run(f'{work_dir}/')
    assert run.source == f'{work_dir}/20240101_000000/vis_data/scalars.json'
    assert run.ap('bbox', 'AP') == pytest.approx(30.0)
    assert run.seed == 4 and run.config_name == 'x_gc'
    (vis / 'config.py').unlink()  # then the config dumped in the work dir
    assert load_run(str(work_dir)).seed == 5


def test_runs_without_metrics_are_named(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(MissingMetricsError, match='holds neither test_metrics.json'):
        load_run(str(tmp_path / 'empty'))
    with pytest.raises(FileNotFoundError, match='neither a work dir nor a metrics file'):
        load_run(str(tmp_path / 'absent'))
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'nothing': 1}))
    with pytest.raises(ConfigError, match="has no 'metrics' object"):
        load_run(str(bad))
    no_coco = tmp_path / 'no_coco.json'
    # a metric no comparison reads (accuracy/top1 is MMPretrain's, compared since issue 29)
    no_coco.write_text(json.dumps({'metrics': {'pascal_voc/mAP': 0.5}}))
    runs, skipped = load_runs([str(tmp_path / 'empty'), str(no_coco)])
    assert runs == []
    assert [path for path, _ in skipped] == [str(tmp_path / 'empty'), str(no_coco)]
    assert 'no COCO bbox or segm metrics' in skipped[1][1]
