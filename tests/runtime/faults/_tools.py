"""Running the real tools as subprocesses for the fault tests."""

from __future__ import annotations

import os
import os.path as osp
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / 'tests' / 'data' / 'configs'
GC_FAULT = CONFIGS / 'mask_rcnn_tiny_gc_fault.py'
BASE_FAULT = CONFIGS / 'mask_rcnn_tiny_fault.py'
BASE = CONFIGS / 'mask_rcnn_tiny.py'
GC_DIST_FAULT = CONFIGS / 'mask_rcnn_tiny_gc_dist_fault.py'
TIMEOUT = 240


def env(**faults: str) -> dict[str, str]:
    """The environment of a tool run: tests/data importable, faults as given."""
    result = {k: v for k, v in os.environ.items() if not k.startswith('MMGC_')}
    paths = [str(ROOT), str(ROOT / 'tests' / 'data')]
    if result.get('PYTHONPATH'):
        paths.append(result['PYTHONPATH'])
    result['PYTHONPATH'] = os.pathsep.join(paths)
    result.setdefault('OMP_NUM_THREADS', '1')
    result.update(faults)
    return result


def run(args: list, faults: dict | None = None, timeout: float = TIMEOUT):
    return subprocess.run(
        [str(a) for a in args],
        cwd=ROOT,
        env=env(**(faults or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f'exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}'
        f'\n--- stderr\n{proc.stderr[-4000:]}'
    )
    return proc


def data_options(paths: dict, splits=('train', 'test')) -> list[str]:
    """--cfg-options that point a tiny config at the generated data."""
    root = paths['data_root']
    ann = osp.join(root, 'annotations', 'instances_val.json')
    options = [f'{split}_dataloader.dataset.data_root={root}/' for split in splits]
    options += [f'{split}_evaluator.ann_file={ann}' for split in splits if split != 'train']
    return options


def train(config, work_dir, paths, *extra, faults=None, options=()):
    return run(
        [
            sys.executable,
            'tools/train.py',
            config,
            '--work-dir',
            work_dir,
            *extra,
            '--cfg-options',
            *data_options(paths),
            *options,
        ],
        faults,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
