"""The logic behind ``tools/train.py`` and ``tools/test.py``: MMDetection 3.3's
command lines and steps, for a config of MMDetection, MMSegmentation or MMPretrain
(the codebase of its ``default_scope``, :mod:`.codebases`, the only one imported),
with each module of :mod:`mmgc.runtime` plugged in
(docs/tools.md says which MMEngine gap each covers), ``--gc`` (GC on any
config, :func:`mmgc.engine.optimizers.gc_switch.enable_gc`), ``--gc-diagnostics``,
``--dist-timeout`` and one-line user errors (:func:`exit_on_user_error`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import os.path as osp
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mmengine.config import Config, DictAction
from mmengine.device import is_cuda_available, is_mlu_available, is_npu_available
from mmengine.logging import print_log
from mmengine.runner import Runner, find_latest_checkpoint

from ..engine.hooks import GCDiagnosticsHook
from ..engine.optimizers import GCCoverageError, enable_gc
from ..engine.optimizers.strategies import check_gc_runner_strategy
from .atomic_checkpoint import use_atomic_checkpoints
from .checkpoint import CheckpointLoadError, install_safe_checkpoint_loader, safe_torch_load
from .codebases import (
    codebase_of,
    dump_results_metric,
    prepare_codebase,
    read_config,
    runner_registry,
    trigger_visualization_hook,
)
from .data_check import check_data_paths
from .distributed import (
    DIST_TIMEOUT_ENV,
    LAUNCHERS,
    set_dist_timeout,
    setup_cpu_distributed,
    torch_default_timeout,
)
from .errors import ConfigError
from .hooks import StepSeedHook
from .metrics import TEST_CONFIG_SUFFIX, TestMetricsHook
from .optimizer_state import PlainOptimizerStateHook

__all__ = [
    'USER_ERRORS',
    'build_runner',
    'exit_on_user_error',
    'latest_checkpoint',
    'parse_args',
    'run_test',
    'run_train',
    'test_config',
    'test_parser',
    'train_config',
    'train_parser',
]

#: Errors a user causes: mmgc's checks and a missing file or data (``MissingDataError`` is a
#: ``FileNotFoundError``). The tools end them in one line.
USER_ERRORS = (ConfigError, CheckpointLoadError, FileNotFoundError, GCCoverageError)

#: The ``KeyError`` message of MMEngine's builders (``mmengine/registry/build_functions.py``)
#: for a config ``type`` that is not in the registry: a misspelt or unimported type.
_NOT_REGISTERED = re.compile(
    r'(?P<type>.+?) is not in the (?P<registry>.+?) registry\. '
    r'Please check whether the value of `(?P=type)` is correct'
)


def _text(err: BaseException) -> str:
    """``err``'s message on one line (a ``KeyError``'s without the quotes of its repr)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return ' '.join(str(text).split())


def _is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is a user's: one of :data:`USER_ERRORS`, or MMEngine's
    ``KeyError`` for a config type that is not in a registry."""
    return isinstance(err, USER_ERRORS) or bool(
        isinstance(err, KeyError) and _NOT_REGISTERED.match(_text(err))
    )


def exit_on_user_error(main: Callable[..., Any]) -> Callable[..., Any]:
    """Run a tool's ``main``; a user's error (:func:`_is_user_error`) ends it with one
    line on stderr and exit status 2, every other error keeps its traceback (which
    errors, and the line: docs/tools.md, "Errors: one line, or a traceback")."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except (*USER_ERRORS, KeyError) as err:
            if not _is_user_error(err) or os.environ.get('MMGC_DEBUG', '') not in ('', '0'):
                raise
            name = type(err.__cause__ if isinstance(err, ConfigError) and err.__cause__ else err)
            hint = '(MMGC_DEBUG=1 shows the traceback)'
            print(f'{name.__name__}: {_text(err)} {hint}', file=sys.stderr)
            sys.exit(2)

    return wrapper


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer; got {text!r}')
    return int(text)


