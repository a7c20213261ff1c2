"""The README and the docs are tests: every command of their ```bash /
```shell blocks runs here, as written and in the order written, with only sizes
swapped for CPU stand-ins.

:data:`PAGES` are the pages, in the order their commands run (a flow's
commands may span pages: "Training a row" in docs/detection.md, then
train_pair.sh in docs/tools.md). :data:`COMMANDS` maps each command's text
(continuation lines joined, comments dropped) to what runs here: one or more
:class:`Run` (the same text with the words of ``swap`` replaced: a paper
config by its stand-in under ``tests/data/configs/readme/``, which inherits the
real config and shrinks it to ResNet-18 on the ``shapes`` data; 8 GPUs by 2
gloo processes; a 12-epoch checkpoint by the stand-in's last; a placeholder
such as ``CONFIG`` by a stand-in), a :class:`RunBy` naming the test file that
runs it as written (with every word of the command in that file), or a
:class:`NotHere` saying why it cannot run on this machine. A command without
an entry, or an entry without its command, fails
:func:`test_every_command_of_the_docs_has_a_stand_in`: a documented command
cannot change without its test.

The commands run in a workspace per flow (a temporary folder whose
``tools``, ``configs`` and ``tests`` are the repository's), with the
virtualenv's ``bin`` first on ``PATH`` (what ``source .venv/bin/activate``
does), so ``python`` and the default ``./work_dirs/<config name>`` are the
docs'. A command whose text appears twice runs once. Multi-node and Slurm
lines cannot run on one machine without Slurm: their launch is checked with a
recording ``python`` / ``srun`` instead, and train_pair.sh's plans with its
``--dry-run``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from mmgc.runtime.checkpoint import safe_torch_load
from tests.conftest import ROOT, assert_same_checkpoint, codebase_installed, run_in_session

pytestmark = pytest.mark.slow

STANDINS = 'tests/data/configs/readme'
GC = f'{STANDINS}/mask_rcnn_r50_fpn_gc.py'
BASE = f'{STANDINS}/baselines/mask_rcnn_r50_fpn.py'
#: One epoch of each, for CONFIG in the lines that only need a run.
SHORT_GC = f'{STANDINS}/short/mask_rcnn_r50_fpn_gc.py'
SHORT_BASE = f'{STANDINS}/short/baselines/mask_rcnn_r50_fpn.py'
#: The paper configs the README names, and their stand-ins (same file names,
#: so the default work dirs are the README's).
CONFIGS = {
    'configs/mmdet/mask_rcnn_r50_fpn_gc.py': GC,
    'configs/mmdet/baselines/mask_rcnn_r50_fpn.py': BASE,
}


def _last(work_dir: str) -> dict:
    """The stand-ins train 2 epochs where the paper configs train 12."""
    return {f'{work_dir}/epoch_12.pth': f'{work_dir}/epoch_2.pth'}


#: 8 (or any number of) GPUs: 2 gloo processes.
GPUS = {'8': '2'}
#: The default work dirs of the two twins (``work_dirs/<config name>``).
NAMES = ('mask_rcnn_r50_fpn_gc', 'mask_rcnn_r50_fpn')
#: MMDetection's own config zoo: tools/check_zoo.py's line checks one small config of it.
ZOO_SAMPLE = (
    Path(importlib.util.find_spec('mmdet').origin).parent
    / '.mim/configs/retinanet/retinanet_r18_fpn_1x_coco.py'
)
#: The other codebases' zoos: one config each (None where the codebase is absent).
CODEBASE_ZOO_SAMPLES = {
    scope: (
        Path(spec.origin).parent / '.mim/configs' / config
        if (spec := importlib.util.find_spec(scope))
        else None
    )
    for scope, config in (
        ('mmseg', 'pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py'),
        ('mmpretrain', 'simclr/simclr_resnet50_16xb256-coslr-200e_in1k.py'),  # LARS: refused
    )
}
RECORDER = '#!/usr/bin/env bash\nprintf "%s\\n" "$0" "$@" > "$RECORD"\n'


@dataclass(frozen=True)
class Run:
    """The command, run in ``flow`` with the words (or phrases) of ``swap``
    replaced; every swapped word must be in the command. ``status``: the exit
    status it must end with."""

    flow: str
    swap: dict = field(default_factory=dict)
    status: int = 0


@dataclass(frozen=True)
class RunBy:
    """A command that ``test_file`` runs as written (at tiny sizes): every word
    of the command is in that file."""

    test_file: str


@dataclass(frozen=True)
class NotHere:
    """A command that cannot run on this machine, and why."""

    reason: str


GPU_SETUP = (
    "the GPU machines' set-up: CUDA wheels from download.pytorch.org and OpenMMLab's prebuilt "
    'MMCV, for a GPU; this machine has no GPU and reaches only PyPI (tools/setup_env.sh installs '
    'the same versions here, built for the CPU)'
)
BENCH = (
    'a timing benchmark of full-size models (R50 / X101 optimizer steps, minutes on this CPU); '
    'the suite asserts no timing'
)
NO_GPU = 'needs a CUDA GPU; this machine has none (the --device cpu line runs the same code)'
#: A data root of train_pair.sh's one-GPU line; its plan runs here.
PLAN = '--dry-run'

#: Every command of the README and the docs, by its text, and what runs here.
COMMANDS: dict[str, tuple[Run, ...] | RunBy | NotHere] = {
    # README: set-up, the card's command, --gc
    'bash tools/run_demo.sh': NotHere(
        'set-up: installs the stack, then runs the 7- to 12-minute demo; '
        'tests/runtime/test_demo.py runs the demo at tiny sizes'
    ),
    'bash tools/run_tests.sh': NotHere('set-up: installs both stacks and runs this suite'),
    'python tools/train.py configs/mask_rcnn_r50_fpn_gc.py': (Run('card', status=2),),
    'python tools/train.py CONFIG --gc': (Run('gc-switch', {'CONFIG': SHORT_BASE}),),
    # docs/install.md
    'pip install torch==2.1.2 torchvision==0.16.2 --index-url '
    'https://download.pytorch.org/whl/cu121': NotHere(GPU_SETUP),
    'pip install -U openmim && mim install "mmengine==0.10.7" "mmcv==2.1.0"': NotHere(GPU_SETUP),
    'pip install "mmdet==3.3.0" && pip install -e .': NotHere(GPU_SETUP),
    # docs/detection.md: "Training a row", "Settings you will likely change"
    'bash tools/dist_train.sh configs/mmdet/mask_rcnn_r50_fpn_gc.py 8 --cfg-options '
    'randomness.seed=0': (Run('row', GPUS),),
    'bash tools/dist_train.sh configs/mmdet/baselines/mask_rcnn_r50_fpn.py 8 --cfg-options '
    'randomness.seed=0': (Run('row', GPUS),),
    'python tools/test.py configs/mmdet/mask_rcnn_r50_fpn_gc.py '
    'work_dirs/mask_rcnn_r50_fpn_gc/epoch_12.pth': (
        Run('row', _last('work_dirs/mask_rcnn_r50_fpn_gc')),
    ),
    'python tools/test.py configs/mmdet/baselines/mask_rcnn_r50_fpn.py '
    'work_dirs/mask_rcnn_r50_fpn/epoch_12.pth': (Run('row', _last('work_dirs/mask_rcnn_r50_fpn')),),
    'python tools/compare_ap.py work_dirs/mask_rcnn_r50_fpn_gc work_dirs/mask_rcnn_r50_fpn': (
        Run('row'),
    ),
    'python tools/train.py configs/mmdet/mask_rcnn_r50_fpn_gc.py --cfg-options '
    'train_dataloader.batch_size=4 model.backbone.init_cfg.checkpoint=/models/resnet50.pth': (
        Run(
            'settings',
            {
                'configs/mmdet/mask_rcnn_r50_fpn_gc.py': (
                    f'{STANDINS}/pretrained/mask_rcnn_r50_fpn_gc.py'
                ),
                'model.backbone.init_cfg.checkpoint=/models/resnet50.pth': (
                    'model.backbone.init_cfg.checkpoint=models/resnet50.pth'
                ),
            },
        ),
    ),
    # docs/tools.md: "At a glance"
    'python tools/train.py configs/mmdet/mask_rcnn_r50_fpn_gc.py --auto-scale-lr --cfg-options '
    'randomness.seed=0': (Run('one-machine'),),
    'NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_train.sh CONFIG 8': (
        Run('launch', {'CONFIG': GC}),
    ),
    'GPUS=16 bash tools/slurm_train.sh PARTITION JOB CONFIG WORK_DIR': (
        Run('launch', {'CONFIG': GC}),
    ),
    'python tools/train.py CONFIG --resume': (Run('resume', {'CONFIG': GC}),),
    'python tools/train.py CONFIG --gc-diagnostics 50': (
        Run('diagnostics', {'CONFIG': SHORT_GC, '50': '2'}),
        Run('diagnostics', {'CONFIG': SHORT_BASE, '50': '2'}),
    ),
    'python tools/test.py CONFIG CHECKPOINT --work-dir work_dirs/gc': (
        Run(
            'one-machine',
            {'CONFIG': GC, 'CHECKPOINT': 'work_dirs/mask_rcnn_r50_fpn_gc/epoch_2.pth'},
        ),
    ),
    'bash tools/train_pair.sh configs/mmdet/mask_rcnn_r50_fpn_gc.py 8 --seeds 0 1 2': (
        Run('row', {'8 --seeds 0 1 2': '1 --seeds 0 1'}),
    ),
    'bash tools/train_pair.sh CONFIG 8 --seeds 0 1 2 --gc': (
        Run('gc-pair', {'CONFIG': BASE, '8 --seeds 0 1 2': '1 --seeds 0'}),
    ),
    'python tools/compare_ap.py --gc RUN... --base RUN... --out-dir work_dirs/compare': (
        Run(
            'row',
            {
                '--gc RUN...': '--gc work_dirs/pairs/mask_rcnn_r50_fpn_gc/seed0/gc '
                'work_dirs/pairs/mask_rcnn_r50_fpn_gc/seed1/gc',
                '--base RUN...': '--base work_dirs/pairs/mask_rcnn_r50_fpn_gc/seed0/baseline '
                'work_dirs/pairs/mask_rcnn_r50_fpn_gc/seed1/baseline',
            },
        ),
    ),
    # docs/tools.md: Train, Test, Distributed, pairs over seeds
    'python tools/train.py CONFIG --work-dir work_dirs/gc_r50 --cfg-options '
    'train_dataloader.batch_size=4 --auto-scale-lr': (Run('one-machine', {'CONFIG': SHORT_GC}),),
    'python tools/test.py CONFIG CHECKPOINT --work-dir work_dirs/gc_r50 --out preds.pkl '
    '--show-dir vis': (
        Run('one-machine', {'CONFIG': SHORT_GC, 'CHECKPOINT': 'work_dirs/gc_r50/epoch_1.pth'}),
    ),
    'bash tools/dist_test.sh CONFIG CHECKPOINT 8 --work-dir work_dirs/gc_dist': (
        Run(
            'row',
            {'CONFIG': GC, 'CHECKPOINT': 'work_dirs/mask_rcnn_r50_fpn_gc/epoch_2.pth', '8': '2'},
        ),
    ),
    'NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_train.sh CONFIG 8': (
        Run('launch', {'CONFIG': GC}),
    ),
    'GPUS=8 bash tools/slurm_test.sh PARTITION JOB CONFIG CHECKPOINT': (
        Run('launch', {'CONFIG': GC}),
    ),
    'bash tools/train_pair.sh configs/mmdet/mask_rcnn_r50_fpn_gc.py 1 --seeds 0 1 --work-dir '
    'work_dirs/r50 --cfg-options train_dataloader.dataset.data_root=/data/coco/ -- '
    '--auto-scale-lr': (Run('plans', {'--work-dir': f'{PLAN} --work-dir'}),),
    'GPUS_PER_NODE=8 bash tools/train_pair.sh configs/mmdet/mask_rcnn_r50_fpn_gc.py 16 --seeds 0 '
    '1 2 --slurm PARTITION --job-name r50': (Run('plans', {'r50': f'r50 {PLAN}'}),),
    # docs/configs.md: "Gradient diagnostics"
    'python tools/plot_gc_stats.py work_dirs/mask_rcnn_r50_fpn_gc work_dirs/mask_rcnn_r50_fpn '
    '--out fig4.png': (Run('diagnostics'),),
    # docs/codebases.md
    'bash tools/train_pair.sh configs/mmseg/demo/fcn_r18_shapes.py 1 --seeds 0 --gc --work-dir '
    'work_dirs/seg': RunBy('tests/tools/test_codebase_runs.py'),
    'bash tools/train_pair.sh configs/mmpretrain/resnet18_cifar100_gc.py 1 --seeds 0 1 2': (
        Run('plans', {'2': f'2 {PLAN}'}),
    ),
    'bash tools/train_pair.sh configs/mmseg/pspnet_r50-d8_4xb2-80k_cityscapes-512x1024_gc.py 4 '
    '--seeds 0 1 2': (Run('plans', {'2': f'2 {PLAN}'}),),
    # docs/zoo.md
    'python tools/check_zoo.py --out work_dirs/check_zoo/zoo.jsonl': (
        Run('zoo', {'tools/check_zoo.py': f'tools/check_zoo.py {ZOO_SAMPLE}'}),
    ),
    'python tools/check_zoo.py --codebase mmseg --out work_dirs/check_zoo/mmseg.jsonl': (
        Run(
            'zoo-mmseg',
            {'tools/check_zoo.py': f'tools/check_zoo.py {CODEBASE_ZOO_SAMPLES["mmseg"]}'},
        ),
    ),
    'python tools/check_zoo.py --codebase mmpretrain --out work_dirs/check_zoo/mmpretrain.jsonl': (
        Run(
            'zoo-mmpretrain',
            {'tools/check_zoo.py': f'tools/check_zoo.py {CODEBASE_ZOO_SAMPLES["mmpretrain"]}'},
        ),
    ),
    # docs/performance.md
    'python benchmarks/bench_step.py': NotHere(BENCH),
    'python benchmarks/bench_step.py --models mask_rcnn_r50 --iters 50 --threads 1': NotHere(BENCH),
    'python benchmarks/bench_step.py --device cuda': NotHere(NO_GPU),
    'python benchmarks/bench_e2e.py --iters 20': NotHere(BENCH),
    # docs/gpu-check.md
    'bash tools/check_gpu.sh': NotHere(NO_GPU),
    'bash tools/check_gpu.sh --device cpu': RunBy('tests/tools/test_check_gpu.py'),
    'bash tools/check_gpu.sh --sections tests e2e': NotHere(NO_GPU),
    'bash tools/check_gpu.sh --out-dir work_dirs/check_gpu/h200 --e2e-iters 50': NotHere(NO_GPU),
}


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash / ```shell blocks of ``text``, in order:
    continuation lines joined, comments dropped, runs of spaces made one."""
    commands: list[str] = []
    in_block, pending = False, ''
    for line in text.splitlines():
        if not in_block:
            in_block = re.fullmatch(r'```(bash|shell)\s*', line) is not None
            continue
        if line.startswith('```'):
            in_block = False
            continue
        line = '' if line.lstrip().startswith('#') else re.sub(r'\s+#\s.*$', '', line)
        if line.rstrip().endswith('\\'):
            pending += line.rstrip()[:-1] + ' '
            continue
        command, pending = ' '.join((pending + line).split()), ''
        if command:
            commands.append(command)
    return commands


