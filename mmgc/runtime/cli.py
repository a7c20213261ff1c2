"""The logic behind ``tools/train.py`` and ``tools/test.py``.

The command lines are MMDetection 3.3's (``tools/train.py``,
``tools/test.py``); on top of them:

- checkpoints load through :mod:`mmgc.runtime.checkpoint` (weights-only);
- missing data stops the run before the model is built
  (:mod:`mmgc.runtime.data_check`);
- without CUDA, distributed runs use gloo (:mod:`mmgc.runtime.distributed`)
  and ``--amp`` is refused with a clear error;
- a seeded training run re-seeds its random generators from
  ``(seed, epoch, iter)`` (:class:`mmgc.runtime.hooks.StepSeedHook`), so a
  resumed run draws the same numbers as one that never stopped;
- checkpoints are saved atomically (:mod:`mmgc.runtime.atomic_checkpoint`);
  ``--resume`` (auto) says at once when there is nothing to resume
  (:mod:`mmgc.runtime.resume`), and a GC run resumes from a plain-SGD
  checkpoint (:mod:`mmgc.runtime.optimizer_state`);
- ``--dist-timeout`` bounds how long a rank waits for a dead or hung peer
  (:mod:`mmgc.runtime.distributed`);
- ``--gc-diagnostics INTERVAL`` adds ``GCDiagnosticsHook`` (MMEngine's
  ``--cfg-options`` cannot parse a ``dict(...)`` inside a list);
- a user's error ends in one line, everything else keeps its traceback
  (:func:`exit_on_user_error`);
- the test tool writes its metrics to ``<work_dir>/test_metrics.json``
  (:mod:`mmgc.runtime.metrics`), which ``tools/compare_ap.py`` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import os.path as osp
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mmengine.config import Config, DictAction
from mmengine.device import is_cuda_available, is_mlu_available, is_npu_available
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..engine.hooks import GCDiagnosticsHook
from .atomic_checkpoint import use_atomic_checkpoints
from .checkpoint import CheckpointLoadError, install_safe_checkpoint_loader
from .data_check import MissingDataError, check_data_paths
from .distributed import DIST_TIMEOUT_ENV, LAUNCHERS, set_dist_timeout, setup_cpu_distributed
from .errors import ConfigError
from .hooks import StepSeedHook
from .metrics import (
    METRICS_FILENAME,
    TEST_CONFIG_SUFFIX,
    TrainingRecordHook,
    write_metrics_file,
)
from .optimizer_state import PlainOptimizerStateHook
from .resume import latest_checkpoint

__all__ = [
    'USER_ERRORS',
    'build_runner',
    'exit_on_user_error',
    'parse_args',
    'run_test',
    'run_train',
    'test_config',
    'test_parser',
    'train_config',
    'train_parser',
]

#: Errors a user causes: mmgc's own (a bad option or config value, missing
#: data, a bad checkpoint) and a missing file. The tools end them in one line.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    MissingDataError,
    CheckpointLoadError,
    FileNotFoundError,
)

#: What a config's bad value raises while a run is built from it.
_BAD_VALUE_ERRORS = (ValueError, TypeError, KeyError)


def _text(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return ' '.join(str(text).split())


def exit_on_user_error(main: Callable[..., Any]) -> Callable[..., Any]:
    """Run a tool's ``main``; a :data:`USER_ERRORS` error ends it with one
    line on stderr, ``<ErrorType>: <message>``, and exit status 2.

    A :class:`~mmgc.runtime.errors.ConfigError` raised from a config's bad
    value shows that value's error type. Any other error keeps its
    traceback; ``MMGC_DEBUG=1`` shows it for user errors too.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get('MMGC_DEBUG', '') not in ('', '0'):
                raise
            cause = err.__cause__ if isinstance(err, ConfigError) else None
            print(
                f'{type(cause or err).__name__}: {_text(err)} (MMGC_DEBUG=1 shows the traceback)',
                file=sys.stderr,
            )
            sys.exit(2)

    return wrapper