def _parser(description: str, *positional: str) -> argparse.ArgumentParser:
    """MMDetection's arguments shared by both tools, and ``--dist-timeout``."""
    parser = argparse.ArgumentParser(description=description)
    for name in positional:
        parser.add_argument(name, help=f'{name} file path')
    parser.add_argument('--work-dir', help='the dir to save logs, models and metrics')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config keys: K=V K="[a,b]"'
    )
    parser.add_argument('--launcher', choices=list(LAUNCHERS), default='none', help='job launcher')
    parser.add_argument(
        '--dist-timeout',
        metavar='SECONDS',
        help=f'how long a process waits for a dead or hung peer (default ${DIST_TIMEOUT_ENV}, '
        f"else env_cfg.dist_cfg.timeout, else this torch's default: {torch_default_timeout()})",
    )
    # torch.distributed.launch passes --local-rank (older: --local_rank).
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def train_parser() -> argparse.ArgumentParser:
    """MMDetection's ``tools/train.py`` command line, ``--gc`` (with ``--gc-layers``
    and ``--gc-variant``) and ``--gc-diagnostics``."""
    parser = _parser('Train a detector, segmentor or classifier (mmgc)', 'config')
    parser.add_argument(
        '--gc',
        action='store_true',
        help='add GC to whatever optimizer and constructor the config has (enable_gc)',
    )
    parser.add_argument(
        '--gc-layers',
        nargs='+',
        metavar='KIND',
        help='with --gc: the module kinds whose weights get GC, from conv, fc (default: both)',
    )
    parser.add_argument(
        '--gc-variant',
        metavar='VARIANT',
        help='with --gc: grad (GC on the gradient, default), update (on the update) or '
        'sgdw (SGD with decoupled decay)',
    )
    parser.add_argument('--amp', action='store_true', help='mixed precision (needs a GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true', help='scale the lr by batch size')
    parser.add_argument('--resume', nargs='?', const='auto', help='CKPT, or last_checkpoint')
    parser.add_argument(
        '--gc-diagnostics',
        type=_positive_int,
        metavar='INTERVAL',
        help='add GCDiagnosticsHook (gradient statistics every INTERVAL iterations)',
    )
    return parser


def test_parser() -> argparse.ArgumentParser:
    """MMDetection's ``tools/test.py`` command line."""
    parser = _parser(
        'Test (and eval) a detector, segmentor or classifier (mmgc)', 'config', 'checkpoint'
    )
    parser.add_argument('--out', help='dump predictions to a pickle file')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='save painted images to work_dir/timestamp/SHOW_DIR')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    return parser


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv`` and set ``LOCAL_RANK`` as MMDetection's tools do."""
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _load(args: argparse.Namespace) -> Config:
    """The config of ``args``, with MMDetection's rules and ``--dist-timeout``; its
    codebase imported and its modules registered (:func:`.codebases.prepare_codebase`).

    Raises:
        FileNotFoundError: If the config file does not exist.
        ConfigError: If its codebase is unknown, not installed or fails to import.
    """
    if not osp.isfile(args.config):
        raise FileNotFoundError(f"Config file '{args.config}' does not exist.")
    cfg = read_config(args.config)
    cfg.merge_from_dict(args.cfg_options or {})
    prepare_codebase(codebase_of(cfg))
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    set_dist_timeout(cfg, args.dist_timeout)
    return cfg


