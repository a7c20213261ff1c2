"""Command lines and configs of tools/train.py and tools/test.py (mmgc.runtime.cli)."""

from __future__ import annotations

import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmgc.runtime import cli
from mmgc.runtime.distributed import setup_cpu_distributed
from mmgc.runtime.errors import ConfigError

TINY = 'tests/data/configs/mask_rcnn_tiny_gc.py'


@pytest.fixture(autouse=True)
def _in_the_repository(tools, monkeypatch):
    """The config paths are relative to the repository root."""
    monkeypatch.chdir(tools.root)


def _train_args(*argv: str):
    return cli.train_parser().parse_args([TINY, *argv])


def test_resume_forms(tmp_path):
    assert _train_args().resume is None
    assert _train_args('--resume').resume == 'auto'
    assert _train_args('--resume', 'a.pth').resume == 'a.pth'
    cfg = cli.train_config(_train_args('--resume', 'x/epoch_3.pth'))
    assert cfg.resume is True and cfg.load_from == 'x/epoch_3.pth'
    # --resume alone: what last_checkpoint names, read once, here ...
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    (work_dir / 'epoch_2.pth').write_bytes(b'')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_2.pth'))
    cfg = cli.train_config(_train_args('--resume', '--work-dir', str(work_dir)))
    assert cfg.resume is True and cfg.load_from == str(work_dir / 'epoch_2.pth')
    # ... and in an empty work dir nothing: a fresh start.
    cfg = cli.train_config(_train_args('--resume', '--work-dir', str(tmp_path / 'empty')))
    assert cfg.resume is False and cfg.load_from is None


def test_gc_diagnostics_flag():
    assert _train_args().gc_diagnostics is None
    cfg = cli.train_config(_train_args('--gc-diagnostics', '5'))
    assert cfg.custom_hooks == [dict(type='GCDiagnosticsHook', interval=5)]
    # A hook the config already has keeps its other settings.
    cfg.custom_hooks = [dict(type='GCDiagnosticsHook', interval=50, layers=['fc'])]
    cli._add_gc_diagnostics(cfg, 7)
    assert cfg.custom_hooks == [dict(type='GCDiagnosticsHook', interval=7, layers=['fc'])]


@pytest.mark.parametrize('bad', ['0', '-2', 'ten', '1.5'])
def test_gc_diagnostics_needs_a_positive_interval(bad, capsys):
    with pytest.raises(SystemExit):
        _train_args('--gc-diagnostics', bad)
    assert f"argument --gc-diagnostics: must be a positive integer; got '{bad}'" in (
        capsys.readouterr().err
    )


def test_work_dir_launcher_and_cfg_options():
    cfg = cli.train_config(_train_args())
    assert cfg.work_dir == osp.join('./work_dirs', 'mask_rcnn_tiny_gc')
    assert cfg.launcher == 'none'
    cfg = cli.train_config(
        _train_args(
            '--work-dir',
            'w',
            '--launcher',
            'pytorch',
            '--cfg-options',
            'train_dataloader.batch_size=3',
        )
    )
    assert (cfg.work_dir, cfg.launcher, cfg.train_dataloader.batch_size) == (
        'w',
        'pytorch',
        3,
    )


def test_bad_launcher_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        cli.train_parser().parse_args([TINY, '--launcher', 'torchrun'])
    assert "invalid choice: 'torchrun'" in capsys.readouterr().err


def test_auto_scale_lr():
    cfg = cli.train_config(_train_args('--auto-scale-lr'))
    assert cfg.auto_scale_lr.enable is True
    assert cfg.auto_scale_lr.base_batch_size == 16


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only path')
def test_amp_without_gpu_is_refused_clearly():
    with pytest.raises(ConfigError, match='--amp needs a CUDA'):
        cli.train_config(_train_args('--amp'))


def test_missing_config_file(tmp_path):
    args = cli.train_parser().parse_args([str(tmp_path / 'nope.py')])
    with pytest.raises(FileNotFoundError, match='nope.py'):
        cli.train_config(args)


def test_test_config(tmp_path):
    ckpt = tmp_path / 'epoch_1.pth'
    ckpt.write_bytes(b'')
    args = cli.test_parser().parse_args([TINY, str(ckpt), '--show-dir', 'vis'])
    cfg = cli.test_config(args)
    assert cfg.load_from == str(ckpt)
    assert cfg.default_hooks.visualization.draw is True
    assert cfg.default_hooks.visualization.test_out_dir == 'vis'
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        cli.test_config(cli.test_parser().parse_args([TINY, str(tmp_path / 'missing.pth')]))
    with pytest.raises(ConfigError, match=r'--out must name a \.pkl'):
        cli.test_config(cli.test_parser().parse_args([TINY, str(ckpt), '--out', 'r.json']))
    no_vis = ['--show', '--cfg-options', 'default_hooks.visualization=None']
    with pytest.raises(ConfigError, match='need default_hooks.visualization'):
        cli.test_config(cli.test_parser().parse_args([TINY, str(ckpt), *no_vis]))


