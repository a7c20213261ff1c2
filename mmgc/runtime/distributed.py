"""Distributed runs without a GPU (gloo), the process-group timeout and a clean end
(docs/tools.md, "Distributed"; docs/faults.md, "Distributed runs losing a process"):
MMEngine 0.10's ``init_dist`` and DDP wrapper need CUDA, only the config sets the
timeout, and its ``Runner`` never destroys the process group it starts.
"""

from __future__ import annotations

import datetime
import functools
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn, Optional, TypeVar

import torch
import torch.distributed as torch_dist
from mmengine.model import MMDistributedDataParallel as DDP
from mmengine.registry import MODEL_WRAPPERS
from torch import nn

from .._compat import process_groups, run_exit_handlers
from .errors import ConfigError

__all__ = [
    'CPUDistributedDataParallel',
    'DIST_TIMEOUT_ENV',
    'LAUNCHERS',
    'end_process_group',
    'ends_process_group',
    'exit_status',
    'leave',
    'parse_dist_timeout',
    'set_dist_timeout',
    'setup_cpu_distributed',
    'torch_default_timeout',
]

#: The ``--launcher`` choices of MMDetection's tools.
LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')

#: Environment variable with the default of ``--dist-timeout`` (seconds).
DIST_TIMEOUT_ENV = 'MMGC_DIST_TIMEOUT'

#: The variables each launcher must set: rank and world size first.
_REQUIRED = {
    'pytorch': ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'),
    'slurm': ('SLURM_PROCID', 'SLURM_NTASKS'),
    'mpi': ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'MASTER_ADDR'),
}
_LOCAL_RANK = dict(pytorch='LOCAL_RANK', slurm='SLURM_LOCALID', mpi='OMPI_COMM_WORLD_LOCAL_RANK')


