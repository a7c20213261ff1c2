"""tools/train_pair.sh: a GC config and its twin over seeds, tested, compared.

The plan (which launcher, which twin, what is skipped or resumed, --gc on a
config without a twin) is checked with --dry-run. One real run trains the
tiny Mask R-CNN twins (tests/data/configs/mask_rcnn_tiny_gc_fault.py and its
baseline: 2 epochs of two iterations on 4 images, no validation) for one
seed in one process each; the GC run of the first call is killed (SIGKILL
after its 3rd iteration, by tests/data/fault_hooks.py) and the second call
continues it; a third one (a dry run) would redo nothing. The README's
train_pair.sh line (tests/tools/test_readme_commands.py) runs two seeds on
two gloo processes per run, reuses finished runs, and checks the seed (an
option given only to training) through the test and the comparison.
"""

from __future__ import annotations

import csv
import json
import sys

import pytest

GC = 'tests/data/configs/mask_rcnn_tiny_gc_fault.py'
BASE = 'tests/data/configs/mask_rcnn_tiny_fault.py'
SCRIPT = 'tools/train_pair.sh'


def _pair(tools, *args, env=None):
    return tools.run(['bash', SCRIPT, *args], env={'PYTHON': sys.executable, **(env or {})})


# ----------------------------------------------------------------- the plan


def test_dry_run_on_torchrun_finds_the_twin_and_plans_every_step(tools, tmp_path):
    work = tmp_path / 'w'
    proc = tools.ok(
        _pair(
            tools,
            'configs/mask_rcnn_r50_fpn_gc.py',
            '8',
            '--seeds',
            '0',
            '1',
            '--work-dir',
            work,
            '--dry-run',
            '--',
            '--amp',
        )
    )
    lines = proc.stdout.splitlines()
    commands = [line for line in lines if not line.startswith('[train_pair.sh]')]
    gc, base = 'configs/mask_rcnn_r50_fpn_gc.py', 'configs/baselines/mask_rcnn_r50_fpn.py'
    expected = []
    for seed in (0, 1):
        for side, config in (('gc', gc), ('baseline', base)):
            wd = f'{work}/seed{seed}/{side}'
            expected += [
                f'bash {tools.root}/tools/dist_train.sh {config} 8 --work-dir {wd} --amp '
                f'--cfg-options randomness.seed={seed} ',
                f'bash {tools.root}/tools/dist_test.sh {config} {wd}/\\<last_checkpoint\\> 8 '
                f'--work-dir {wd} ',
            ]
    expected.append(
        f'{sys.executable} {tools.root}/tools/compare_ap.py --gc {work}/seed0/gc {work}/seed1/gc '
        f'--base {work}/seed0/baseline {work}/seed1/baseline --out-dir {work}/compare '
    )
    assert commands == expected
    assert not work.exists()


def test_dry_run_single_process_and_slurm(tools, tmp_path):
    tiny_gc = 'tests/data/configs/mask_rcnn_tiny_gc.py'
    one = tools.ok(
        _pair(
            tools,
            tiny_gc,
            '1',
            '--seeds',
            '3',
            '--work-dir',
            tmp_path,
            '--dry-run',
            '--cfg-options',
            'a=1',
            'b=2',
        )
    ).stdout
    assert (
        f'{sys.executable} {tools.root}/tools/train.py tests/data/configs/mask_rcnn_tiny.py '
        f'--work-dir {tmp_path}/seed3/baseline --cfg-options randomness.seed=3 a=1 b=2'
    ) in one
    assert f'{tools.root}/tools/test.py {tiny_gc} {tmp_path}/seed3/gc/\\<last_checkpoint\\> ' in one
    assert f'--work-dir {tmp_path}/seed3/gc --cfg-options a=1 b=2' in one
    slurm = tools.ok(
        _pair(
            tools,
            'configs/faster_rcnn_r50_fpn_gc.py',
            '16',
            '--seeds',
            '2',
            '--slurm',
            'gpu',
            '--job-name',
            'r50',
            '--work-dir',
            tmp_path,
            '--dry-run',
        )
    ).stdout
    assert (
        f'env GPUS=16 bash {tools.root}/tools/slurm_train.sh gpu r50_s2_baseline '
        f'configs/baselines/faster_rcnn_r50_fpn.py {tmp_path}/seed2/baseline '
        '--cfg-options randomness.seed=2'
    ) in slurm
    assert (
        f'env GPUS=16 bash {tools.root}/tools/slurm_test.sh gpu r50_s2_gc_test '
        f'configs/faster_rcnn_r50_fpn_gc.py {tmp_path}/seed2/gc/\\<last_checkpoint\\> '
        f'--work-dir {tmp_path}/seed2/gc'
    ) in slurm