def test_cpu_distributed_setup_is_a_no_op_without_launcher():
    cfg = Config.fromfile(TINY)
    cfg.launcher = 'none'
    assert setup_cpu_distributed(cfg) is False
    assert 'model_wrapper_cfg' not in cfg


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only path')
def test_cpu_distributed_needs_the_launcher_environment(monkeypatch):
    for name in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)
    cfg = Config.fromfile(TINY)
    cfg.launcher = 'pytorch'
    with pytest.raises(ConfigError, match='needs the environment variable RANK'):
        setup_cpu_distributed(cfg)
    cfg.launcher = 'mpi'
    monkeypatch.delenv('OMPI_COMM_WORLD_RANK', raising=False)
    with pytest.raises(ConfigError, match='OMPI_COMM_WORLD_RANK'):
        setup_cpu_distributed(cfg)
    cfg.launcher = 'spark'
    with pytest.raises(ConfigError, match='launcher must be one of'):
        setup_cpu_distributed(cfg)


class _Runner:
    """What ``_guarded`` needs of a runner: hooks, and a loop that calls
    ``before_train`` and then fails, or fails before it."""

    def __init__(self, error: Exception, after_start: bool) -> None:
        self.hooks, self.error, self.after_start = [], error, after_start

    def register_hook(self, hook) -> None:
        self.hooks.append(hook)

    def train(self):
        if self.after_start:
            for hook in self.hooks:
                hook.before_train(self)
        raise self.error


@pytest.mark.parametrize(
    'error', [ValueError('bad lr'), TypeError('no arg x'), KeyError('NoSuchHead is not')]
)
def test_bad_values_before_the_loop_are_config_errors(error):
    runner = _Runner(error, after_start=False)
    with pytest.raises(ConfigError) as info:
        cli._guarded(runner.train)
    assert info.value.__cause__ is error
    assert str(info.value) == str(error.args[0])
    # Raised once the loop started: the error itself, with its traceback.
    runner = _Runner(error, after_start=True)
    with pytest.raises(type(error)) as info:
        cli._guarded(runner.train)
    assert info.value is error


def test_other_errors_are_never_config_errors():
    error = RuntimeError('CUDA out of memory')
    with pytest.raises(RuntimeError) as info:
        cli._guarded(_Runner(error, after_start=False).train)
    assert info.value is error


def test_build_runner_turns_a_bad_model_value_into_a_config_error(tmp_path):
    cfg = Config.fromfile(TINY)
    cfg.merge_from_dict({'work_dir': str(tmp_path), 'model.backbone.depth': 19})
    with pytest.raises(ConfigError, match='invalid depth 19 for resnet') as info:
        cli.build_runner(cfg)
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize(
    ('error', 'line'),
    [
        (ConfigError('--amp needs a GPU'), 'ConfigError: --amp needs a GPU'),
        (FileNotFoundError('no such file x.py'), 'FileNotFoundError: no such file x.py'),
    ],
)
def test_exit_on_user_error_prints_one_line(error, line, capsys, monkeypatch):
    monkeypatch.delenv('MMGC_DEBUG', raising=False)

    def main():
        raise error

    with pytest.raises(SystemExit) as info:
        cli.exit_on_user_error(main)()
    assert info.value.code == 2
    assert capsys.readouterr().err == f'{line} (MMGC_DEBUG=1 shows the traceback)\n'


def test_a_config_error_shows_the_type_of_its_cause(capsys, monkeypatch):
    monkeypatch.delenv('MMGC_DEBUG', raising=False)

    def main():
        with cli._bad_values_refused():
            raise KeyError('SGDX is not in the mmengine::optimizer registry')

    with pytest.raises(SystemExit):
        cli.exit_on_user_error(main)()
    assert capsys.readouterr().err.startswith(
        'KeyError: SGDX is not in the mmengine::optimizer registry (MMGC_DEBUG'
    )


@pytest.mark.parametrize('error', [ValueError('x'), TypeError('x'), KeyError('x'), OSError('x')])
def test_exit_on_user_error_leaves_other_errors_alone(error):
    def main():
        raise error

    with pytest.raises(type(error)):
        cli.exit_on_user_error(main)()
