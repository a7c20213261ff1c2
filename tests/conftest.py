"""Fixtures and helpers shared across the suite: the tiny shapes dataset, the
tools (``tools/*.py``, ``tools/*.sh``) run for real as subprocesses, a toy
model trained by a real MMEngine ``Runner``, and small helpers that more than
one test module needs (import them: ``from tests.conftest import ...``)."""

from __future__ import annotations

import collections
import functools
import importlib.util
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[1]

#: The tiny Mask R-CNN configs of the tool tests (tests/data/configs).
TEST_CONFIGS = ROOT / 'tests' / 'data' / 'configs'


def pytest_collection_modifyitems(config, items):
    """Run the files with the most ``slow`` tests first (each file's tests in
    their order), so that under ``--dist loadfile`` the long files do not start
    last and leave one worker alone at the end; skip the tests marked ``cuda``
    where torch sees no GPU, saying so."""
    slow = collections.Counter(
        item.path for item in items if item.get_closest_marker('slow') is not None
    )
    first_seen = {path: index for index, path in reversed(list(enumerate(i.path for i in items)))}
    items.sort(key=lambda item: (-slow[item.path], first_seen[item.path]))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason=f'needs a CUDA GPU: torch {torch.__version__} sees none '
        f'(torch.cuda.is_available() is False)'
    )
    for item in items:
        if item.get_closest_marker('cuda') is not None:
            item.add_marker(skip)


@pytest.fixture(scope='session')
def _make_shapes(tmp_path_factory):
    @functools.cache
    def make() -> dict:
        from mmgc.runtime.shapes import make_shapes_dataset

        root = tmp_path_factory.mktemp('shapes')
        return make_shapes_dataset(root, num_train=8, num_val=4, image_size=64, seed=0)

    return make


@pytest.fixture(scope='session')
def shapes(_make_shapes) -> dict:
    """A tiny synthetic COCO dataset, made once: 8 train and 4 val images of
    64x64 pixels, seed 0 (what ``make_shapes_dataset`` returns: paths)."""
    return _make_shapes()


def excerpt(text: str, head: int = 3000, tail: int = 4000) -> str:
    """``text`` for a failure message: its first ``head`` and last ``tail``
    characters. The head holds where a subprocess's trouble starts (a traceback,
    a fatal error's first lines), the tail where it ended (a fatal error's list
    of extension modules, a launcher's summary)."""
    if len(text) <= head + tail:
        return text
    left_out = len(text) - head - tail
    return f'{text[:head]}\n[... {left_out} characters left out ...]\n{text[-tail:]}'


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """``proc``, after asserting that it succeeded (showing its output if not)."""
    assert proc.returncode == 0, (
        f'exit {proc.returncode}: {proc.args}\n--- stdout\n{excerpt(proc.stdout)}'
        f'\n--- stderr\n{excerpt(proc.stderr)}'
    )
    return proc


#: Seconds a timed-out run has to print its stacks before it is killed.
STACK_DUMP_S = 5


