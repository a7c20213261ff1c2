"""Errors a user causes end the tools in one line (exit 2); everything else,
and every error with MMGC_DEBUG=1, keeps its traceback."""

from __future__ import annotations

import sys

import pytest
import torch

DEMO_GC = 'configs/demo/mask_rcnn_r18_fpn_shapes_gc.py'
NO_DATA = ['--cfg-options', 'train_dataloader.dataset.data_root=/no/such/root/']


def _assert_one_line(proc, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(expected), lines[-1]
    assert lines[-1].endswith('(MMGC_DEBUG=1 shows the traceback)')
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize(
    ('args', 'expected'),
    [
        (
            ['tools/train.py', DEMO_GC, *NO_DATA],
            "MissingDataError: The data root '/no/such/root/' "
            '(train_dataloader.dataset.data_root) does not exist',
        ),
        (
            ['tools/test.py', DEMO_GC, 'no_such_checkpoint.pth'],
            "FileNotFoundError: Checkpoint file 'no_such_checkpoint.pth' does not exist.",
        ),
        (
            ['tools/train.py', DEMO_GC, '--dist-timeout', '0'],
            "ConfigError: --dist-timeout must be a positive number of seconds; got '0'",
        ),
        (
            ['tools/train.py', DEMO_GC, '--gc', '--gc-variant', 'nope'],
            "ValueError: the GC variant must be one of ('grad', ",
        ),
    ],
)
def test_user_error_is_one_line(tools, tmp_path, args, expected):
    proc = tools.run([sys.executable, *args, '--work-dir', tmp_path])
    _assert_one_line(proc, expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only path')
def test_amp_without_a_gpu_is_one_line(tools, tmp_path):
    proc = tools.train(tools.configs / 'mask_rcnn_tiny_gc.py', tmp_path, '--amp')
    _assert_one_line(proc, 'ConfigError: --amp needs a CUDA (or NPU/MLU) device')


def test_debug_shows_the_traceback(tools, tmp_path):
    proc = tools.run(
        [sys.executable, 'tools/train.py', DEMO_GC, '--work-dir', tmp_path, *NO_DATA],
        {'MMGC_DEBUG': '1'},
    )
    assert proc.returncode != 0
    assert 'Traceback' in proc.stderr and 'check_data_paths' in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ('option', 'expected'),
    [
        # Refused while the runner builds the model (Runner.from_cfg).
        ('model.backbone.depth=19', 'KeyError: invalid depth 19 for resnet'),
        # Refused inside runner.train(), while it builds the dataloader.
        ('train_dataloader.batch_size=0', 'ValueError: '),
    ],
)
def test_bad_config_value_is_one_line(tools, tmp_path, option, expected):
    proc = tools.train(tools.configs / 'mask_rcnn_tiny_gc.py', tmp_path, options=[option])
    _assert_one_line(proc, expected)


@pytest.mark.slow
def test_error_inside_training_keeps_its_traceback(tools, tmp_path):
    """A ValueError raised after training started (tests/data/fault_hooks.py)."""
    proc = tools.train(
        tools.configs / 'mask_rcnn_tiny_gc_fault.py',
        tmp_path,
        env={'MMGC_FAULT': 'raise_after_iter:1'},
        splits=('train', 'test'),
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' in proc.stderr
    assert 'after_train_iter' in proc.stderr  # where it was raised
    assert tools.last_line(proc) == 'ValueError: fault injected after iteration 1'