def _swapped(command: str, swap: dict) -> str:
    """``command`` with the whole words or phrases of ``swap`` and :data:`CONFIGS` replaced."""
    for old, new in swap.items():
        pattern = rf'(?<!\S){re.escape(old)}(?!\S)'
        assert re.search(pattern, command), f'{old!r} is not in the command {command!r}'
        command = re.sub(pattern, new, command)
    for old, new in CONFIGS.items():
        command = re.sub(rf'(?<!\S){re.escape(old)}(?!\S)', new, command)
    return command


#: The README and every page of docs/, in the order their commands run.
PAGES = [
    'README.md',
    *(
        f'docs/{name}.md'
        for name in (
            'index', 'install', 'detection', 'tools', 'configs', 'codebases', 'zoo', 'demo',
            'performance', 'numerics', 'faults', 'gpu-check', 'development',
        )
    ),
]  # fmt: skip


def doc_commands() -> list[str]:
    """Every command of :data:`PAGES`, in order, each once."""
    return list(
        dict.fromkeys(c for page in PAGES for c in readme_commands((ROOT / page).read_text()))
    )


def _steps(flow: str) -> list[tuple[str, Run, str]]:
    """``(documented command, its Run, what runs here)`` of ``flow``, in the docs' order."""
    return [
        (command, run, _swapped(command, run.swap))
        for command in doc_commands()
        if isinstance(COMMANDS.get(command), tuple)
        for run in COMMANDS[command]
        if run.flow == flow
    ]