def test_dry_run_skips_done_runs_and_resumes_stopped_ones(tools, tmp_path):
    done, trained, stopped = (tmp_path / p for p in ('seed0/gc', 'seed0/baseline', 'seed1/gc'))
    for folder in (done, trained, stopped):
        folder.mkdir(parents=True)
    (done / 'test_metrics.json').write_text('{}')
    (trained / 'train_done').write_text('')
    (trained / 'last_checkpoint').write_text(str(trained / 'epoch_12.pth'))
    (stopped / 'last_checkpoint').write_text(str(stopped / 'epoch_5.pth'))
    out = tools.ok(
        _pair(
            tools,
            'configs/mask_rcnn_r50_fpn_gc.py',
            '1',
            '--seeds',
            '0',
            '1',
            '--work-dir',
            tmp_path,
            '--dry-run',
        )
    ).stdout
    assert f'seed 0 gc: done ({done}/test_metrics.json), skipped' in out
    assert f'--work-dir {done}' not in out
    assert 'seed 0 baseline: trained already' in out
    assert f'tools/train.py configs/baselines/mask_rcnn_r50_fpn.py --work-dir {trained}' not in out
    assert f'tools/test.py configs/baselines/mask_rcnn_r50_fpn.py {trained}/epoch_12.pth' in out
    assert 'seed 1 gc: continuing from its last checkpoint' in out
    assert f'--work-dir {stopped} --resume --cfg-options randomness.seed=1' in out
    assert f'{stopped}/epoch_5.pth' in out
    assert 'seed 1 baseline: training' in out


R50 = 'configs/mask_rcnn_r50_fpn_gc.py'


@pytest.mark.parametrize(
    'args, match',
    [
        ([R50, '0', '--seeds', '0'], "GPUS must be a whole number >= 1; got '0'"),
        ([R50, 'two', '--seeds', '0'], "got 'two'"),
        ([R50, '1'], 'give the training seeds: --seeds'),
        ([R50, '1', '--seeds', '1', '-1'], "whole numbers >= 0; got '-1'"),
        ([R50, '1', '--seeds', '0', '2', '0'], 'given more than once: 0'),
        ([R50, '1', '--seeds', 'x'], "whole numbers >= 0; got 'x'"),
        ([R50, '1', '--seeds', '0', '--nope'], "unknown argument '--nope'; valid: --seeds"),
        (['configs/nope_gc.py', '1', '--seeds', '0'], "'configs/nope_gc.py' does not exist"),
        ([str(GC), '1', '--seeds', '0'], 'does not end in _gc); pass --base-config'),
        ([R50, '1', '--seeds', '0', '--base-config', 'x.py'], "config 'x.py' does not exist"),
        ([], 'usage: train_pair.sh CONFIG GPUS --seeds'),
    ],
)
def test_argument_errors(tools, args, match):
    proc = _pair(tools, *args, '--dry-run')
    assert proc.returncode == 2, tools.output(proc)
    assert match in proc.stderr


# ------------------------------------------------------------ for real


def test_dry_run_with_gc_pairs_a_config_with_itself(tools, tmp_path):
    """--gc: CONFIG (any config, no twin file) with tools/train.py --gc is the
    GC side, CONFIG itself the baseline; both are tested with CONFIG."""
    base = 'configs/baselines/mask_rcnn_r50_fpn.py'
    out = tools.ok(
        _pair(
            tools,
            base,
            '1',
            '--seeds',
            '4',
            '--gc',
            '--gc-layers',
            'conv',
            '--gc-variant',
            'update',
            '--work-dir',
            tmp_path,
            '--dry-run',
        )
    ).stdout
    train = f'{sys.executable} {tools.root}/tools/train.py {base} --work-dir {tmp_path}/seed4'
    assert (
        f'{train}/gc --gc --gc-layers conv --gc-variant update --cfg-options randomness.seed=4'
    ) in out
    assert f'{train}/baseline --cfg-options randomness.seed=4 ' in out
    assert f'{tools.root}/tools/test.py {base} {tmp_path}/seed4/gc/\\<last_checkpoint\\>' in out
    assert f'with --gc --gc-layers conv --gc-variant update, baseline {base}' in out


