"""The tools on MMSegmentation's and MMPretrain's configs, end to end (issue 29):
``tools/train_pair.sh CONFIG 1 --seeds 0 --gc`` (``tools/train.py`` with ``--gc``
and without, ``tools/test.py`` on each run, ``tools/compare_ap.py``), then the
console script ``mmgc-test`` with ``--out``, on the shapes rendered as a
segmentation set and as a classification set (tests/data/configs/mmseg,
mmpretrain: 2 iterations of tiny models). The tiny configs inherit mmgc's
through ``mmgc::``, so their pipelines and datasets build in the mmgc scope: a
class of another codebase there (such as MMDetection's ``LoadAnnotations``)
would fail the run. The codebase is found from the config's ``default_scope``."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import pytest

from tests.conftest import ExitProbe, codebase_installed

pytestmark = pytest.mark.slow

CONFIGS = {
    'mmseg': 'tests/data/configs/mmseg/fcn_tiny.py',
    'mmpretrain': 'tests/data/configs/mmpretrain/resnet18_tiny.py',
}
#: What each codebase's runs report: a metric key, and the comparison's heading.
REPORTS = {
    'mmseg': ('mIoU', '### sem_seg (mIoU, mAcc, aAcc in %)'),
    'mmpretrain': ('accuracy/top1', '### cls (top-1 and top-5 accuracy, top-1 error in %)'),
}
GC_LOG = 'GCOptimWrapperConstructor: gradient centralization on'
#: Stand-ins for Slurm's srun (the tasks of one node) and scontrol.
FAKE_SLURM = Path(__file__).parents[1] / 'data' / 'fake_slurm'


def _options(root: str) -> list[str]:
    return [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]


@pytest.fixture(
    scope='module', params=[pytest.param(s, marks=codebase_installed(s)) for s in CONFIGS]
)
def flow(request, tools, tmp_path_factory):
    """Per codebase: train_pair.sh's GC run (--gc) and baseline run of its tiny
    config, each tested, and their comparison; then mmgc-test --out on the GC run.
    For MMSegmentation this is docs/codebases.md's line, ``bash tools/train_pair.sh
    configs/mmseg/demo/fcn_r18_shapes.py 1 --seeds 0 --gc --work-dir work_dirs/seg``,
    on the tiny FCN that inherits that config, in a temporary work dir."""
    scope = request.param
    data = request.getfixturevalue('shapes_seg' if scope == 'mmseg' else 'shapes_cls')
    work, config = tmp_path_factory.mktemp(scope), CONFIGS[scope]
    cfg_options = ['--cfg-options', *_options(data['data_root'])]
    pair = ['bash', 'tools/train_pair.sh', config, '1', '--seeds', '0', '--gc', '--work-dir', work]
    steps = dict(pair=tools.ok(tools.run([*pair, *cfg_options], env=dict(PYTHON=sys.executable))))
    console = Path(sys.executable).with_name('mmgc-test')
    args = [console, config, work / 'seed0' / 'gc' / 'iter_2.pth', '--work-dir', work / 'test']
    steps['test'] = tools.ok(tools.run([*args, '--out', work / 'preds.pkl', *cfg_options]))
    return scope, work, steps


def _log(run_dir: Path) -> str:
    """The text of a run's MMEngine log files (``<timestamp>/<timestamp>.log``)."""
    return ''.join(p.read_text() for p in sorted(run_dir.glob('*/*.log')))


def test_gc_trains_only_the_gc_side(flow):
    _, work, _ = flow
    gc, base = work / 'seed0' / 'gc', work / 'seed0' / 'baseline'
    assert GC_LOG in _log(gc)
    assert 'Iter(train) [2/2]' in _log(base) and GC_LOG not in _log(base)
    assert (gc / 'iter_2.pth').is_file() and (base / 'iter_2.pth').is_file()


@pytest.mark.parametrize('tested', ['seed0/gc', 'test'])
def test_test_tools_write_the_codebases_metric(flow, tested):
    """By train_pair.sh (tools/test.py) and by the console script mmgc-test."""
    scope, work, _ = flow
    record = json.loads((work / tested / 'test_metrics.json').read_text())
    key = REPORTS[scope][0]
    assert 0.0 <= record['metrics'][key] <= 100.0, record['metrics']
    assert record['seed'] == 0 and 'SGDGC' in record['train_config_text']


