"""A user's error ends the tools in one line (exit 2): a value mmgc checks, a
missing file or data, a bad checkpoint, a config type not in a registry.
Everything else, a bug in mmgc, MMEngine or MMDetection while the runner is
built included, and every error with MMGC_DEBUG=1, keeps its traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.registry import PARAM_SCHEDULERS, RUNNERS

from mmgc.engine.optimizers import GCOptimWrapperConstructor
from mmgc.runtime import cli, entry_points
from mmgc.runtime.errors import ConfigError
from tests.conftest import TEST_CONFIGS, excerpt

DEMO_GC = 'configs/demo/mask_rcnn_r18_fpn_shapes_gc.py'
HINT = '(MMGC_DEBUG=1 shows the traceback)'


def _assert_one_line(proc, expected: str) -> None:
    assert proc.returncode == 2, excerpt(proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(expected), lines[-1]
    assert lines[-1].endswith(HINT)
    assert 'Traceback' not in proc.stderr


@pytest.fixture
def main(tools, capsys, monkeypatch, in_the_repository):
    """``tools/{train,test}.py ARGS`` in this process (its ``main``, as the script
    calls it): ``run('train', *args)`` returns the exit status and the last line on
    stderr; an error it lets through propagates. With ``options`` (``--cfg-options``),
    the run gets the shapes data too."""
    monkeypatch.delenv('MMGC_DEBUG', raising=False)
    monkeypatch.setenv('LOCAL_RANK', '0')  # parse_args sets it; restored after the test

    def run(tool: str, *args, options=None) -> tuple[int, str]:
        tool_main = dict(train=entry_points.main_train, test=entry_points.main_test)[tool]
        data = [] if options is None else ['--cfg-options', *tools.data_options(), *options]
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            tool_main([str(a) for a in (*args, *data)])
        err = capsys.readouterr().err.strip().splitlines()
        return info.value.code, err[-1] if err else ''

    return run


#: A user's error on the tools' command line: the arguments, and how the line starts.
USER_ERRORS = [
    (
        ['train', DEMO_GC, '--cfg-options', 'train_dataloader.dataset.data_root=/no/such/root/'],
        "MissingDataError: The data root '/no/such/root/' "
        '(train_dataloader.dataset.data_root) does not exist',
    ),
    (
        ['test', DEMO_GC, 'no_such_checkpoint.pth'],
        "FileNotFoundError: Checkpoint file 'no_such_checkpoint.pth' does not exist.",
    ),
    (
        ['train', DEMO_GC, '--dist-timeout', '0'],
        "ConfigError: --dist-timeout must be a positive number of seconds; got '0'",
    ),
    (
        ['train', DEMO_GC, '--gc', '--gc-variant', 'nope'],
        "ConfigError: the GC variant must be one of ('grad', ",
    ),
]


def test_user_error_is_one_line_and_exit_2(tools, tmp_path):
    """The script as a user runs it: nothing on stderr but the one line."""
    (tool, *args), expected = USER_ERRORS[0]
    proc = tools.run([sys.executable, f'tools/{tool}.py', *args, '--work-dir', tmp_path])
    _assert_one_line(proc, expected)


@pytest.mark.parametrize(('args', 'expected'), USER_ERRORS)
def test_user_error_is_one_line(main, tmp_path, args, expected):
    tool, *rest = args
    code, line = main(tool, *rest, '--work-dir', tmp_path)
    assert code == 2 and line.startswith(expected) and line.endswith(HINT), line


def test_debug_shows_the_traceback(tools, tmp_path):
    (tool, *args), _ = USER_ERRORS[0]
    proc = tools.run(
        [sys.executable, f'tools/{tool}.py', *args, '--work-dir', tmp_path], {'MMGC_DEBUG': '1'}
    )
    assert proc.returncode != 0
    assert 'Traceback' in proc.stderr and 'check_data_paths' in proc.stderr


TINY_GC = TEST_CONFIGS / 'mask_rcnn_tiny_gc.py'


@pytest.mark.parametrize(
    ('extra', 'expected'),
    [
        # MMEngine's registry, while the runner builds the model (Runner.from_cfg).
        (
            ['--cfg-options', 'model.type=NoSuchDetector'],
            'KeyError: NoSuchDetector is not in the mmdet::model registry. Please check',
        ),
        # mmgc's check of the strategy, before the runner is built.
        (
            ['--cfg-options', 'strategy.type=FSDPStrategy'],
            "ConfigError: gradient centralization cannot run under strategy 'FSDPStrategy'",
        ),
        pytest.param(
            ['--amp'],
            'ConfigError: --amp needs a CUDA (or NPU/MLU) device',
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU-only path'),
        ),
    ],
)
def test_users_config_error_is_one_line(main, tmp_path, extra, expected):
    options = extra[1:] if extra[0] == '--cfg-options' else []
    flags = [] if options else extra
    code, line = main('train', TINY_GC, '--work-dir', tmp_path, *flags, options=options)
    assert code == 2 and line.startswith(expected) and line.endswith(HINT), line


def _raised_through(info: pytest.ExceptionInfo, where: str) -> bool:
    """Whether the traceback of ``info`` passes through a file or function named ``where``."""
    return any(where in (Path(str(entry.path)).name, entry.name) for entry in info.traceback)


@pytest.mark.parametrize(
    ('option', 'error', 'message', 'where'),
    [
        # MMDetection's ResNet, while the runner builds the model (Runner.from_cfg).
        ('model.backbone.depth=19', KeyError, 'invalid depth 19 for resnet', 'resnet.py'),
        # MMDetection's batch sampler, inside runner.train() as it builds the dataloader.
        (
            'train_dataloader.batch_size=0',
            ValueError,
            'batch_size should be a positive',
            'batch_sampler.py',
        ),
    ],
)
def test_error_of_mmdetection_or_torch_keeps_its_traceback(
    main, tmp_path, option, error, message, where
):
    with pytest.raises(error, match=message) as info:
        main('train', TINY_GC, '--work-dir', tmp_path, options=[option])
    assert _raised_through(info, where)


def test_a_bug_in_mmgc_while_building_keeps_its_traceback(main, tmp_path, monkeypatch):
    """Raised inside ``runner.train()`` as it builds the optim wrapper, before the loop."""

    def broken_constructor_call(self, model):
        raise ValueError('a bug in mmgc')

    monkeypatch.setattr(GCOptimWrapperConstructor, '__call__', broken_constructor_call)
    with pytest.raises(ValueError, match='a bug in mmgc') as info:
        main('train', TINY_GC, '--work-dir', tmp_path, options=[])
    assert _raised_through(info, 'broken_constructor_call')


def _assert_traceback(proc, last_line: str, where: str) -> None:
    """Exit 1 with the traceback, through ``where``, ending in ``last_line...``."""
    assert proc.returncode == 1, excerpt(proc.stderr)
    assert 'Traceback' in proc.stderr and where in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(last_line)


@pytest.mark.slow
def test_error_inside_training_keeps_its_traceback(tools, tmp_path):
    """A ValueError raised after training started (tests/data/fault_hooks.py), in
    the script as a user runs it: exit 1 and the traceback."""
    proc = tools.train(
        tools.configs / 'mask_rcnn_tiny_gc_fault.py',
        tmp_path,
        env={'MMGC_FAULT': 'raise_after_iter:1'},
        splits=('train', 'test'),
    )
    _assert_traceback(proc, 'ValueError: fault injected after iteration 1', 'after_train_iter')


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
        with pytest.raises(KeyError) as info:
            build()
        err = info.value
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
