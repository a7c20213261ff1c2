"""tools/train_pair.sh: a GC config and its twin over seeds, tested, compared.

The plan (which launcher, which twin, what is skipped or resumed, --gc on a
config without a twin) is checked with --dry-run; the runner's own logic (side
by side, console logs and progress, a failed run's log, runs trained with other
arguments moved aside, --retrain) on a stand-in python that logs like MMEngine.
One real run trains the tiny Mask R-CNN twins (tests/data/configs/
mask_rcnn_tiny_gc_fault.py and its baseline: 2 epochs of two iterations on 4
images, no validation) for one seed; the GC run of the first call is killed
(SIGKILL after its 3rd iteration, by tests/data/fault_hooks.py) and the second
call continues it. The README's
train_pair.sh line (tests/tools/test_readme_commands.py) runs two seeds on two
gloo processes per run, and tests/runtime/test_demo.py runs the demo on it.
"""

from __future__ import annotations

import csv
import json
import re
import sys

import pytest

GC = 'tests/data/configs/mask_rcnn_tiny_gc_fault.py'
BASE = 'tests/data/configs/mask_rcnn_tiny_fault.py'
SCRIPT = 'tools/train_pair.sh'
R50 = 'configs/mmdet/mask_rcnn_r50_fpn_gc.py'
CONFIGS = 'tests/data/configs'
#: The baseline, one process, one seed: --gc's errors.
ONE_SEED = (BASE, '1', '--seeds', '0')


def _pair(tools, *args, env=None):
    return tools.run(['bash', SCRIPT, *args], env={'PYTHON': sys.executable, **(env or {})})


# ----------------------------------------------------------------- the plan


def test_dry_run_on_torchrun_finds_the_twin_and_plans_every_step(tools, tmp_path):
    work = tmp_path / 'w'
    proc = tools.ok(
        _pair(tools, R50, '8', '--seeds', '0', '1', '--work-dir', work, '--dry-run', '--', '--amp')
    )
    lines = proc.stdout.splitlines()
    commands = [line for line in lines if not line.startswith('[train_pair.sh]')]
    gc, base = (
        'configs/mmdet/mask_rcnn_r50_fpn_gc.py',
        'configs/mmdet/baselines/mask_rcnn_r50_fpn.py',
    )
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
    options = ('--cfg-options', 'a=1', 'b=2')
    one = tools.ok(
        _pair(tools, tiny_gc, '1', '--seeds', '3', '--work-dir', tmp_path, *options, '--dry-run')
    ).stdout
    assert (
        f'{sys.executable} {tools.root}/tools/train.py tests/data/configs/mask_rcnn_tiny.py '
        f'--work-dir {tmp_path}/seed3/baseline --cfg-options randomness.seed=3 a=1 b=2'
    ) in one
    assert f'{tools.root}/tools/test.py {tiny_gc} {tmp_path}/seed3/gc/\\<last_checkpoint\\> ' in one
    assert f'--work-dir {tmp_path}/seed3/gc --cfg-options a=1 b=2' in one
    args = ['configs/mmdet/faster_rcnn_r50_fpn_gc.py', '16', '--seeds', '2', '--slurm', 'gpu']
    slurm = tools.ok(
        _pair(tools, *args, '--job-name', 'r50', '--work-dir', tmp_path, '--dry-run')
    ).stdout
    assert (
        f'env GPUS=16 bash {tools.root}/tools/slurm_train.sh gpu r50_s2_baseline '
        f'configs/mmdet/baselines/faster_rcnn_r50_fpn.py {tmp_path}/seed2/baseline '
        '--cfg-options randomness.seed=2'
    ) in slurm
    assert (
        f'env GPUS=16 bash {tools.root}/tools/slurm_test.sh gpu r50_s2_gc_test '
        f'configs/mmdet/faster_rcnn_r50_fpn_gc.py {tmp_path}/seed2/gc/\\<last_checkpoint\\> '
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
        _pair(tools, R50, '1', '--seeds', '0', '1', '--work-dir', tmp_path, '--dry-run')
    ).stdout
    assert f'seed 0 gc: done ({done}/test_metrics.json), skipped' in out
    assert f'--work-dir {done}' not in out
    assert 'seed 0 baseline: trained already' in out
    assert (
        f'tools/train.py configs/mmdet/baselines/mask_rcnn_r50_fpn.py --work-dir {trained}'
        not in out
    )
    assert (
        f'tools/test.py configs/mmdet/baselines/mask_rcnn_r50_fpn.py {trained}/epoch_12.pth' in out
    )
    assert 'seed 1 gc: continuing from its last checkpoint' in out
    assert f'--work-dir {stopped} --resume --cfg-options randomness.seed=1' in out
    assert f'{stopped}/epoch_5.pth' in out
    assert 'seed 1 baseline: training' in out


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
        ([R50, '8', '--seeds', '0', '--side-by-side'], "GPUS must be 1; got '8'"),
        ([R50, '1', '--seeds', '0', '--side-by-side', '--slurm', 'p'], 'drop it or --slurm'),
        ([R50, '1', '--seeds', '0', '--threads', '0'], "whole number >= 1; got '0'"),
        (
            [*ONE_SEED, '--gc', '--base-config', R50],
            '--gc trains CONFIG itself as the baseline; drop',
        ),
        ([*ONE_SEED, '--gc-layers', 'conv'], '--gc-layers needs --gc'),
        ([*ONE_SEED, '--gc-variant', 'sgdw'], '--gc-variant needs --gc'),
        ([*ONE_SEED, '--gc', '--gc-variant'], '--gc-variant needs a value'),
    ],
)
def test_argument_errors(tools, args, match):
    proc = _pair(tools, *args, '--dry-run')
    assert proc.returncode == 2, tools.output(proc)
    assert match in proc.stderr