@pytest.mark.parametrize(
    'args, match',
    [
        (['--gc', '--base-config', R50], '--gc trains CONFIG itself as the baseline; drop'),
        (['--gc-layers', 'conv'], '--gc-layers needs --gc'),
        (['--gc-variant', 'sgdw'], '--gc-variant needs --gc'),
        (['--gc', '--gc-variant'], '--gc-variant needs a value'),
    ],
)
def test_gc_argument_errors(tools, args, match):
    proc = _pair(tools, BASE, '1', '--seeds', '0', *args, '--dry-run')
    assert proc.returncode == 2, tools.output(proc)
    assert match in proc.stderr


@pytest.fixture(scope='module')
def pair(tools, tmp_path_factory):
    """One seed, one process per run: the GC run killed once, continued, repeated."""
    work = tmp_path_factory.mktemp('pair')
    # Two iterations per epoch (4 images, 2 per step), two test images.
    options = ['train_dataloader.dataset.indices=4', 'test_dataloader.dataset.indices=2']
    options += tools.data_options(splits=('train', 'test'))
    args = [GC, '1', '--seeds', '0', '--base-config', BASE, '--work-dir', work]
    args += ['--cfg-options', *options]
    killed = _pair(tools, *args, env={'MMGC_FAULT': 'kill_after_iter:3'})
    stopped = {p.name: p.stat().st_mtime_ns for p in (work / 'seed0' / 'gc').iterdir()}
    base_started = (work / 'seed0' / 'baseline').exists()
    continued = tools.ok(_pair(tools, *args))
    again = tools.ok(_pair(tools, *args, '--dry-run'))  # what a third call would do
    return dict(
        work=work,
        killed=killed,
        stopped=stopped,
        base_started=base_started,
        continued=continued,
        again=again,
    )


@pytest.mark.slow
def test_a_killed_run_continues_where_it_stopped(pair, tools):
    killed, work = pair['killed'], pair['work']
    assert killed.returncode != 0
    assert 'seed 0 gc: training' in killed.stdout
    # it died in epoch 2, after saving epoch 1, before anything else ran
    assert 'epoch_1.pth' in pair['stopped'] and 'train_done' not in pair['stopped']
    assert 'test_metrics.json' not in pair['stopped']
    assert not pair['base_started']  # the script stopped at the killed run
    out = tools.output(pair['continued'])
    assert 'seed 0 gc: continuing from its last checkpoint' in out
    assert 'resumed epoch: 1, iter: 2' in out
    for side in ('gc', 'baseline'):
        wd = work / 'seed0' / side
        assert (wd / 'train_done').is_file() and (wd / 'epoch_2.pth').is_file()
        assert (wd / 'last_checkpoint').read_text().strip().endswith('epoch_2.pth')
        record = json.loads((wd / 'test_metrics.json').read_text())
        assert record['checkpoint'].endswith('epoch_2.pth') and record['seed'] == 0


@pytest.mark.slow
def test_the_continued_pair_is_compared(pair):
    out = pair['continued'].stdout
    assert '1 pair of runs (seeds 0), paired by seed:' in out
    report = pair['work'] / 'compare'
    with open(report / 'ap_comparison.csv', newline='') as f:
        rows = {(r['task'], r['metric']): r for r in csv.DictReader(f)}
    assert rows['bbox', 'AP']['pairs'] == '1'
    assert rows['bbox', 'AP']['verdict'] == 'spread unknown (1 seed)'


@pytest.mark.slow
def test_a_finished_pair_is_not_redone(pair, tools):
    out, work = pair['again'].stdout, pair['work']
    for side in ('gc', 'baseline'):
        assert f'seed 0 {side}: done ({work}/seed0/{side}/test_metrics.json)' in out
    assert ': training' not in out and ': testing' not in out
    commands = [line for line in out.splitlines() if not line.startswith('[train_pair.sh]')]
    assert commands == [
        f'{sys.executable} {tools.root}/tools/compare_ap.py --gc {work}/seed0/gc '
        f'--base {work}/seed0/baseline --out-dir {work}/compare '
    ]
