"""Fixtures shared across the suite: the tiny shapes dataset, and the tools
(``tools/*.py``, ``tools/*.sh``) run for real as subprocesses."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The tiny Mask R-CNN configs of the tool tests (tests/data/configs).
TEST_CONFIGS = ROOT / 'tests' / 'data' / 'configs'


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``cuda`` where torch sees no GPU, saying so."""
    import torch

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
        """Run ``args`` in the repository root, with :meth:`env` and ``env``."""
        return subprocess.run(
            [str(a) for a in args],
            cwd=ROOT,
            env=self.env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout or self.timeout,
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

    @staticmethod
    def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        """``proc``, after asserting that it succeeded (showing its output if not)."""
        assert proc.returncode == 0, (
            f'exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}'
            f'\n--- stderr\n{proc.stderr[-4000:]}'
        )
        return proc

    @staticmethod
    def free_port() -> int:
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            return s.getsockname()[1]


@pytest.fixture(scope='session')
def tools(_make_shapes) -> Tools:
    """The subprocess harness of the tool tests (:class:`Tools`)."""
    return Tools(_make_shapes)