def test_dry_run_with_gc_pairs_a_config_with_itself(tools, tmp_path):
    """--gc: CONFIG (any config, no twin file) with tools/train.py --gc is the
    GC side, CONFIG itself the baseline; both are tested with CONFIG."""
    base = 'configs/mmdet/baselines/mask_rcnn_r50_fpn.py'
    gc = ['--gc', '--gc-layers', 'conv', '--gc-variant', 'update']
    out = tools.ok(
        _pair(tools, base, '1', '--seeds', '4', *gc, '--work-dir', tmp_path, '--dry-run')
    ).stdout
    train = f'{sys.executable} {tools.root}/tools/train.py {base} --work-dir {tmp_path}/seed4'
    assert (
        f'{train}/gc --gc --gc-layers conv --gc-variant update --cfg-options randomness.seed=4'
    ) in out
    assert f'{train}/baseline --cfg-options randomness.seed=4 ' in out
    assert f'{tools.root}/tools/test.py {base} {tmp_path}/seed4/gc/\\<last_checkpoint\\>' in out
    assert f'with --gc --gc-layers conv --gc-variant update, baseline {base}' in out


# ------------------------------------- the runner itself, on a stand-in python

FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for python running tools/{train,test,compare_ap}.py: logs like MMEngine.
script=$(basename "$1"); shift
wd=''
while [ $# -gt 0 ]; do [ "$1" = --work-dir ] && wd=$2; shift; done
case $script in
  train.py)
    echo "start $(date +%s.%N) threads=${OMP_NUM_THREADS:-unset}" >>"$wd/calls"
    for i in 1 2 3; do echo "Iter(train) [$i/3]  lr: 1  eta: 0:00:0$((3 - i))"; sleep 0.6; done
    if [[ $wd == *"${FAIL:-none}" ]]; then echo "boom in $wd"; exit 3; fi
    echo "$wd/iter_3.pth" >"$wd/last_checkpoint"
    echo "end $(date +%s.%N)" >>"$wd/calls" ;;
  test.py) echo "Iter(test) [1/1]  eta: 0:00:00"; echo '{}' >"$wd/test_metrics.json" ;;
  compare_ap.py) echo "compared" ;;
