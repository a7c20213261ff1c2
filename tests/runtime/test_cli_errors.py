"""Errors a user causes end the tools in one line (exit 2); MMGC_DEBUG=1
brings the traceback back."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GC_DEMO = ROOT / 'configs/demo/mask_rcnn_r18_fpn_shapes_gc.py'
NO_DATA = ['--cfg-options', 'train_dataloader.dataset.data_root=/no/such/root/']


def _run(args, debug=False):
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    env.pop('MMGC_DEBUG', None)
    if debug:
        env['MMGC_DEBUG'] = '1'
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ('args', 'expected'),
    [
        (
            ['tools/train.py', str(GC_DEMO), *NO_DATA],
            "MissingDataError: The data root '/no/such/root/' "
            '(train_dataloader.dataset.data_root) does not exist',
        ),
        (
            ['tools/test.py', str(GC_DEMO), 'no_such_checkpoint.pth'],
            "FileNotFoundError: Checkpoint file 'no_such_checkpoint.pth' does not exist.",
        ),
    ],
)
def test_user_error_is_one_line(tmp_path, args, expected):
    proc = _run([*args, '--work-dir', str(tmp_path)])
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(expected), last
    assert 'Traceback' not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = _run(['tools/train.py', str(GC_DEMO), '--work-dir', str(tmp_path), *NO_DATA], debug=True)
    assert proc.returncode != 0
    assert 'Traceback' in proc.stderr and 'check_data_paths' in proc.stderr
