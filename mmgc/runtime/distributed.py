"""Distributed runs without a GPU (gloo), and the process-group timeout (docs/tools.md,
"Distributed"; docs/faults.md, "Distributed runs losing a process"): MMEngine 0.10's
``init_dist`` and DDP wrapper need CUDA; only the config sets the timeout.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from typing import Any, Optional

import torch
import torch.distributed as torch_dist
from mmengine.model import MMDistributedDataParallel as DDP
from mmengine.registry import MODEL_WRAPPERS
from torch import nn

from .errors import ConfigError

__all__ = [
    'CPUDistributedDataParallel',
    'DIST_TIMEOUT_ENV',
    'LAUNCHERS',
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