def test_every_page_of_the_docs_is_read():
    pages = {'README.md', *(str(p.relative_to(ROOT)) for p in (ROOT / 'docs').glob('*.md'))}
    assert sorted(pages) == sorted(PAGES)


def test_every_command_of_the_docs_has_a_stand_in():
    commands = doc_commands()
    missing = [c for c in commands if c not in COMMANDS]
    stale = [c for c in COMMANDS if c not in commands]
    assert not missing, f'documented commands without an entry in COMMANDS: {missing}'
    assert not stale, f'COMMANDS entries that are not (any more) in the docs: {stale}'
    for command, entry in COMMANDS.items():
        if isinstance(entry, NotHere):
            assert entry.reason.strip(), command
        elif isinstance(entry, RunBy):
            text = (ROOT / entry.test_file).read_text()
            absent = [w for w in command.split() if w not in ('bash', 'python') and w not in text]
            assert not absent, f'{entry.test_file} does not run {command!r}: no {absent}'
        else:
            for run in entry:
                _swapped(command, run.swap)  # every swapped word is in the command


def test_readme_commands_are_read_as_a_shell_reads_them():
    text = (
        'x\n```bash\nrun a  b   # a comment\n# alone\nlong \\\n    --c 1 \\\n    --d 2\n```\n'
        '```python\nnot = "a command"\n```\n```shell\nlast\n```\n'
    )
    assert readme_commands(text) == ['run a b', 'long --c 1 --d 2', 'last']


