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
BAD_INTERVALS = ('0', '-2', 'ten', '1.5')


pytestmark = pytest.mark.usefixtures('in_the_repository')


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


def test_resume_takes_the_checkpoints_seed_unless_one_is_given(tmp_path):
    """Before the Runner is built (MMEngine would build the train sampler with a
    seed of its own drawing, then restore the checkpoint's): ``--resume CKPT`` and
    ``--resume`` alone take the checkpoint's seed; a given seed stays."""
    ckpt = tmp_path / 'epoch_1.pth'
    torch.save(dict(meta=dict(seed=1234, epoch=1), state_dict={}), ckpt)
    unseeded = ('--cfg-options', 'randomness.seed=None')
    cfg = cli.train_config(_train_args('--resume', str(ckpt), *unseeded))
    assert cfg.randomness == dict(seed=1234, deterministic=True)  # the rest kept
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    (work_dir / 'last_checkpoint').write_text(str(ckpt))
    cfg = cli.train_config(_train_args('--resume', '--work-dir', str(work_dir), *unseeded))
    assert cfg.randomness.seed == 1234
    given = cli.train_config(
        _train_args('--resume', str(ckpt), '--cfg-options', 'randomness.seed=5')
    )
    assert given.randomness.seed == 5
    assert cli.train_config(_train_args(*unseeded)).randomness.seed is None  # no resume
    torch.save(dict(meta=dict(epoch=1), state_dict={}), ckpt)  # no seed saved: MMEngine draws
    assert cli.train_config(_train_args('--resume', str(ckpt), *unseeded)).randomness.seed is None
    with pytest.raises(FileNotFoundError, match="Checkpoint file '.*no.pth' does not exist"):
        cli.train_config(_train_args('--resume', str(tmp_path / 'no.pth'), *unseeded))


def test_gc_diagnostics_flag():
    assert _train_args().gc_diagnostics is None
    cfg = cli.train_config(_train_args('--gc-diagnostics', '5'))
    assert cfg.custom_hooks == [dict(type='GCDiagnosticsHook', interval=5)]
    # A hook the config already has keeps its other settings.
    cfg.custom_hooks = [dict(type='GCDiagnosticsHook', interval=50, layers=['fc'])]
    cli._add_gc_diagnostics(cfg, 7)
    assert cfg.custom_hooks == [dict(type='GCDiagnosticsHook', interval=7, layers=['fc'])]


@pytest.mark.parametrize(
    'option, value, message',
    [
        *[('--gc-diagnostics', v, f"must be a positive integer; got '{v}'") for v in BAD_INTERVALS],
        ('--launcher', 'torchrun', "invalid choice: 'torchrun'"),
    ],
)
def test_bad_arguments_are_refused_by_argparse(option, value, message, capsys):
    with pytest.raises(SystemExit):
        _train_args(option, value)
    assert f'argument {option}: {message}' in capsys.readouterr().err


def test_work_dir_launcher_and_cfg_options():
    cfg = cli.train_config(_train_args())
    assert cfg.work_dir == osp.join('./work_dirs', 'mask_rcnn_tiny_gc')
    assert cfg.launcher == 'none'
    argv = [
        '--work-dir',
        'w',
        '--launcher',
        'pytorch',
        '--cfg-options',
        'train_dataloader.batch_size=3',
    ]
    cfg = cli.train_config(_train_args(*argv))
    assert (cfg.work_dir, cfg.launcher, cfg.train_dataloader.batch_size) == ('w', 'pytorch', 3)


def test_auto_scale_lr():
    cfg = cli.train_config(_train_args('--auto-scale-lr'))
    assert cfg.auto_scale_lr.enable is True
    assert cfg.auto_scale_lr.base_batch_size == 16


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


def test_build_runner_leaves_a_bad_model_value_to_mmdetection(tmp_path):
    """Not a check of mmgc: MMDetection's own error, not a ConfigError."""
    cfg = Config.fromfile(TINY)
    cfg.merge_from_dict({'work_dir': str(tmp_path), 'model.backbone.depth': 19})
    with pytest.raises(KeyError, match='invalid depth 19 for resnet'):
        cli.build_runner(cfg)