def run_in_session(
    args: list[str], env: dict, timeout: float, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """Run ``args`` in ``cwd``, capturing its output, in a new session.
    One still running after ``timeout`` seconds is sent SIGUSR1 (the tools print
    every thread's stack on it: ``entry_points.dump_stacks_on_sigusr1``), given
    :data:`STACK_DUMP_S` seconds, then killed with every process it started
    (torchrun's ranks included, which would otherwise outlive the test); the test
    then fails, with the output and the stacks."""
    with subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_session(proc.pid, signal.SIGUSR1)
            try:
                stdout, stderr = proc.communicate(timeout=STACK_DUMP_S)
            except subprocess.TimeoutExpired:
                _signal_session(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
            _signal_session(proc.pid, signal.SIGKILL)  # ranks a dead launcher left
            pytest.fail(
                f'still running after {timeout:g} s, killed: {args}\n--- stdout\n'
                f'{excerpt(stdout)}\n--- stderr (with the stacks)\n{excerpt(stderr)}'
            )
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def _signal_session(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:  # every process of the session has ended
        pass


class Tools:
    """Runs the tools from the repository root, on :func:`shapes`' data
    (made at the first use).

    The runs see ``tests/data`` on ``PYTHONPATH`` (the test configs import
    hooks from there), one OpenMP thread, and no ``MMGC_*`` variable of the
    calling environment: only those a test passes.
    """

    root = ROOT
    configs = TEST_CONFIGS
    timeout = float(os.environ.get('MMGC_TEST_TIMEOUT', 300))  # seconds a tool may run

    def __init__(self, make_data) -> None:
        self._make_data = make_data

    @property
    def data(self) -> dict:
        return self._make_data()

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a run, with ``extra`` variables set."""
        env = {k: v for k, v in os.environ.items() if not k.startswith('MMGC_')}
        paths = [str(ROOT), str(ROOT / 'tests' / 'data')]
        if env.get('PYTHONPATH'):
            paths.append(env['PYTHONPATH'])
        env['PYTHONPATH'] = os.pathsep.join(paths)
        env.setdefault('OMP_NUM_THREADS', '1')
        env.update(extra)
        return env

    def run(
        self, args: list, env: dict | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``args`` in the repository root, with :meth:`env` and ``env``, in a
        session of its own (:func:`run_in_session`)."""
        return run_in_session(
            [str(a) for a in args], self.env(**(env or {})), timeout or self.timeout
        )

    def data_options(
        self, root: str | None = None, splits: tuple[str, ...] = ('train', 'val', 'test')
    ) -> list[str]:
        """``--cfg-options`` values that point a tiny config at the data."""
        root = root or self.data['data_root']
        ann = os.path.join(root, 'annotations', 'instances_val.json')
        options = [f'{split}_dataloader.dataset.data_root={root}/' for split in splits]
        options += [f'{split}_evaluator.ann_file={ann}' for split in splits if split != 'train']
        return options

    def train(
        self,
        config,
        work_dir,
        *extra,
        env: dict | None = None,
        options=(),
        splits: tuple[str, ...] = ('train', 'val', 'test'),
    ) -> subprocess.CompletedProcess:
        """``tools/train.py CONFIG --work-dir WORK_DIR EXTRA --cfg-options ...``."""
        args = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir, *extra]
        return self.run([*args, '--cfg-options', *self.data_options(splits=splits), *options], env)

    def test(
        self, config, checkpoint, work_dir, *extra, env: dict | None = None, options=()
    ) -> subprocess.CompletedProcess:
        """``tools/test.py CONFIG CHECKPOINT --work-dir WORK_DIR EXTRA --cfg-options ...``."""
        args = [sys.executable, 'tools/test.py', config, checkpoint, '--work-dir', work_dir, *extra]
        return self.run([*args, '--cfg-options', *self.data_options(), *options], env)

    @staticmethod
    def output(proc: subprocess.CompletedProcess) -> str:
        return proc.stdout + proc.stderr

    @staticmethod
    def last_line(proc: subprocess.CompletedProcess) -> str:
        """The last line on stderr (where the tools print a user's error)."""
        lines = proc.stderr.strip().splitlines()
        return lines[-1] if lines else ''

    ok = staticmethod(ok)

    @staticmethod
    def free_port() -> int:
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            return s.getsockname()[1]


class ExitProbe:
    """What each Python process of a run had alive at exit (the probe in
    ``tests/data/exit_probe``): pass :meth:`env` to the run, then read
    :meth:`records`."""

    folder = ROOT / 'tests' / 'data' / 'exit_probe'

    def __init__(self, tools: Tools, out_dir: Path) -> None:
        self.tools, self.out_dir = tools, Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        """The variables that load the probe into every process of a run."""
        paths = [str(self.folder), self.tools.env()['PYTHONPATH']]
        return dict(PYTHONPATH=os.pathsep.join(paths), MMGC_EXIT_PROBE=str(self.out_dir))

    def records(self, script: str) -> list[dict]:
        """The records of the ranks (processes with ``RANK`` set) that ran
        ``script`` (a file name), in the order of their ranks."""
        records = [json.loads(p.read_text()) for p in self.out_dir.glob('*.json')]
        ran = [r for r in records if r['argv'] and Path(r['argv'][0]).name == script]
        return sorted((r for r in ran if r['rank'] is not None), key=lambda r: int(r['rank']))

    def assert_ended(self, script: str, ranks: int) -> None:
        """Each of the ``ranks`` processes that ran ``script`` imported
        ``torch.distributed``, had no default process group alive at exit, and
        either left without finalizing (``os._exit``: gloo's threads never meet a
        finalizing interpreter) or finalized with no process group held by a
        Python object."""
        records = self.records(script)
        assert [r['rank'] for r in records] == [str(rank) for rank in range(ranks)], records
        for record in records:
            assert record['imported_dist'] and not record['alive'], record
            assert not record['finalizes'] or record['groups'] == 0, record


@pytest.fixture
def exit_probe(tools, tmp_path) -> ExitProbe:
    """An :class:`ExitProbe` writing to ``tmp_path / 'exit_probe'``."""
    return ExitProbe(tools, tmp_path / 'exit_probe')


@pytest.fixture(scope='session')
def tools(_make_shapes) -> Tools:
    """The subprocess harness of the tool tests (:class:`Tools`)."""
    return Tools(_make_shapes)


@pytest.fixture
def in_the_repository(monkeypatch):
    """Run the test in the repository root, as the README's commands run
    (relative config paths and ``data/`` resolve there)."""
    monkeypatch.chdir(ROOT)


def load_tool(name: str) -> ModuleType:
    """The script ``tools/<name>.py``, imported from its file (not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without_scope(value):
    """``value`` without the ``_scope_`` marks MMEngine adds to inherited dicts."""
    if isinstance(value, dict):
        return {k: without_scope(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return type(value)(without_scope(v) for v in value)
    return value


def assert_same_checkpoint(expected: dict, got: dict) -> None:
    """Two checkpoints of a GC run hold the same epoch and iteration,
    weights, momentum buffers, param groups and scheduler states, bit for bit."""
    assert got['meta']['epoch'] == expected['meta']['epoch']
    assert got['meta']['iter'] == expected['meta']['iter']
    assert got['state_dict'].keys() == expected['state_dict'].keys()
    for key, value in expected['state_dict'].items():
        torch.testing.assert_close(got['state_dict'][key], value, rtol=0, atol=0)
    want, have = expected['optimizer'], got['optimizer']
    assert have['state'].keys() == want['state'].keys()
    for key, state in want['state'].items():
        torch.testing.assert_close(
            have['state'][key]['momentum_buffer'], state['momentum_buffer'], rtol=0, atol=0
        )
    assert have['param_groups'] == want['param_groups']
    assert any(g['gc'] for g in have['param_groups'])
    assert got['param_schedulers'] == expected['param_schedulers']


def hyper_id(hyper: dict) -> str:
    """A test id for a dict of hyperparameters: ``momentum=0.9-nesterov=True``."""
    return '-'.join(f'{k}={v}' for k, v in hyper.items())


def step_with_reference(optimizer, reference, params, grads) -> None:
    """One step of ``optimizer`` and of its ``reference`` (tests/reference.py)
    on the same gradients (each parameter's ``.grad`` a copy of its own)."""
    for p, g in zip(params, grads):
        p.grad = g.clone()
    optimizer.step()
    reference.step(grads)


#: Skips a test where torch has no CPU GradScaler (torch 2.1).
needs_scaler = pytest.mark.skipif(
    not hasattr(torch.amp, 'GradScaler'),
    reason=f'torch {torch.__version__} has no CPU GradScaler (torch.amp.GradScaler)',
)


@functools.cache
def cpu_fused(name: str) -> bool:
    """Whether ``torch.optim.<name>(fused=True)`` steps on CPU tensors."""
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.zeros(2)
    try:
        getattr(torch.optim, name)([p], lr=0.1, fused=True).step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def fused_cases(*names: str) -> list:
    """``(name, fused)`` parameters of torch optimizers, fused and not; the
    fused ones skipped, saying so, where this torch has no CPU fused kernel."""
    return [
        pytest.param(
            name,
            fused,
            marks=pytest.mark.skipif(
                fused and not cpu_fused(name),
                reason=f'torch {torch.__version__} has no CPU fused {name}',
            ),
            id=f'{name}-fused={fused}',
        )
        for name in names
        for fused in (True, False)
    ]


class RunsCode:
    """Unpickling it runs a shell command that creates ``marker`` (what
    ``torch.load(weights_only=False)`` would do with a malicious checkpoint)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


class ToyNet(BaseModel):
    """A conv, its BN, two Linear layers: what the toy runners train."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 16)
        self.cls = nn.Linear(16, 3)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.cls(self.head(self.bn(self.conv(inputs)).relu().mean((2, 3))).relu())
        return {'loss': F.cross_entropy(out, labels)} if mode == 'loss' else out


class ToyData(Dataset):
    """``n`` seeded 3x8x8 images with labels of 3 classes; ``inf_at``: the
    index of a sample made of inf (its batch gives inf/NaN gradients)."""

    def __init__(self, n: int = 32, inf_at: int | None = None) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=gen)
        self.y = torch.randint(0, 3, (n,), generator=gen)
        if inf_at is not None:
            self.x[inf_at] = float('inf')

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return dict(inputs=self.x[i], labels=self.y[i])


def detection_batch(seed: int = 0, size: int = 96, with_mask: bool = True) -> dict:
    """A seeded MMDetection training batch: two ``size`` x ``size`` images,
    each with two visible rectangles, their boxes, masks (``with_mask``) and
    labels of 3 classes (what ``model.train_step`` takes)."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(2):
        image = torch.randint(0, 255, (3, size, size), generator=gen, dtype=torch.uint8)
        boxes, masks = [], []
        for _ in range(2):
            x0, y0 = torch.randint(0, size // 2, (2,), generator=gen).tolist()
            w, h = torch.randint(16, size // 2, (2,), generator=gen).tolist()
            boxes.append([x0, y0, x0 + w, y0 + h])
            mask = torch.zeros(size, size, dtype=torch.uint8)
            mask[y0 : y0 + h, x0 : x0 + w] = 1
            image[:, y0 : y0 + h, x0 : x0 + w] = 200  # a visible object
            masks.append(mask.numpy())
        instances = InstanceData(
            bboxes=torch.tensor(boxes, dtype=torch.float32),
            labels=torch.randint(0, 3, (2,), generator=gen),
        )
        if with_mask:
            instances.masks = BitmapMasks(masks, size, size)
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                scale_factor=(1.0, 1.0),
            )
        )
        sample.gt_instances = instances
        inputs.append(image)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


_toy_names = itertools.count()


@pytest.fixture(scope='session')
def toy_runner():
    """A factory: ``toy_runner(work_dir, ...)`` trains a toy model with a real
    MMEngine ``Runner`` and returns the runner.

    Args: ``optim_wrapper`` (a config or a built wrapper; defaults to SGD,
    lr 0.1, momentum 0.9), ``model`` (defaults to :class:`ToyNet`), ``data``
    (defaults to 32 samples of :class:`ToyData`), ``epochs`` or ``iters``
    (the length: epochs if ``iters`` is None), ``batch_size``, ``shuffle``,
    ``hooks`` (custom hooks), ``name`` (the experiment name; unique by
    default, which also names the visualizer), ``train`` (False: return the
    runner without training it), and any other ``Runner`` argument.
    """
    from mmengine.runner import Runner

    def build(
        work_dir,
        *,
        optim_wrapper=None,
        model=None,
        data=None,
        epochs: int = 1,
        iters: int | None = None,
        batch_size: int = 2,
        shuffle: bool = False,
        hooks=(),
        name: str | None = None,
        train: bool = True,
        **runner,
    ):
        loop = dict(by_epoch=True, max_epochs=epochs)
        if iters is not None:
            loop = dict(by_epoch=False, max_iters=iters)
        runner = Runner(
            model=model or ToyNet(),
            work_dir=str(work_dir),
            experiment_name=name or f'toy_{os.getpid()}_{next(_toy_names)}',
            train_dataloader=dict(
                dataset=ToyData() if data is None else data,
                sampler=dict(type='DefaultSampler', shuffle=shuffle),
                batch_size=batch_size,
                collate_fn=dict(type='default_collate'),
            ),
            optim_wrapper=optim_wrapper or dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
            train_cfg=loop,
            custom_hooks=list(hooks),
            **{'randomness': dict(seed=0), **runner},
        )
        if train:
            runner.train()
        return runner

    return build


@pytest.fixture(scope='session')
def shapes_seg(shapes) -> dict:
    """:func:`shapes` rendered as a segmentation set (label maps), made once
    (what ``render_segmentation`` returns)."""
    from mmgc.runtime.shapes_tasks import render_segmentation

    return render_segmentation(shapes)


@pytest.fixture(scope='session')
def shapes_cls(shapes) -> dict:
    """:func:`shapes` rendered as a classification set (a crop per shape), made
    once (what ``render_classification`` returns)."""
    from mmgc.runtime.shapes_tasks import render_classification

    return render_classification(shapes)


def codebase_installed(scope: str) -> pytest.MarkDecorator:
    """Skips a test where the codebase ``scope`` is not installed, saying why
    (MMPretrain: no torchvision loads beside the CPU torch 2.13, so the newest
    stack has no MMPretrain; tools/_stack.sh)."""
    why = {
        'mmpretrain': f'MMPretrain is not installed beside torch {torch.__version__}: it '
        'imports torchvision, and no torchvision on PyPI loads beside the CPU torch 2.13 '
        '(tools/_stack.sh installs it on the torch 2.1 stack only)',
    }
    return pytest.mark.skipif(
        importlib.util.find_spec(scope) is None,
        reason=why.get(scope, f'{scope} is not installed here (tools/setup_env.sh installs it)'),
    )