def train_config(args: argparse.Namespace) -> Config:
    """The training config of ``args`` (:func:`train_parser`). ``--resume`` alone
    loads what ``<work_dir>/last_checkpoint`` names; without one, a fresh start.

    Raises:
        FileNotFoundError: If the config file does not exist.
        ConfigError: For ``--amp`` without a GPU or with an optim wrapper other
            than ``OptimWrapper``, ``--auto-scale-lr`` without ``auto_scale_lr``,
            a ``--dist-timeout`` that is not a positive number, ``--gc-layers`` or
            ``--gc-variant`` without ``--gc``, a value ``enable_gc`` refuses.
        CheckpointLoadError: If ``last_checkpoint`` names a missing file, or the
            checkpoint to resume (whose seed a run without one takes) cannot be read.
    """
    cfg = _load(args)
    if args.gc:
        _enable_gc(cfg, args.gc_layers, args.gc_variant)
    elif args.gc_layers is not None or args.gc_variant is not None:
        given = '--gc-layers' if args.gc_layers is not None else '--gc-variant'
        raise ConfigError(f'{given} needs --gc (which turns GC on); add --gc, or drop {given}')
    if args.amp:
        if not (is_cuda_available() or is_npu_available() or is_mlu_available()):
            raise ConfigError('--amp needs a CUDA (or NPU/MLU) device; this machine has none')
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ConfigError(f"--amp needs optim_wrapper.type 'OptimWrapper'; got {wrapper!r}")
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')  # kept if AMP is on already
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
    if args.auto_scale_lr:
        if not {'enable', 'base_batch_size'} <= set(cfg.get('auto_scale_lr') or {}):
            raise ConfigError('--auto-scale-lr needs auto_scale_lr.enable and .base_batch_size')
        cfg.auto_scale_lr.enable = True
    if args.resume is not None:
        cfg.load_from = latest_checkpoint(cfg.work_dir) if args.resume == 'auto' else args.resume
        cfg.resume = cfg.load_from is not None
        if cfg.resume:
            _seed_from_checkpoint(cfg)
    if args.gc_diagnostics is not None:
        _add_gc_diagnostics(cfg, args.gc_diagnostics)
    return cfg


def latest_checkpoint(work_dir: str) -> str | None:
    """What ``<work_dir>/last_checkpoint`` names (MMEngine's ``find_latest_checkpoint``),
    which ``--resume`` alone resumes from; None without one. :mod:`.checkpoint` reads it.

    Raises:
        CheckpointLoadError: If it is empty or names a local file that does not exist
            (MMEngine would fail late, or resume from ``''``).
    """
    path = find_latest_checkpoint(work_dir)
    if path is None or '://' in path or osp.isfile(path):
        return path
    raise CheckpointLoadError(
        f'Cannot resume from {work_dir}: its last_checkpoint names {path!r}, which does not '
        'exist; pass --resume CKPT with an existing checkpoint, or delete last_checkpoint to '
        'start afresh.'
    )


def _seed_from_checkpoint(cfg: Config) -> None:
    """A resumed run without a seed of its own takes its checkpoint's
    (``meta['seed']``), in ``cfg.randomness``: MMEngine's ``Runner`` draws a new
    seed at build time and builds the train sampler with it before ``resume``
    restores the checkpoint's, so the remaining epochs would see the images in
    another order. A seed in the config (or ``--cfg-options randomness.seed=S``)
    stays, as does a checkpoint without one (then MMEngine draws one).

    Raises:
        FileNotFoundError, CheckpointLoadError: If the local checkpoint cannot be read.
    """
    randomness = dict(cfg.get('randomness') or {})
    if randomness.get('seed') is not None or '://' in cfg.load_from:  # remote: left to MMEngine
        return
    seed = (safe_torch_load(cfg.load_from, map_location='cpu').get('meta') or {}).get('seed')
    if seed is not None:
        cfg.randomness = dict(randomness, seed=seed)
        print_log(f"--resume: seed {seed}, from '{cfg.load_from}'.", logger='current')


def _enable_gc(cfg: Config, layers: Sequence[str] | None, variant: str | None) -> None:
    """``--gc``: ``enable_gc`` on ``cfg``, in place (a bad value: its ``ConfigError``)."""
    options = dict(layers=None if layers is None else tuple(layers), variant=variant)
    enable_gc(cfg, **{key: value for key, value in options.items() if value is not None})
    gc = cfg.optim_wrapper.get('gc') or {}
    print_log(
        f'--gc: GC on {gc.get("layers")} weights, variant {gc.get("variant")!r}, optimizer '
        f'{cfg.optim_wrapper.optimizer.get("type")!r}, inner constructor '
        f'{gc.get("constructor")!r}.',
        logger='current',
    )


def _add_gc_diagnostics(cfg: Config, interval: int) -> None:
    """Set the interval of ``cfg``'s ``GCDiagnosticsHook``, adding one if none."""
    hooks = list(cfg.get('custom_hooks') or [])
    types = ('GCDiagnosticsHook', GCDiagnosticsHook)
    hook = next((h for h in hooks if h.get('type') in types), None)
    if hook is None:
        hooks.append(hook := dict(type='GCDiagnosticsHook'))
    hook['interval'] = interval
    cfg.custom_hooks = hooks