@contextlib.contextmanager
def _bad_values_refused(started: Callable[[], bool] = lambda: False) -> Any:
    """Re-raise a ``ValueError`` / ``TypeError`` / ``KeyError`` as a
    :class:`~mmgc.runtime.errors.ConfigError`, unless ``started()``."""
    try:
        yield
    except ConfigError:
        raise
    except _BAD_VALUE_ERRORS as err:
        if started():
            raise
        raise ConfigError(_text(err)) from err


_CFG_OPTIONS_HELP = (
    'override some settings in the used config, the key-value pair in '
    'xxx=yyy format will be merged into config file. If the value to be '
    'overwritten is a list, it should be like key="[a,b]" or key=a,b. It also '
    'allows nested list/tuple values, e.g. key="[(a,b),(c,d)]". Note that the '
    'quotation marks are necessary and that no white space is allowed.'
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help=_CFG_OPTIONS_HELP)
    parser.add_argument('--launcher', choices=list(LAUNCHERS), default='none', help='job launcher')
    parser.add_argument(
        '--dist-timeout',
        metavar='SECONDS',
        default=None,
        help='how long a process of a distributed run waits for the others in a '
        'collective before it gives up (a dead or hung process); default: '
        f"${DIST_TIMEOUT_ENV}, else the config's env_cfg.dist_cfg.timeout, else "
        "torch's 30 minutes",
    )
    # torch.distributed.launch passes --local-rank (older: --local_rank).
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def train_parser() -> argparse.ArgumentParser:
    """MMDetection's ``tools/train.py`` command line."""
    parser = argparse.ArgumentParser(description='Train a detector (mmgc)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training (needs a GPU)',
    )
    parser.add_argument(
        '--auto-scale-lr', action='store_true', help='enable automatically scaling LR.'
    )
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='If specify checkpoint path, resume from it, while if not '
        'specify, try to auto resume from the latest checkpoint in the work '
        'directory.',
    )
    parser.add_argument(
        '--gc-diagnostics',
        type=_positive_int,
        metavar='INTERVAL',
        help='add GCDiagnosticsHook: log gradient statistics before and after GC every '
        'INTERVAL iterations (for tools/plot_gc_stats.py)',
    )
    _add_common(parser)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer; got {text!r}')
    return value


def test_parser() -> argparse.ArgumentParser:
    """MMDetection's ``tools/test.py`` command line."""
    parser = argparse.ArgumentParser(description='Test (and eval) a detector (mmgc)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir',
        help='the directory to save the file containing evaluation metrics (test_metrics.json)',
    )
    parser.add_argument(
        '--out',
        type=str,
        help='dump predictions to a pickle file for offline evaluation',
    )
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. If specified, it '
        'will be automatically saved to the work_dir/timestamp/show_dir',
    )
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    _add_common(parser)
    return parser


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv`` and set ``LOCAL_RANK`` as MMDetection's tools do."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _load(args: argparse.Namespace) -> Config:
    if not osp.isfile(args.config):
        raise FileNotFoundError(f"Config file '{args.config}' does not exist.")
    with _bad_values_refused():
        cfg = Config.fromfile(args.config)
        if args.cfg_options is not None:
            cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    # work_dir: command line > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def _accelerator_available() -> bool:
    return is_cuda_available() or is_npu_available() or is_mlu_available()


