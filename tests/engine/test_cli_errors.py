"""Errors a user causes end the tools in one line (exit 2); MMGC_DEBUG=1
brings the traceback back."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GC_DEMO = ROOT / 'configs/demo/mask_rcnn_r18_fpn_shapes_gc.py'


def _run(args, debug=False):
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    env.pop('MMGC_DEBUG', None)
    if debug:
        env['MMGC_DEBUG'] = '1'
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    ('args', 'expected'),
    [
        (
            [
                'tools/train.py',
                str(GC_DEMO),
                '--cfg-options',
                'optim_wrapper.paramwise_cfg.gc_layers=conv2d',
            ],
            "ValueError: gc_layers must be a non-empty subset of ('conv', 'fc'); got 'conv2d'",
        ),
        (
            ['tools/test.py', str(GC_DEMO), 'no_such_checkpoint.pth'],
            "FileNotFoundError: Checkpoint file 'no_such_checkpoint.pth' does not exist.",
        ),
    ],
)
def test_user_error_is_one_line(tmp_path, args, expected):
    proc = _run([*args[:2], *args[2:], '--work-dir', str(tmp_path)])
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(expected), last
    assert 'Traceback' not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = _run(
        [
            'tools/train.py',
            str(GC_DEMO),
            '--work-dir',
            str(tmp_path),
            '--cfg-options',
            'optim_wrapper.paramwise_cfg.gc_layers=conv2d',
        ],
        debug=True,
    )
    assert proc.returncode != 0
    assert 'Traceback' in proc.stderr and 'parse_gc_layers' in proc.stderr