# --------------------------------------------------------------- the runs


class Workspace:
    """A folder where the README's commands run as in a clone: ``tools``,
    ``configs`` and ``tests`` are the repository's; the shapes data is the
    stand-ins' (``MMGC_README_DATA``)."""

    def __init__(self, tools, path: Path) -> None:
        self.tools, self.path = tools, path
        for name in ('tools', 'configs', 'tests'):
            (path / name).symlink_to(tools.root / name, target_is_directory=True)
        self.env = {
            'MMGC_README_DATA': tools.data['data_root'] + '/',
            # torchrun sees its processes end every PET_MONITOR_INTERVAL seconds (torch 2.1: 5)
            'PET_MONITOR_INTERVAL': '0.1',
            'PATH': os.pathsep.join((os.path.dirname(sys.executable), os.environ['PATH'])),
        }

    def run(self, command: str, **env: str) -> subprocess.CompletedProcess:
        """``bash -c COMMAND`` here, with a free ``PORT`` for torchrun; ``PYTHON``
        only if given (else the launchers take ``python`` from ``PATH``)."""
        full = self.tools.env(**{'PORT': str(self.tools.free_port()), **self.env})
        full.pop('PYTHON', None)
        full.update(env)
        return run_in_session(['bash', '-c', command], full, self.tools.timeout, cwd=self.path)

    def flow(
        self, name: str, part=slice(None), **env: str
    ) -> dict[str, list[subprocess.CompletedProcess]]:
        """Run ``name``'s steps (``part`` of them) in the docs' order, each
        asserted to end with its status."""
        out: dict[str, list] = {}
        for command, run, here in _steps(name)[part]:
            proc = self.run(here, **env)
            if run.status == 0:
                self.tools.ok(proc)
            else:
                assert proc.returncode == run.status, self.tools.output(proc)
            out.setdefault(command, []).append(proc)
        return out

    def __truediv__(self, other: str) -> Path:
        return self.path / other


def _scalars(work_dir: Path) -> list[dict]:
    (scalars,) = work_dir.glob('*/vis_data/scalars.json')
    return [json.loads(line) for line in scalars.read_text().splitlines()]


def _validations(work_dir: Path) -> list[dict]:
    return [r for r in _scalars(work_dir) if 'coco/bbox_mAP' in r]


def _record(path: Path) -> dict:
    return json.loads((path / 'test_metrics.json').read_text())


COCO_KEYS = [
    f'coco/{task}_mAP{suffix}'
    for task in ('bbox', 'segm')
    for suffix in ('', '_50', '_75', '_s', '_m', '_l')
]


