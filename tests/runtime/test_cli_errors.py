"""A user's error ends the tools in one line (exit 2): a value mmgc checks, a
missing file or data, a bad checkpoint, a config type not in a registry.
Everything else, a bug in mmgc, MMEngine or MMDetection while the runner is
built included, and every error with MMGC_DEBUG=1, keeps its traceback."""

from __future__ import annotations

import sys

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.registry import PARAM_SCHEDULERS, RUNNERS

from mmgc.runtime import cli
from mmgc.runtime.errors import ConfigError

DEMO_GC = 'configs/demo/mask_rcnn_r18_fpn_shapes_gc.py'
NO_DATA = ['--cfg-options', 'train_dataloader.dataset.data_root=/no/such/root/']
HINT = '(MMGC_DEBUG=1 shows the traceback)'


def _assert_one_line(proc, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(expected), lines[-1]
    assert lines[-1].endswith(HINT)
    assert 'Traceback' not in proc.stderr


def _assert_traceback(proc, last_line: str, where: str) -> None:
    """Exit 1 with the traceback, through ``where``, ending in ``last_line...``."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' in proc.stderr and where in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(last_line)


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
            "ConfigError: the GC variant must be one of ('grad', ",
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


@pytest.mark.parametrize(
    ('option', 'expected'),
    [
        # MMEngine's registry, while the runner builds the model (Runner.from_cfg).
        (
            'model.type=NoSuchDetector',
            'KeyError: NoSuchDetector is not in the mmdet::model registry. Please check',
        ),
        # mmgc's check of the strategy, before the runner is built.
        (
            'strategy.type=FSDPStrategy',
            "ConfigError: gradient centralization cannot run under strategy 'FSDPStrategy'",
        ),
    ],
)
def test_users_config_error_is_one_line(tools, tmp_path, option, expected):
    proc = tools.train(tools.configs / 'mask_rcnn_tiny_gc.py', tmp_path, options=[option])
    _assert_one_line(proc, expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    ('option', 'last_line', 'where'),
    [
        # MMDetection's ResNet, while the runner builds the model (Runner.from_cfg).
        ('model.backbone.depth=19', "KeyError: 'invalid depth 19 for resnet'", 'resnet.py'),
        # torch, inside runner.train() as it builds the dataloader, before the loop.
        ('train_dataloader.batch_size=0', 'ValueError: batch_size should be a positive', 'sampler'),
    ],
)
def test_error_of_mmdetection_or_torch_keeps_its_traceback(
    tools, tmp_path, option, last_line, where
):
    proc = tools.train(tools.configs / 'mask_rcnn_tiny_gc.py', tmp_path, options=[option])
    _assert_traceback(proc, last_line, where)


#: ``tools/train.py`` with a bug in mmgc: the GC constructor raises a ValueError.
_MMGC_BUG = """
import runpy, sys
from mmgc.engine.optimizers import GCOptimWrapperConstructor

def broken_constructor_call(self, model):
    raise ValueError('a bug in mmgc')

GCOptimWrapperConstructor.__call__ = broken_constructor_call
sys.argv = ['tools/train.py', *sys.argv[1:]]
runpy.run_path('tools/train.py', run_name='__main__')
"""


@pytest.mark.slow
def test_a_bug_in_mmgc_while_building_keeps_its_traceback(tools, tmp_path):
    """Raised inside ``runner.train()`` as it builds the optim wrapper, before the loop."""
    config = tools.configs / 'mask_rcnn_tiny_gc.py'
    args = [config, '--work-dir', tmp_path, '--cfg-options', *tools.data_options()]
    proc = tools.run([sys.executable, '-c', _MMGC_BUG, *args])
    _assert_traceback(proc, 'ValueError: a bug in mmgc', 'broken_constructor_call')


@pytest.mark.slow
def test_error_inside_training_keeps_its_traceback(tools, tmp_path):
    """A ValueError raised after training started (tests/data/fault_hooks.py)."""
    proc = tools.train(
        tools.configs / 'mask_rcnn_tiny_gc_fault.py',
        tmp_path,
        env={'MMGC_FAULT': 'raise_after_iter:1'},
        splits=('train', 'test'),
    )
    _assert_traceback(proc, 'ValueError: fault injected after iteration 1', 'after_train_iter')


def _registry_miss(build) -> KeyError:
    with pytest.raises(KeyError) as info:
        build()
    return info.value


def test_mmengines_registry_miss_message_is_recognised():
    """Pins the shape of the three ``KeyError`` messages of
    ``mmengine/registry/build_functions.py`` (``build_from_cfg``,
    ``build_runner_from_cfg``, ``build_scheduler_from_cfg``): if MMEngine
    changes one, this fails."""
    iter_based = dict(type='NoSuchLR', convert_to_iter_based=True)
    misses = {
        'model': lambda: MODELS.build(dict(type='NoSuchDetector')),
        'runner': lambda: RUNNERS.build(dict(runner_type='NoSuchRunner')),
        'parameter scheduler': lambda: PARAM_SCHEDULERS.build(
            iter_based, default_args=dict(optimizer=None, epoch_length=1)
        ),
    }
    for registry, build in misses.items():
        err = _registry_miss(build)
        match = cli._NOT_REGISTERED.match(err.args[0])
        assert match is not None, err.args[0]
        assert match['registry'].endswith(registry) and match['type'].startswith('NoSuch')
        assert cli._is_user_error(err)


#: MMEngine's message for a type not in a registry (as ``build_from_cfg`` writes it).
_MISS = (
    'SGDX is not in the mmengine::optimizer registry. Please check whether the value of '
    '`SGDX` is correct or it was registered as expected.'
)


@pytest.mark.parametrize(
    ('error', 'line'),
    [
        (ConfigError('--amp needs a GPU'), 'ConfigError: --amp needs a GPU'),
        (FileNotFoundError('no such file x.py'), 'FileNotFoundError: no such file x.py'),
        (KeyError(_MISS), f'KeyError: {_MISS}'),
    ],
)
def test_exit_on_user_error_prints_one_line(error, line, capsys, monkeypatch):
    monkeypatch.delenv('MMGC_DEBUG', raising=False)

    def main():
        raise error

    with pytest.raises(SystemExit) as info:
        cli.exit_on_user_error(main)()
    assert info.value.code == 2
    assert capsys.readouterr().err == f'{line} {HINT}\n'
    monkeypatch.setenv('MMGC_DEBUG', '1')
    with pytest.raises(type(error)):
        cli.exit_on_user_error(main)()


@pytest.mark.parametrize(
    'error',
    [
        ValueError('x'),
        TypeError('x'),
        KeyError('x'),
        KeyError('invalid depth 19 for resnet'),
        KeyError('SGDX is not in the mmengine::optimizer registry'),  # not MMEngine's sentence
        OSError('x'),
    ],
)
def test_exit_on_user_error_leaves_other_errors_alone(error):
    def main():
        raise error

    with pytest.raises(type(error)) as info:
        cli.exit_on_user_error(main)()
    assert info.value is error