def test_config(args: argparse.Namespace) -> Config:
    """The test config of ``args`` (:func:`test_parser`).

    Raises:
        FileNotFoundError: If the config or the checkpoint does not exist.
        ConfigError: For ``--out`` not ``.pkl`` / ``.pickle``, a bad
            ``--dist-timeout``, ``--show`` / ``--show-dir`` without a VisualizationHook.
    """
    cfg = _load(args)
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f"Checkpoint file '{args.checkpoint}' does not exist.")
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        if not cfg.get('default_hooks', {}).get('visualization'):
            raise ConfigError(
                '--show/--show-dir need default_hooks.visualization (a VisualizationHook)'
            )
        trigger_visualization_hook(codebase_of(cfg), cfg, args)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ConfigError(f"--out must name a .pkl or .pickle file; got '{args.out}'")
    return cfg


#: Optimizer types that apply GC by themselves (mmgc's SGDGC family).
_GC_OPTIMIZERS = ('SGDGC', 'SGD_GC', 'SGDWGC', 'SGDW_GC')


def _wants_gc(cfg: Config) -> bool:
    """Whether ``cfg``'s run is configured for GC (its constructor or optimizer)."""
    wrapper = cfg.get('optim_wrapper') or {}
    optimizer = (wrapper.get('optimizer') or {}).get('type')
    return wrapper.get('constructor') == 'GCOptimWrapperConstructor' or optimizer in _GC_OPTIMIZERS


def build_runner(cfg: Config) -> Any:
    """Build ``cfg``'s runner (``runner_type``, default MMEngine's ``Runner``).

    Raises:
        ConfigError: For a GC run under a strategy that flattens the weights.
    """
    if _wants_gc(cfg):  # FlexibleRunner: DeepSpeed, FSDP1 flatten the weights
        check_gc_runner_strategy(cfg.get('strategy'))
    if 'runner_type' in cfg:
        return runner_registry(codebase_of(cfg)).build(cfg)
    return Runner.from_cfg(cfg)


def run_train(args: argparse.Namespace) -> Any:
    """Train as ``tools/train.py`` does (after its module registration), with ``args``
    from :func:`train_parser`; returns ``Runner.train()``'s result, the model."""
    install_safe_checkpoint_loader()
    cfg = train_config(args)
    use_atomic_checkpoints(cfg)
    check_data_paths(cfg, 'train')
    setup_cpu_distributed(cfg)
    runner = build_runner(cfg)
    if args.resume == 'auto':  # logged once the run's log file exists
        pointer = osp.join(cfg.work_dir, 'last_checkpoint')
        if cfg.resume:
            print_log(f"Resuming from '{cfg.load_from}' (named by {pointer}).", logger='current')
        else:
            message = f'--resume: nothing to resume, {pointer} does not exist: training starts '
            print_log(message + 'from scratch.', logger='current', level=logging.WARNING)
    runner.register_hook(StepSeedHook())
    runner.register_hook(PlainOptimizerStateHook())
    return runner.train()


def run_test(args: argparse.Namespace) -> dict[str, Any]:
    """Test as ``tools/test.py`` does (after its module registration), with ``args``
    from :func:`test_parser`; returns the metrics of ``Runner.test()``. The config is
    dumped as ``<work_dir>/<config stem>_test.py``, not over a training run's, and the
    metrics go to ``<work_dir>/test_metrics.json`` (:mod:`.metrics`)."""
    install_safe_checkpoint_loader()
    cfg = test_config(args)
    check_data_paths(cfg, 'test')
    setup_cpu_distributed(cfg)
    stem = osp.splitext(cfg.filename or 'config.py')[0]  # Runner.dump_config's file name
    runner = build_runner(Config(cfg.to_dict(), cfg.text or '\n', stem + TEST_CONFIG_SUFFIX))
    if args.out is not None:
        runner.test_evaluator.metrics.append(dump_results_metric(codebase_of(cfg), args.out))
    runner.register_hook(TestMetricsHook(args.config, args.checkpoint))
    return runner.test()