esac
"""


@pytest.fixture
def fake(tools, tmp_path):
    """``train_pair.sh CONFIG 1 ARGS`` with the stand-in python, in ``tmp_path/w``."""
    python = tmp_path / 'python'
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)

    def run(*args, env=None):
        cmd = ['bash', SCRIPT, 'tests/data/configs/mask_rcnn_tiny_gc.py', '1', *args]
        env = {'PYTHON': str(python), 'PROGRESS_S': '1', **(env or {})}
        return tools.run([*cmd, '--work-dir', tmp_path / 'w'], env=env, timeout=60)

    return run


def test_side_by_side_trains_a_seeds_runs_at_once_then_the_next_seed(fake, tmp_path):
    out = fake('--seeds', '0', '1', '--side-by-side', '--threads', '3')
    assert out.returncode == 0, out.stderr
    spans = {}  # (seed, side): (start, end) of its training
    for seed, side in [(s, side) for s in (0, 1) for side in ('gc', 'baseline')]:
        wd = tmp_path / f'w/seed{seed}/{side}'
        calls = (wd / 'calls').read_text().split()
        spans[seed, side] = float(calls[1]), float(calls[-1])
        assert calls[2] == 'threads=3' and 'Iter(test) [1/1]' in (wd / 'console.log').read_text()
        record = (wd / 'train_args').read_text()
        assert (
            record.startswith(f'{CONFIGS}/mask_rcnn_tiny')
            and ' GPUS=1 OMP_NUM_THREADS=3 ' in record
        )
    for seed in (0, 1):  # the two sides overlap in time; seed 1 starts once seed 0 has ended
        (gc_start, gc_end), (base_start, base_end) = spans[seed, 'gc'], spans[seed, 'baseline']
        assert gc_start < base_end and base_start < gc_end
    seed0, seed1 = (spans[s, 'gc'] + spans[s, 'baseline'] for s in (0, 1))
    assert max(seed0) < min(seed1)
    assert 'seed 0: gc and baseline at once; console logs' in out.stdout
    assert re.search(r'progress: seed 0 gc [123]/3 \(eta 0:00:0\d\), seed 0 baseline ', out.stdout)
    assert out.stdout.rstrip().endswith('comparing\ncompared')


def test_a_failed_run_ends_in_the_end_of_its_log(fake, tmp_path):
    out = fake('--seeds', '0', '--side-by-side', '--threads', '1', env={'FAIL': 'seed0/gc'})
    assert out.returncode == 3
    log = tmp_path / 'w/seed0/gc/console.log'
    assert f'seed 0 gc failed (exit status 3); the end of its console log ({log}' in out.stderr
    assert f'boom in {tmp_path}/w/seed0/gc' in out.stderr
    assert (tmp_path / 'w/seed0/baseline/test_metrics.json').is_file()  # the other side ran on
    assert 'comparing' not in out.stdout
    again = fake('--seeds', '0', '--console-log', '--threads', '1')  # one after the other
    assert again.returncode == 0, again.stderr
    assert 'seed 0 baseline: done' in again.stdout and 'seed 0 gc: training' in again.stdout


def test_a_run_trained_with_other_arguments_is_moved_aside_never_reused(fake, tmp_path):
    gc = tmp_path / 'w/seed0/gc'
    assert fake('--seeds', '0', '--cfg-options', 'a=1').returncode == 0
    assert not (gc / 'console.log').exists()  # without --console-log: the output is ours
    plan = fake('--seeds', '0', '--cfg-options', 'a=2', '--dry-run')
    assert 'seed 0 gc: trained with other arguments than now' in plan.stdout
    assert 'would be moved aside to' in plan.stdout and 'seed=0 a=2' in plan.stdout
    changed = fake('--seeds', '0', '--cfg-options', 'a=2')
    (aside,) = tmp_path.glob('w/seed0/gc.stale-*')
    assert f'seed 0 gc: trained with other arguments than now ({gc}/train_args: ' in changed.stdout
    assert f'moved aside to {aside}, training again' in changed.stdout
    assert (aside / 'test_metrics.json').is_file() and 'a=1' in (aside / 'train_args').read_text()
    assert 'a=2' in (gc / 'train_args').read_text() and (gc / 'test_metrics.json').is_file()
    same = fake('--seeds', '0', '--cfg-options', 'a=2')  # the same arguments: reused
    assert f'seed 0 gc: done ({gc}/test_metrics.json), skipped\n' in same.stdout
    threads = fake('--seeds', '0', '--cfg-options', 'a=2', '--threads', '2', '--dry-run')
    assert 'seed 0 gc: trained with other arguments' in threads.stdout  # threads change numbers
    (gc / 'train_args').unlink()  # trained by hand, or by an older train_pair.sh
    legacy = fake('--seeds', '0', '--cfg-options', 'a=3')
    assert 'skipped (no train_args: its training arguments are not checked)' in legacy.stdout
    retrain = fake('--seeds', '0', '--cfg-options', 'a=2', '--retrain')
    assert retrain.stdout.count('--retrain; moved aside to') == 2
    assert len(list(tmp_path.glob('w/seed0/*.stale-*'))) == 5  # (a=3 moved the baseline)


@pytest.fixture(scope='module')
def pair(tools, tmp_path_factory):
    """One seed, one process per run: the GC run killed once, then continued."""
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
    return dict(
        work=work, killed=killed, stopped=stopped, base_started=base_started, continued=continued
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