def test_test_out_dumps_the_predictions(flow):
    scope, work, _ = flow
    with open(work / 'preds.pkl', 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == (4 if scope == 'mmseg' else 18)  # the val images / crops


def test_compare_names_the_codebases_metric(flow):
    scope, work, steps = flow
    printed = steps['pair'].stdout
    assert REPORTS[scope][1] in printed, printed
    assert 'COCO AP' not in printed
    rows = (work / 'compare' / 'ap_comparison.csv').read_text().splitlines()
    metric = 'mIoU' if scope == 'mmseg' else 'top-1'
    assert any(row.split(',')[1] == metric for row in rows[1:]), rows


def test_the_tiny_configs_build_their_pipelines_in_the_mmgc_scope(flow):
    """What makes the runs above a test of the mmgc scope: the dumped config's
    pipeline dicts are marked ``_scope_='mmgc'``."""
    scope, work, _ = flow
    dumped = (work / 'seed0' / 'gc' / Path(CONFIGS[scope]).name).read_text()
    assert "_scope_='mmgc', type='LoadImageFromFile'" in dumped
    assert f"default_scope = '{scope}'" in dumped


@codebase_installed('mmseg')
def test_dist_train_runs_a_segmentation_config_on_two_processes(tools, shapes_seg, tmp_path):
    """The launchers are the same for every codebase: tools/dist_train.sh, 2 gloo
    processes, --gc, on the tiny FCN."""
    work = tmp_path / 'dist'
    args = ['bash', 'tools/dist_train.sh', CONFIGS['mmseg'], '2', '--work-dir', work, '--gc']
    env = dict(PYTHON=sys.executable, PORT=str(tools.free_port()))
    proc = tools.ok(tools.run([*args, '--cfg-options', *_options(shapes_seg['data_root'])], env))
    log = _log(work)
    assert 'Distributed training: True' in log and GC_LOG in log
    assert 'CPUDistributedDataParallel' in log and (work / 'iter_2.pth').is_file()
    assert 'mIoU' in tools.output(proc)


def _slurm_env(tools, probe: ExitProbe) -> dict[str, str]:
    """tools/slurm_*.sh on two CPU tasks of one node, srun and scontrol stood in for."""
    return dict(
        probe.env(),
        PATH=os.pathsep.join((str(FAKE_SLURM), tools.env()['PATH'])),
        PYTHON=sys.executable,
        GPUS='2',
        GPUS_PER_NODE='0',
        TASKS_PER_NODE='2',
        MASTER_PORT=str(tools.free_port()),
    )


def test_dist_test_and_slurm_test_run_on_two_processes(flow, tools, request, tmp_path):
    """tools/dist_test.sh (torchrun) and tools/slurm_test.sh (srun's two tasks)
    test the GC run's checkpoint with gloo: the codebase's metric comes out,
    and every rank ends its process group."""
    scope, work, _ = flow
    data = request.getfixturevalue('shapes_seg' if scope == 'mmseg' else 'shapes_cls')
    config, checkpoint = CONFIGS[scope], work / 'seed0' / 'gc' / 'iter_2.pth'
    options = ['--cfg-options', *_options(data['data_root'])]
    dist, slurm = ExitProbe(tools, tmp_path / 'dist'), ExitProbe(tools, tmp_path / 'slurm')
    env = dict(dist.env(), PYTHON=sys.executable, PORT=str(tools.free_port()))
    args = ['bash', 'tools/dist_test.sh', config, checkpoint, '2', '--work-dir', tmp_path / 'd']
    tools.ok(tools.run([*args, *options], env))
    args = ['bash', 'tools/slurm_test.sh', 'cpu', 'test', config, checkpoint]
    tools.ok(tools.run([*args, '--work-dir', tmp_path / 's', *options], _slurm_env(tools, slurm)))
    for run, launcher in ((tmp_path / 'd', 'pytorch'), (tmp_path / 's', 'slurm')):
        log = _log(run)
        assert f'Distributed launcher: {launcher}' in log and 'GPU number: 2' in log
        record = json.loads((run / 'test_metrics.json').read_text())
        assert 0.0 <= record['metrics'][REPORTS[scope][0]] <= 100.0, record['metrics']
    dist.assert_ended('test.py', ranks=2)
    slurm.assert_ended('test.py', ranks=2)


@pytest.mark.parametrize('scope', [pytest.param(s, marks=codebase_installed(s)) for s in CONFIGS])
def test_slurm_train_runs_a_codebases_config_on_two_tasks(scope, tools, request, tmp_path):
    """tools/slurm_train.sh with --gc, srun's two tasks on this machine (gloo):
    the tiny config trains distributed with GC, and every rank ends its group."""
    data = request.getfixturevalue('shapes_seg' if scope == 'mmseg' else 'shapes_cls')
    probe, work = ExitProbe(tools, tmp_path / 'probe'), tmp_path / 'slurm'
    args = ['bash', 'tools/slurm_train.sh', 'cpu', 'train', CONFIGS[scope], work, '--gc']
    options = ['--cfg-options', *_options(data['data_root'])]
    tools.ok(tools.run([*args, *options], _slurm_env(tools, probe)))
    log = _log(work)
    assert 'Distributed launcher: slurm' in log and 'GPU number: 2' in log and GC_LOG in log
    assert (work / 'iter_2.pth').is_file()
    probe.assert_ended('train.py', ranks=2)