def train_config(args: argparse.Namespace) -> Config:
    """The training config that ``args`` describe.

    Args:
        args (argparse.Namespace): From :func:`train_parser`.

    Returns:
        Config: With ``launcher``, ``work_dir``, AMP, lr scaling, resume and
        GC diagnostics settings applied. ``--resume`` without a path sets
        ``load_from`` to what ``<work_dir>/last_checkpoint`` names; with no
        ``last_checkpoint`` it leaves ``resume`` False (a fresh start).

    Raises:
        FileNotFoundError: If the config file does not exist.
        ConfigError: If ``--amp`` is asked on a machine without a GPU or
            for an optim wrapper other than ``OptimWrapper``,
            ``--auto-scale-lr`` for a config without ``auto_scale_lr``, or
            ``--dist-timeout`` is not a positive number.
        CheckpointLoadError: If ``--resume`` finds a ``last_checkpoint``
            that names a missing file.
    """
    cfg = _load(args)
    set_dist_timeout(cfg, getattr(args, 'dist_timeout', None))
    if args.amp:
        if not _accelerator_available():
            raise ConfigError(
                '--amp needs a CUDA (or NPU/MLU) device, and this machine has '
                'none; train without --amp.'
            )
        wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper_type == 'AmpOptimWrapper':
            print_log(
                'AMP training is already enabled in your config.',
                logger='current',
                level=logging.WARNING,
            )
        elif wrapper_type != 'OptimWrapper':
            raise ConfigError(
                '--amp is only supported when optim_wrapper.type is '
                f"'OptimWrapper'; got {wrapper_type!r}"
            )
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        scale = cfg.get('auto_scale_lr')
        if not scale or 'enable' not in scale or 'base_batch_size' not in scale:
            raise ConfigError(
                'Can not find "auto_scale_lr", "auto_scale_lr.enable" or '
                '"auto_scale_lr.base_batch_size" in your configuration file.'
            )
        cfg.auto_scale_lr.enable = True
    if args.resume is not None:
        cfg.load_from = latest_checkpoint(cfg.work_dir) if args.resume == 'auto' else args.resume
        cfg.resume = cfg.load_from is not None
    interval = getattr(args, 'gc_diagnostics', None)
    if interval is not None:
        _add_gc_diagnostics(cfg, interval)
    return cfg


def _add_gc_diagnostics(cfg: Config, interval: int) -> None:
    """Set the interval of ``cfg``'s ``GCDiagnosticsHook``, adding one if none."""
    hooks = list(cfg.get('custom_hooks') or [])
    for hook in hooks:
        if hook.get('type') in ('GCDiagnosticsHook', GCDiagnosticsHook):
            hook['interval'] = interval
            break
    else:
        hooks.append(dict(type='GCDiagnosticsHook', interval=interval))
    cfg.custom_hooks = hooks


def test_config(args: argparse.Namespace) -> Config:
    """The test config that ``args`` describe.

    Args:
        args (argparse.Namespace): From :func:`test_parser`.

    Returns:
        Config: With ``launcher``, ``work_dir``, ``load_from`` and the
        visualization settings applied.

    Raises:
        FileNotFoundError: If the config or the checkpoint does not exist.
        ConfigError: If ``--out`` does not end in ``.pkl`` / ``.pickle``,
            ``--dist-timeout`` is not a positive number, or ``--show`` /
            ``--show-dir`` is given for a config without a visualization
            hook.
    """
    cfg = _load(args)
    set_dist_timeout(cfg, getattr(args, 'dist_timeout', None))
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f"Checkpoint file '{args.checkpoint}' does not exist.")
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        hooks = cfg.get('default_hooks', {})
        if 'visualization' not in hooks:
            raise ConfigError(
                'VisualizationHook must be included in default_hooks; refer to '
                "usage 'visualization=dict(type='VisualizationHook')'"
            )
        hooks['visualization']['draw'] = True
        if args.show:
            hooks['visualization']['show'] = True
            hooks['visualization']['wait_time'] = args.wait_time
        if args.show_dir:
            hooks['visualization']['test_out_dir'] = args.show_dir
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ConfigError(f"--out must name a .pkl or .pickle file; got '{args.out}'")
    return cfg


def build_runner(cfg: Config) -> Any:
    """Build the runner ``cfg`` names (MMEngine's ``Runner`` by default).

    Raises:
        ConfigError: Raised from the ``ValueError``, ``TypeError`` or
            ``KeyError`` of a bad config value (a misspelt type, a bad
            argument of the model).
    """
    with _bad_values_refused():
        if 'runner_type' in cfg:
            from mmdet.registry import RUNNERS

            return RUNNERS.build(cfg)
        from mmengine.runner import Runner

        return Runner.from_cfg(cfg)


