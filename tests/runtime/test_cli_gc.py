"""tools/train.py's --gc, --gc-layers and --gc-variant (mmgc.runtime.cli: enable_gc
on the loaded config), and --dist-timeout's help, read from torch."""

from __future__ import annotations

import datetime

import pytest
import torch
from mmengine.config import Config

from mmgc.runtime import cli
from mmgc.runtime.compare import OPTIMIZER_KEYS, config_differences
from mmgc.runtime.distributed import torch_default_timeout
from mmgc.runtime.errors import ConfigError

BASE = 'tests/data/configs/mask_rcnn_tiny.py'


pytestmark = pytest.mark.usefixtures('in_the_repository')


def _config(*argv: str) -> Config:
    return cli.train_config(cli.train_parser().parse_args([BASE, *argv]))


def test_gc_switches_the_config_on_and_differs_only_in_the_allowed_keys():
    plain, gc = _config(), _config('--gc')
    assert plain.optim_wrapper.optimizer.type == 'SGD' and 'gc' not in plain.optim_wrapper
    assert gc.optim_wrapper.constructor == 'GCOptimWrapperConstructor'
    assert gc.optim_wrapper.gc == dict(
        constructor='DefaultOptimWrapperConstructor', layers=['conv', 'fc'], variant='grad'
    )
    assert gc.optim_wrapper.optimizer.type == 'SGDGC'
    assert 'mmgc' in gc.custom_imports.imports
    # lr, momentum, decay and everything else stay the config's
    assert {k: v for k, v in gc.optim_wrapper.optimizer.items() if k != 'type'} == {
        k: v for k, v in plain.optim_wrapper.optimizer.items() if k != 'type'
    }
    changed = config_differences(gc, plain, allowed=())
    assert changed == [
        'custom_imports.allow_failed_imports',
        'custom_imports.imports',
        'optim_wrapper.constructor',
        'optim_wrapper.gc.constructor',
        'optim_wrapper.gc.layers',
        'optim_wrapper.gc.variant',
        'optim_wrapper.optimizer.type',
    ]
    assert all(any(k == p or k.startswith(p + '.') for p in OPTIMIZER_KEYS) for k in changed)
    assert config_differences(gc, plain) == []  # what the comparison checks


def test_gc_layers_and_variant():
    cfg = _config('--gc', '--gc-layers', 'conv', '--gc-variant', 'sgdw')
    assert cfg.optim_wrapper.gc == dict(
        constructor='DefaultOptimWrapperConstructor', layers=['conv'], variant='sgdw'
    )
    assert cfg.optim_wrapper.optimizer.type == 'SGDWGC'
    cfg = _config('--gc', '--gc-variant', 'update')
    assert (cfg.optim_wrapper.gc.variant, cfg.optim_wrapper.optimizer.type) == ('update', 'SGDGC')


def test_gc_builds_an_optimizer_with_gc_on_conv_and_fc_weights_only():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.optim import build_optim_wrapper

    register_all_modules(init_default_scope=False)
    cfg = _config('--gc', '--gc-layers', 'conv')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    gc_on = {id(p) for g in optimizer.param_groups if g.get('gc') for p in g['params']}
    convs = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)}
    assert gc_on == convs  # every conv weight, no FC weight, no bias or norm


@pytest.mark.parametrize(
    'argv, match',
    [
        (['--gc-layers', 'conv'], '--gc-layers needs --gc'),
        (['--gc-variant', 'update'], '--gc-variant needs --gc'),
        (['--gc', '--gc-variant', 'nope'], "must be one of .*'grad'.*got 'nope'"),
        (['--gc', '--gc-layers', 'conv2d'], "'conv2d'"),
    ],
)
def test_bad_gc_options_are_config_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        _config(*argv)


def test_dist_timeout_help_says_what_this_torch_uses(capsys):
    from torch.distributed import constants

    minutes = constants.default_pg_timeout / datetime.timedelta(minutes=1)
    text = torch_default_timeout()
    assert text.startswith(f'{minutes:g} minutes')
    nccl = getattr(constants, 'default_pg_nccl_timeout', None)
    if isinstance(nccl, datetime.timedelta) and nccl != constants.default_pg_timeout:
        assert text.endswith(f'; NCCL: {nccl / datetime.timedelta(minutes=1):g} minutes')
    else:  # one default for every backend (torch 2.1), or a build without NCCL
        assert 'NCCL' not in text
    with pytest.raises(SystemExit):
        cli.train_parser().parse_args(['--help'])
    assert "this torch's default:" in ' '.join(capsys.readouterr().out.split())


@pytest.mark.parametrize('strategy', ['DeepSpeedStrategy', 'FSDPStrategy'])
def test_a_gc_run_under_a_flattening_strategy_stops_before_building(strategy):
    """FlexibleRunner's DeepSpeed / FSDP1 strategies flatten every weight to 1-D:
    a GC run under one stops in one sentence; its baseline is left alone."""
    gc = _config('--gc')
    gc.strategy = dict(type=strategy)
    with pytest.raises(ConfigError, match=f"cannot run under strategy '{strategy}'"):
        cli.build_runner(gc)
    plain = _config()
    plain.strategy = dict(type=strategy)
    assert not cli._wants_gc(plain) and cli._wants_gc(gc)


def test_a_run_that_centralizes_nothing_is_a_users_error():
    from mmgc.engine.optimizers import GCCoverageError

    assert GCCoverageError in cli.USER_ERRORS