@pytest.fixture(scope='module')
def row(tools, tmp_path_factory) -> Workspace:
    """ "Training a row" on 2 gloo processes per run, then the quick
    reference's train_pair.sh (its seed 0 is the row's runs, moved into its
    layout: trained with the same command and seed) and compare_ap.py."""
    ws = Workspace(tools, tmp_path_factory.mktemp('row'))
    first = next(i for i, (c, _, _) in enumerate(_steps('row')) if 'train_pair.sh' in c)
    before = ws.flow('row', slice(first))
    pairs = ws / 'work_dirs/pairs/mask_rcnn_r50_fpn_gc'
    for side, name in zip(('gc', 'baseline'), NAMES):
        shutil.copytree(ws / f'work_dirs/{name}', pairs / 'seed0' / side, symlinks=True)
    ws.procs = {**before, **ws.flow('row', slice(first, None))}
    return ws


def _out(ws: Workspace, fragment: str) -> str:
    (command,) = [c for c in ws.procs if fragment in c]
    return ''.join(p.stdout + p.stderr for p in ws.procs[command])


def test_row_trains_each_twin_on_two_gloo_processes_with_its_seed_and_tests_it(row):
    for config, name in zip(CONFIGS, NAMES):
        out = _out(row, f'dist_train.sh {config}')
        assert "backend='gloo'" in out and 'CPUDistributedDataParallel' in out
        ckpt = safe_torch_load(str(row / f'work_dirs/{name}/epoch_2.pth'))
        assert ckpt['meta']['seed'] == 0 and ckpt['meta']['epoch'] == 2
        # 8 images, 2 per process and step, 2 processes, 2 epochs
        assert ckpt['meta']['iter'] == 4
        groups = ckpt['optimizer']['param_groups']
        if name.endswith('_gc'):  # the GC options are saved with the optimizer
            assert any(g['gc'] for g in groups) and any(not g['gc'] for g in groups)
        else:
            assert all('gc' not in g for g in groups)
        # tools/test.py on the last checkpoint, into the run's work dir
        record = _record(row / f'work_dirs/{name}')
        assert record['seed'] == 0 and record['checkpoint'].endswith('epoch_2.pth')
        assert set(COCO_KEYS) <= set(record['metrics'])
        assert "launcher = 'pytorch'" in record['train_config_text']


def test_row_ends_in_a_comparison_with_the_papers_delta(row):
    proc = row.procs[
        'python tools/compare_ap.py work_dirs/mask_rcnn_r50_fpn_gc work_dirs/mask_rcnn_r50_fpn'
    ][0]
    assert '1 pair of runs (seeds 0), paired by seed:' in proc.stdout
    assert 'spread unknown (1 seed)' in proc.stdout
    with open(row / 'work_dirs/compare_ap/ap_comparison.csv', newline='') as f:
        rows = {(r['task'], r['metric']): r for r in csv.DictReader(f)}
    gc, base = (_record(row / f'work_dirs/{n}') for n in NAMES)
    bbox = rows['bbox', 'AP']
    assert float(bbox['delta']) == pytest.approx(
        100 * (gc['metrics']['coco/bbox_mAP'] - base['metrics']['coco/bbox_mAP']), abs=1e-3
    )
    # the metafile's R50 Mask R-CNN row: 37.9 - 37.4 box AP, 34.7 - 34.1 mask AP
    assert float(bbox['paper_delta']) == pytest.approx(0.5)
    assert float(rows['segm', 'AP']['paper_delta']) == pytest.approx(0.6)


def test_train_pair_reuses_the_row_and_trains_the_other_seed(row):
    out = _out(row, 'train_pair.sh configs/mmdet/mask_rcnn_r50_fpn_gc.py')
    pairs = row / 'work_dirs/pairs/mask_rcnn_r50_fpn_gc'
    for side in ('gc', 'baseline'):
        done = f'work_dirs/pairs/mask_rcnn_r50_fpn_gc/seed0/{side}/test_metrics.json'
        assert f'seed 0 {side}: done ({done}), skipped' in out
        assert f'seed 1 {side}: training' in out
        record = _record(pairs / 'seed1' / side)
        assert record['seed'] == 1 and "launcher = 'none'" in record['train_config_text']
    assert '2 pairs of runs (seeds 0, 1), paired by seed:' in out


def test_train_pair_keeps_the_training_config_through_the_test(row):
    """The seed goes to train.py only: test.py's own config dump has none,
    and the metrics file keeps the training config's."""
    from mmengine.config import Config

    wd = row / 'work_dirs/pairs/mask_rcnn_r50_fpn_gc/seed1/baseline'
    trained = Config.fromfile(str(wd / 'mask_rcnn_r50_fpn.py'), import_custom_modules=False)
    tested = Config.fromfile(str(wd / 'mask_rcnn_r50_fpn_test.py'), import_custom_modules=False)
    assert trained.randomness.seed == 1 and 'seed' not in (tested.get('randomness') or {})
    assert tested.launcher == 'none'  # GPUS 1 stands in for 8: test.py in this shell
    assert trained.default_hooks.checkpoint.type == 'AtomicCheckpointHook'  # train.py's only
    assert tested.default_hooks.checkpoint.type == 'CheckpointHook'
    assert 'seed=1' in _record(wd)['train_config_text'].replace(' ', '')