def _minutes(delta: datetime.timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f'{minutes:g} minute{"s" * (minutes != 1)}'


def torch_default_timeout() -> str:
    """This torch's process-group timeout when none is given (``torch.distributed.constants``:
    ``default_pg_timeout``, and ``default_pg_nccl_timeout`` where NCCL's differs), e.g.
    ``'30 minutes'`` or ``'30 minutes; NCCL: 10 minutes'``."""
    try:
        from torch.distributed import constants
    except ImportError:  # a torch built without torch.distributed
        return 'none: this torch has no torch.distributed'
    text = _minutes(constants.default_pg_timeout)
    nccl = getattr(constants, 'default_pg_nccl_timeout', None)
    if isinstance(nccl, datetime.timedelta) and nccl != constants.default_pg_timeout:
        text += f'; NCCL: {_minutes(nccl)}'
    return text


def parse_dist_timeout(value: Any, source: str = '--dist-timeout') -> float:
    """Seconds of a process-group timeout, from a number or a string.

    Raises:
        ConfigError: If ``value`` is not a positive finite number (named by ``source``).
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    if not (0 < seconds < float('inf')):
        raise ConfigError(f'{source} must be a positive number of seconds; got {value!r}')
    return seconds


def set_dist_timeout(cfg: Any, seconds: Any = None) -> Optional[float]:
    """Record the process-group timeout in ``cfg.env_cfg.dist_cfg.timeout``: ``seconds``
    (``--dist-timeout``), else ``MMGC_DIST_TIMEOUT``, else the config's own value.
    Returns the timeout now in the config (None: torch's default).

    Raises:
        ConfigError: If the given timeout is not a positive number.
    """
    if seconds is not None:
        value = parse_dist_timeout(seconds)
    elif os.environ.get(DIST_TIMEOUT_ENV):
        value = parse_dist_timeout(os.environ[DIST_TIMEOUT_ENV], DIST_TIMEOUT_ENV)
    else:
        current = ((cfg.get('env_cfg') or {}).get('dist_cfg') or {}).get('timeout')
        return None if current is None else float(current)
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['timeout'] = value
    return value


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(DDP):
    """``MMDistributedDataParallel`` for a CPU model: drops the ``device_ids``
    that MMEngine's ``Runner`` always passes."""

    def __init__(self, module: nn.Module, device_ids: Any = None, **kwargs: Any) -> None:
        super().__init__(module=module, device_ids=None, **kwargs)


def _launcher_env(launcher: str) -> None:
    """Set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
    from the launcher's variables, as MMEngine's ``init_dist`` does.

    Raises:
        ConfigError: If a variable the launcher sets is missing or not an integer.
    """
    for name in (n for n in _REQUIRED[launcher] if n not in os.environ):
        raise ConfigError(
            f'--launcher {launcher} needs the environment variable {name}, which is not '
            'set; start the run with its launcher (tools/dist_train.sh uses torchrun, '
            'tools/slurm_train.sh srun).'
        )
    names = (*_REQUIRED[launcher][:2], _LOCAL_RANK[launcher])
    values = [os.environ.get(name, '0') for name in names]
    for name, value in zip(names, values):
        if not value.strip().lstrip('-').isdigit():
            raise ConfigError(f'{name} must be an integer; got {value!r}')
    if launcher == 'slurm' and 'MASTER_ADDR' not in os.environ:  # the first node
        hosts = f'scontrol show hostname {os.environ.get("SLURM_NODELIST", "")} | head -n1'
        os.environ['MASTER_ADDR'] = subprocess.getoutput(hosts)
    os.environ.setdefault('MASTER_PORT', '29500')  # MMEngine's default
    os.environ.update(zip(('RANK', 'WORLD_SIZE', 'LOCAL_RANK'), values))


def setup_cpu_distributed(cfg: Any) -> bool:
    """Prepare ``cfg`` (in place: gloo, :class:`CPUDistributedDataParallel`) and the
    process group for a distributed CPU run; nothing for ``launcher='none'`` or with CUDA.
    Returns whether a gloo process group was set up here.

    Raises:
        ConfigError: If ``cfg.launcher`` is not one of :data:`LAUNCHERS`, or
            the launcher's environment variables are missing.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher not in LAUNCHERS:
        raise ConfigError(f'launcher must be one of {LAUNCHERS}; got {launcher!r}')
    if launcher == 'none' or torch.cuda.is_available():
        return False
    _launcher_env(launcher)
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'  # no CUDA: whatever the config asked
    if cfg.get('model_wrapper_cfg') is None:  # Runner's default, on the CPU
        unused = cfg.get('find_unused_parameters', False)
        cfg.model_wrapper_cfg = dict(broadcast_buffers=False, find_unused_parameters=unused)
    wrapper = cfg.model_wrapper_cfg
    if wrapper.get('type', 'MMDistributedDataParallel') in ('MMDistributedDataParallel', DDP):
        wrapper['type'] = 'CPUDistributedDataParallel'
    if not torch_dist.is_initialized():  # env:// reads RANK, WORLD_SIZE, MASTER_*
        timeout = dist_cfg.get('timeout')
        kwargs = {} if timeout is None else {'timeout': datetime.timedelta(seconds=timeout)}
        torch_dist.init_process_group('gloo', **kwargs)
    return True


#: The process groups that :func:`end_process_group` ended, held until the process
#: leaves (a gloo group's threads are joined when its last reference goes).
_ENDED_GROUPS: list[Any] = []


def end_process_group() -> bool:
    """Destroy the default process group, and every group made from it, if one is
    alive (``torch.distributed.destroy_process_group``: local to this process, no
    collective), and hold each group until the process leaves. Returns whether
    there was one.

    A process that starts a group ends it. One that exits with a gloo group alive
    can abort while the interpreter finalizes (SIGABRT, exit status -6, after its
    work is done): gloo's worker threads still hold work objects with Python
    references, and releasing one needs the GIL, which a thread cannot take once
    finalization has begun (pytorch/pytorch#179291, abandoned). Freeing the group
    earlier is no cure either: its destructor joins those threads while the
    freeing thread holds the GIL, and a worker that is releasing its last work
    waits for that GIL for ever (seen here with py-spy: torch 2.1 in
    ``destroy_process_group``, where torch's last reference went, and torch 2.13
    in the ``gc.collect`` after it, which freed the group a finished DDP wrapper
    held). So the groups are held here (:data:`_ENDED_GROUPS`), taken from
    torch's table before it lets go of them, and a tool then leaves without finalizing
    (:func:`leave`). For gloo, ``destroy_process_group`` empties torch's tables
    (``is_initialized()`` is then False); its backend ``shutdown`` is a no-op
    (torch 2.1 to 2.14). With NCCL the same call flushes this rank's pending work
    and destroys the communicators (torch >= 2.6; an abort on 2.4 and 2.5),
    waiting at most the group's timeout, whoever holds the group, and keeps
    torch's exit warning quiet ("process group has NOT been destroyed" on 2.4 and
    2.5, "destroy_process_group() was not called before program exit" from 2.6
    on). MMEngine's ``Runner`` starts a group (``init_dist``, or
    :func:`setup_cpu_distributed` here) and never destroys it.
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return False
    _ENDED_GROUPS.extend(process_groups())
    torch_dist.destroy_process_group()
    return True


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, or replaced by None
            pass


def leave(status: int) -> NoReturn:
    """End this process with exit status ``status`` as a normal exit would, less
    the interpreter's finalization: wait for the other non-daemon Python threads,
    run the ``atexit`` handlers (logging's flush, temporary folders, a user's
    own), flush stdout and stderr, then ``os._exit``. For a process whose groups
    :func:`end_process_group` holds: finalizing would free them while gloo's
    threads may still need the GIL."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    run_exit_handlers()
    _flush_streams()
    os._exit(status)


def exit_status(error: BaseException) -> int:
    """The exit status Python gives a process that ``error`` ends, after printing
    what Python prints for it: ``SystemExit``'s code (None: 0; a message: printed,
    1), 130 for ``KeyboardInterrupt`` (128 + SIGINT), 1 and the traceback for any
    other exception (``sys.excepthook``)."""
    if isinstance(error, SystemExit):
        if error.code is None or isinstance(error.code, int):
            return error.code or 0
        print(error.code, file=sys.stderr)
        return 1
    sys.excepthook(type(error), error, error.__traceback__)
    return 130 if isinstance(error, KeyboardInterrupt) else 1


_Main = TypeVar('_Main', bound=Callable[..., Any])


def ends_process_group(main: _Main) -> _Main:
    """``main``, ending the process group it started (:func:`end_process_group`)
    however it returns: normally, with a user's error or with any other exception.
    If it ended one, the process then leaves at once (:func:`leave`) with the
    status Python would give it (:func:`exit_status`; ``main``'s int return
    value, else 0), so that the interpreter never finalizes with gloo's threads
    alive. A group that was alive before ``main`` ran is left as it was. Put it
    outermost, outside torch's ``@record``, so that a failing rank's error is
    recorded (and shown by torchrun as the root cause) before its peers see the
    group close."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch_dist.is_available() and torch_dist.is_initialized():
            return main(*args, **kwargs)  # not this call's group
        try:
            outcome = main(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001  (any ending ends the group)
            if not end_process_group():
                raise
            leave(exit_status(error))
        if not end_process_group():
            return outcome
        leave(outcome if isinstance(outcome, int) else 0)

    return wrapper  # type: ignore[return-value]