class _RunStarted(Hook):
    """Notes the loop's first hook call: building from the config is over."""

    priority = 'LOWEST'

    def __init__(self) -> None:
        self.started = False

    def before_train(self, runner: Any) -> None:
        self.started = True

    def before_test(self, runner: Any) -> None:
        self.started = True


def _guarded(run: Callable[[], Any]) -> Any:
    """Call ``runner.train`` or ``runner.test`` (``run``).

    Inside them MMEngine still builds from the config (dataloaders,
    optimizer, schedulers, the checkpoint load) before the loop's first
    hook: a ``ValueError``, ``TypeError`` or ``KeyError`` raised then is a
    config's bad value and becomes a ``ConfigError``. Anything raised once
    the loop has started keeps its type and traceback.
    """
    started = _RunStarted()
    run.__self__.register_hook(started)
    with _bad_values_refused(lambda: started.started):
        return run()


def run_train(args: argparse.Namespace) -> Any:
    """Train as ``tools/train.py`` does, after its module registration.

    Besides MMEngine's ``Runner``: the checkpoint hook saves atomically,
    ``--resume`` without a path logs what it resumes from (or that there is
    nothing to resume), and the hooks
    :class:`~mmgc.runtime.hooks.StepSeedHook` and
    :class:`~mmgc.runtime.optimizer_state.PlainOptimizerStateHook` are registered.

    Args:
        args (argparse.Namespace): From :func:`train_parser`.

    Returns:
        The trained model (``Runner.train()``'s result).
    """
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
            print_log(
                f'--resume: nothing to resume, {pointer} does not exist: training starts '
                'from scratch.',
                logger='current',
                level=logging.WARNING,
            )
    runner.register_hook(StepSeedHook())
    runner.register_hook(PlainOptimizerStateHook())
    return _guarded(runner.train)


def _with_test_dump_name(cfg: Config) -> Config:
    """``cfg`` renamed ``<config stem>_test.py``, for MMEngine's config dump.

    A test into a training run's work dir would otherwise overwrite the
    training config that MMEngine dumped there.
    """
    stem = osp.splitext(osp.basename(cfg.filename or 'config.py'))[0]
    name = osp.join(osp.dirname(cfg.filename or ''), stem + TEST_CONFIG_SUFFIX)
    return Config(cfg.to_dict(), cfg_text=cfg.text or '\n', filename=name)


def run_test(args: argparse.Namespace) -> dict[str, Any]:
    """Test as ``tools/test.py`` does, after its module registration.

    Writes ``<work_dir>/test_metrics.json`` (rank 0 only) with the training
    config and seed that the checkpoint recorded
    (:class:`~mmgc.runtime.metrics.TrainingRecordHook`). The test-time
    config is dumped as ``<work_dir>/<config stem>_test.py``, so a test into
    the training run's work dir leaves the training config there intact.

    Args:
        args (argparse.Namespace): From :func:`test_parser`.

    Returns:
        dict: The metrics ``Runner.test()`` returned.
    """
    install_safe_checkpoint_loader()
    cfg = test_config(args)
    check_data_paths(cfg, 'test')
    setup_cpu_distributed(cfg)
    runner = build_runner(_with_test_dump_name(cfg))
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults

        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    record = TrainingRecordHook()
    runner.register_hook(record)
    metrics = _guarded(runner.test)
    if runner.rank == 0:
        path = write_metrics_file(
            osp.join(cfg.work_dir, METRICS_FILENAME),
            metrics,
            config=args.config,
            checkpoint=args.checkpoint,
            config_text=cfg.pretty_text,
            train_config_text=record.config_text,
            seed=record.seed,
        )
        print_log(f'Metrics written to {path}', logger='current')
    return metrics