def test_compare_ap_pairs_several_runs_per_side_by_seed(row):
    out = _out(row, 'compare_ap.py --gc RUN...')
    assert '2 pairs of runs (seeds 0, 1), paired by seed:' in out
    with open(row / 'work_dirs/compare/ap_comparison.csv', newline='') as f:
        rows = {(r['task'], r['metric']): r for r in csv.DictReader(f)}
    bbox = rows['bbox', 'AP']
    assert bbox['pairs'] == bbox['gc_runs'] == bbox['baseline_runs'] == '2'
    assert bbox['verdict'] in ('GC higher', 'no clear difference', 'GC lower')
    assert (row / 'work_dirs/compare/ap_deltas.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_train_pair_with_gc_compares_a_config_with_itself(row):
    """``--gc``: the GC side is the baseline config with tools/train.py --gc,
    the baseline the config itself (the row's baseline run: same command, seed)."""
    pairs = row / 'work_dirs/pairs/mask_rcnn_r50_fpn'
    shutil.copytree(row / 'work_dirs/mask_rcnn_r50_fpn', pairs / 'seed0' / 'baseline')
    ((_, _, here),) = _steps('gc-pair')
    out = row.tools.output(row.tools.ok(row.run(here)))
    assert 'seed 0 baseline: done' in out and 'seed 0 gc: training' in out
    assert '1 pair of runs (seeds 0), paired by seed:' in out
    record = _record(pairs / 'seed0' / 'gc')
    assert "constructor='GCOptimWrapperConstructor'" in record['train_config_text']
    ckpt = safe_torch_load(str(pairs / 'seed0' / 'gc' / 'epoch_2.pth'))
    assert any(g.get('gc') for g in ckpt['optimizer']['param_groups'])


def test_dist_test_tests_the_row_on_two_processes(row):
    record = _record(row / 'work_dirs/gc_dist')
    assert record['checkpoint'] == 'work_dirs/mask_rcnn_r50_fpn_gc/epoch_2.pth'
    assert "launcher = 'pytorch'" in record['config_text']
    # the same checkpoint as tools/test.py's in one process: the same APs
    one = _record(row / 'work_dirs/mask_rcnn_r50_fpn_gc')['metrics']
    for key in COCO_KEYS:
        assert record['metrics'][key] == pytest.approx(one[key], abs=1e-3)


# ------------------------------------------------------- one machine, resume


@pytest.fixture(scope='module')
def one_machine(tools, tmp_path_factory) -> Workspace:
    """tools/train.py with --auto-scale-lr and seed 0, then tools/test.py on its
    last checkpoint."""
    ws = Workspace(tools, tmp_path_factory.mktemp('one_machine'))
    ws.procs = ws.flow('one-machine')
    return ws


def test_one_machine_scales_the_lr_to_its_batch(one_machine):
    out = _out(one_machine, '--auto-scale-lr --cfg-options randomness.seed=0')
    # 1 process x 2 images of MMDetection's 16: 0.02 x 2 / 16
    assert 'LR is set based on batch size of 16 and the current batch size is 2. ' in out
    assert 'Scaling the original LR by 0.125.' in out
    ckpt = safe_torch_load(str(one_machine / 'work_dirs/mask_rcnn_r50_fpn_gc/epoch_2.pth'))
    assert {g['initial_lr'] for g in ckpt['optimizer']['param_groups']} == {0.0025}
    assert ckpt['meta']['iter'] == 8  # 8 images, batch 2, 2 epochs
    assert (one_machine / 'work_dirs/mask_rcnn_r50_fpn_gc/mask_rcnn_r50_fpn_gc.py').is_file()
    val = _validations(one_machine / 'work_dirs/mask_rcnn_r50_fpn_gc')
    assert [r['step'] for r in val] == [2]  # val_interval 2 of 2 epochs


def test_test_tool_writes_coco_metrics_and_the_seed(one_machine):
    record = _record(one_machine / 'work_dirs/gc')
    ckpt = safe_torch_load(str(one_machine / 'work_dirs/mask_rcnn_r50_fpn_gc/epoch_2.pth'))
    assert record['seed'] == ckpt['meta']['seed'] == 0
    assert record['checkpoint'] == 'work_dirs/mask_rcnn_r50_fpn_gc/epoch_2.pth'
    assert record['config'] == GC and 'SGDGC' in record['config_text']
    metrics = record['metrics']
    assert set(COCO_KEYS) <= set(metrics)
    # 64-pixel images hold only small objects: COCOeval gives -1 for the
    # empty medium and large ranges and a real value for small ones.
    assert metrics['coco/bbox_mAP_m'] == -1.0 and metrics['coco/segm_mAP_l'] == -1.0
    assert 0.0 <= metrics['coco/bbox_mAP_s'] <= 1.0
    # the same checkpoint as the last validation: the same APs
    last_val = _validations(one_machine / 'work_dirs/mask_rcnn_r50_fpn_gc')[-1]
    for key in COCO_KEYS:
        assert metrics[key] == pytest.approx(last_val[key])


def test_resume_continues_a_stopped_run_bit_for_bit(tools, one_machine, tmp_path):
    """The one-machine run, stopped after epoch 1 (its epoch-1 checkpoint and
    last_checkpoint: what a run killed in epoch 2 leaves), resumed by the
    README's --resume line (no seed option: the checkpoint's seed, 0), ends
    with the uninterrupted run's weights."""
    ws = Workspace(tools, tmp_path)
    work_dir = ws / 'work_dirs/mask_rcnn_r50_fpn_gc'
    work_dir.mkdir(parents=True)
    shutil.copy(one_machine / 'work_dirs/mask_rcnn_r50_fpn_gc/epoch_1.pth', work_dir)
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    procs = ws.flow('resume')
    ((proc,),) = procs.values()
    out = tools.output(proc)
    assert f"Resuming from '{work_dir / 'epoch_1.pth'}'" in out
    assert f"--resume: seed 0, from '{work_dir / 'epoch_1.pth'}'." in out
    assert 'resumed epoch: 1, iter: 4' in out and 'local_safe backend' in out
    assert_same_checkpoint(
        safe_torch_load(str(one_machine / 'work_dirs/mask_rcnn_r50_fpn_gc/epoch_2.pth')),
        safe_torch_load(str(work_dir / 'epoch_2.pth')),
    )


def test_tools_train_and_test_lines_with_their_options(one_machine):
    """docs/tools.md's Train and Test lines: a work dir, a batch size with the
    lr scaled to it, the raw predictions and the drawn images."""
    out = _out(one_machine, '--work-dir work_dirs/gc_r50 --cfg-options')
    assert 'Scaling the original LR by 0.25.' in out  # 1 x 4 images of 16
    ckpt = safe_torch_load(str(one_machine / 'work_dirs/gc_r50/epoch_1.pth'))
    assert ckpt['meta']['iter'] == 2  # 8 images, 4 per batch
    assert _record(one_machine / 'work_dirs/gc_r50')['checkpoint'] == (
        'work_dirs/gc_r50/epoch_1.pth'
    )
    from mmengine.fileio import load

    predictions = load(str(one_machine / 'preds.pkl'))
    assert len(predictions) == 4  # the stand-in's val images
    assert {'pred_instances', 'img_id'} <= set(predictions[0])
    assert len(list((one_machine / 'work_dirs/gc_r50').glob('*/vis/*'))) == len(predictions)


def test_the_cards_command_as_written_names_the_missing_coco(tools, tmp_path):
    """``python tools/train.py configs/mask_rcnn_r50_fpn_gc.py`` as written, in a
    clone without COCO: one line naming the data root, exit 2, before any model
    is built."""
    ws = Workspace(tools, tmp_path)
    ((proc,),) = ws.flow('card').values()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("MissingDataError: The data root 'data/coco/' "), last
    assert not list(ws.path.glob('work_dirs/*/*.pth'))


# --------------------------------------------------------------- diagnostics


def test_gc_diagnostics_on_both_twins_and_the_plot(tools, tmp_path):
    ws = Workspace(tools, tmp_path)
    procs = ws.flow('diagnostics')
    assert len(procs['python tools/train.py CONFIG --gc-diagnostics 50']) == 2
    for name in NAMES:
        records = _scalars(ws / f'work_dirs/{name}')
        logged = [r for r in records if any(k.startswith('gc/') for k in r)]
        assert [r['step'] for r in logged] == [2, 4]  # 4 iterations, every 2
        stats = {k.rsplit('/', 1)[-1] for k in logged[0] if k.startswith('gc/')}
        assert stats == {'grad_norm', 'grad_max', 'gc_grad_norm', 'gc_grad_max', 'sum_drift'}
    assert (ws / 'fig4.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# ------------------------------------------------------------------ settings


def test_settings_override_batch_size_and_backbone_weights(tools, tmp_path):
    """--cfg-options batch size 4 and backbone weights from a local file: the
    stand-in's own ResNet-18 weights, saved where the README's line points."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    ws = Workspace(tools, tmp_path)
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(str(tools.root / GC))
    with DefaultScope.overwrite_default_scope('mmdet'):  # whatever scope an earlier test left
        backbone = MODELS.build(cfg.model.backbone)
    torch.manual_seed(0)
    for p in backbone.parameters():
        torch.nn.init.normal_(p)
    (ws / 'models').mkdir()
    torch.save(backbone.state_dict(), ws / 'models/resnet50.pth')
    procs = ws.flow('settings')
    out = tools.output(next(iter(procs.values()))[0])
    assert 'load model from: models/resnet50.pth' in out
    assert 'missing keys in source state_dict' not in out
    assert 'unexpected key in source state_dict' not in out
    ckpt = safe_torch_load(str(ws / 'work_dirs/mask_rcnn_r50_fpn_gc/epoch_1.pth'))
    assert ckpt['meta']['iter'] == 2  # 8 images, 4 per batch


# ------------------------------------------------------------------ launches


def test_multi_node_and_slurm_lines_launch_as_written(tools, tmp_path):
    """No second node and no Slurm here: a recording ``python`` (torchrun's
    interpreter) and ``srun`` show what each line starts."""
    ws = Workspace(tools, tmp_path)
    for name in ('python', 'srun'):
        (ws / 'bin').mkdir(exist_ok=True)
        (ws / 'bin' / name).write_text(RECORDER)
        (ws / 'bin' / name).chmod(0o755)
    record = ws / 'record.txt'
    path = os.pathsep.join((str(ws / 'bin'), ws.env['PATH']))
    calls = []
    for _, _, here in _steps('launch'):
        tools.ok(ws.run(here, RECORD=str(record), PATH=path, PYTHON=str(ws / 'bin' / 'python')))
        calls.append(record.read_text().splitlines())
    python = str(ws / 'bin' / 'python')
    node0, srun_train, node1, srun_test = calls
    for rank, torchrun in enumerate((node0, node1)):
        assert torchrun[:3] == [python, '-m', 'torch.distributed.run']
        assert torchrun[3:8] == [
            '--nnodes=2',
            f'--node_rank={rank}',
            '--master_addr=10.0.0.1',
            '--nproc_per_node=8',
            '--master_port=29500',
        ]
        assert torchrun[8:] == [str(ws / 'tools' / 'train.py'), GC, '--launcher', 'pytorch']
    for srun, tasks in ((srun_train, 16), (srun_test, 8)):
        assert srun[0].endswith('/bin/srun')
        assert srun[1:4] == ['-p', 'PARTITION', '--job-name=JOB']
        assert f'--ntasks={tasks}' in srun and '--gres=gpu:8' in srun
        assert '--ntasks-per-node=8' in srun
    start = srun_train.index(python)
    assert srun_train[start:] == [
        python, '-u', str(ws / 'tools' / 'train.py'), GC, '--work-dir=WORK_DIR', '--launcher=slurm'
    ]  # fmt: skip
    start = srun_test.index(python)
    assert srun_test[start:] == [
        python, '-u', str(ws / 'tools' / 'test.py'), GC, 'CHECKPOINT', '--launcher=slurm'
    ]  # fmt: skip


def test_train_pair_plans_on_one_gpu_with_options_and_on_slurm(tools, tmp_path):
    """train_pair.sh's other lines, as written, with --dry-run: the plan of
    every run (the configs are the real ones: their twins are found; no
    training starts)."""
    ws = Workspace(tools, tmp_path)
    procs = ws.flow('plans')
    one_gpu = _plain(procs, 'mask_rcnn_r50_fpn_gc.py 1 --seeds 0 1')
    for seed, side in ((0, 'gc'), (1, 'baseline')):
        assert f'work_dirs/r50/seed{seed}/{side}' in one_gpu
    assert 'train_dataloader.dataset.data_root=/data/coco/' in one_gpu
    assert '--auto-scale-lr' in one_gpu and 'tools/train.py' in one_gpu
    slurm = _plain(procs, '--slurm PARTITION')
    assert 'tools/slurm_train.sh PARTITION' in slurm and 'tools/slurm_test.sh PARTITION' in slurm
    cls = _plain(procs, 'configs/mmpretrain/resnet18_cifar100_gc.py')
    assert 'configs/mmpretrain/baselines/resnet18_cifar100.py' in cls
    seg = _plain(procs, 'configs/mmseg/pspnet')
    assert 'tools/dist_train.sh' in seg and 'configs/mmseg/baselines/pspnet_r50-d8' in seg


def _plain(procs: dict, fragment: str) -> str:
    """The output of the one command of ``procs`` that contains ``fragment``."""
    (command,) = [c for c in procs if fragment in c]
    return ''.join(p.stdout + p.stderr for p in procs[command])


# ------------------------------------------------------ GC on your own detector


def test_gc_switch_on_a_config_without_gc(tools, tmp_path):
    ws = Workspace(tools, tmp_path)
    ((proc,),) = ws.flow('gc-switch').values()
    out = tools.output(proc)
    assert "--gc: GC on ['conv', 'fc'] weights, variant 'grad', optimizer 'SGDGC'" in out
    ckpt = safe_torch_load(str(ws / 'work_dirs/mask_rcnn_r50_fpn/epoch_1.pth'))
    groups = ckpt['optimizer']['param_groups']
    assert any(g['gc'] for g in groups) and any(not g['gc'] for g in groups)
    assert "constructor='GCOptimWrapperConstructor'" in ckpt['meta']['cfg']


@pytest.mark.parametrize(
    ('scope', 'status'),
    [
        pytest.param('mmseg', 'ok', marks=codebase_installed('mmseg')),
        pytest.param('mmpretrain', 'refused', marks=codebase_installed('mmpretrain')),
    ],
)
def test_check_zoo_on_a_sample_of_each_codebases_zoo(tools, tmp_path, scope, status):
    """The lines for MMSegmentation's and MMPretrain's zoos, on one config of
    each (MMPretrain's: a SimCLR config, whose LARS takes GC on the update only,
    so the default 'grad' is counted as refused)."""
    ws = Workspace(tools, tmp_path)
    ((proc,),) = ws.flow(f'zoo-{scope}').values()
    (result,) = [json.loads(line) for line in (ws / f'work_dirs/check_zoo/{scope}.jsonl').open()]
    assert result['config'] == str(
        CODEBASE_ZOO_SAMPLES[scope].relative_to(CODEBASE_ZOO_SAMPLES[scope].parents[1])
    )
    assert result['status'] == status, result
    assert f'{int(status == "ok")} of 1 configs work with GC' in proc.stdout


def test_check_zoo_on_a_sample_of_the_zoo(tools, tmp_path):
    """The whole zoo takes hours on this CPU: the line runs on one small config of it."""
    ws = Workspace(tools, tmp_path)
    ws.flow('zoo')
    (result,) = [json.loads(line) for line in (ws / 'work_dirs/check_zoo/zoo.jsonl').open()]
    assert result['config'] == 'retinanet/retinanet_r18_fpn_1x_coco.py'
    assert result['status'] == 'ok', result
