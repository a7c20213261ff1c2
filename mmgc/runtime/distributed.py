"""Distributed runs on machines without a GPU (gloo backend).

MMEngine 0.10's ``init_dist`` calls ``torch.cuda.set_device`` for the
``pytorch``, ``slurm`` and ``mpi`` launchers, which fails on a CPU-only
torch, and its ``Runner`` wraps the model in ``MMDistributedDataParallel``
with ``device_ids=[LOCAL_RANK]``, which ``DistributedDataParallel`` refuses
for a CPU module. When CUDA is absent, :func:`setup_cpu_distributed`
therefore

1. reads rank, world size and master address from the launcher's
   environment the way MMEngine does, and initialises the default process
   group with ``gloo`` (the ``Runner`` then sees it and skips ``init_dist``);
2. records ``env_cfg.dist_cfg.backend='gloo'`` in the config, so the dumped
   config says what ran;
3. sets ``model_wrapper_cfg`` to :class:`CPUDistributedDataParallel`, which
   drops ``device_ids``.

With CUDA it does nothing: MMEngine's own path (NCCL by default) runs.

A process of a distributed run that dies or hangs leaves the others waiting
in a collective (gradient all-reduce, barrier) until the process group's
timeout, 30 minutes by default. :func:`set_dist_timeout` sets it from
``--dist-timeout SECONDS`` or the environment variable ``MMGC_DIST_TIMEOUT``
(recorded as ``env_cfg.dist_cfg.timeout``, which both MMEngine's NCCL path
and the gloo path here pass to ``init_process_group``). The surviving ranks
then end with the backend's own error; torchrun's summary names the first
failure ("Root Cause"), and ``tools/dist_train.sh`` ends with one line.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from typing import Any, Optional

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel
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
]

#: The ``--launcher`` choices of MMDetection's tools.
LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')

#: MMEngine's default port for torch.distributed.
_DEFAULT_PORT = '29500'

#: Environment variable with the default of ``--dist-timeout`` (seconds).
DIST_TIMEOUT_ENV = 'MMGC_DIST_TIMEOUT'


def parse_dist_timeout(value: Any, source: str = '--dist-timeout') -> float:
    """Seconds of a process-group timeout, checked.

    Args:
        value: A number or a string holding one.
        source (str): Where it came from, for the error message.

    Returns:
        float: The timeout in seconds (> 0).

    Raises:
        ConfigError: If ``value`` is not a positive finite number.
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float('nan')
    if not (0 < seconds < float('inf')):
        raise ConfigError(f'{source} must be a positive number of seconds; got {value!r}')
    return seconds


def set_dist_timeout(cfg: Any, seconds: Any = None) -> Optional[float]:
    """Record the process-group timeout in ``cfg.env_cfg.dist_cfg.timeout``.

    ``seconds`` (from ``--dist-timeout``) wins over the environment variable
    ``MMGC_DIST_TIMEOUT``, which wins over the config's own value.

    Args:
        cfg (mmengine.Config): The run's config, changed in place.
        seconds: The timeout, or None to take it from the environment.

    Returns:
        float | None: The timeout now in the config (None: torch's default,
        30 minutes).

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
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg.setdefault('dist_cfg', {})['timeout'] = value
    return value


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for a model on the CPU.

    MMEngine's ``Runner`` always passes ``device_ids=[LOCAL_RANK]``;
    ``DistributedDataParallel`` accepts device ids only for GPU modules, so
    they are dropped here. Everything else is ``MMDistributedDataParallel``.

    Args:
        module (nn.Module): The model, on the CPU.
        device_ids: Ignored (a CPU module has none).
        **kwargs: Passed to ``MMDistributedDataParallel``.
    """

    def __init__(self, module: nn.Module, device_ids: Any = None, **kwargs: Any) -> None:
        super().__init__(module=module, device_ids=None, **kwargs)


def _env_int(name: str, launcher: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise ConfigError(
            f'--launcher {launcher} needs the environment variable {name}, '
            'which is not set; start the run with the matching launcher '
            '(tools/dist_train.sh uses torchrun, tools/slurm_train.sh srun).'
        )
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f'{name} must be an integer; got {value!r}') from None


def _slurm_env() -> None:
    """Fill torch.distributed's variables from Slurm's, as MMEngine does."""
    proc_id = _env_int('SLURM_PROCID', 'slurm')
    ntasks = _env_int('SLURM_NTASKS', 'slurm')
    local_id = os.environ.get('SLURM_LOCALID', '0')
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ.get('SLURM_NODELIST', '')
        os.environ['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1'
        )
    os.environ.setdefault('MASTER_PORT', _DEFAULT_PORT)
    os.environ['WORLD_SIZE'] = str(ntasks)
    os.environ['RANK'] = str(proc_id)
    os.environ['LOCAL_RANK'] = local_id


def _mpi_env() -> None:
    """Fill torch.distributed's variables from Open MPI's, as MMEngine does."""
    rank = _env_int('OMPI_COMM_WORLD_RANK', 'mpi')
    size = _env_int('OMPI_COMM_WORLD_SIZE', 'mpi')
    if 'MASTER_ADDR' not in os.environ:
        raise ConfigError(
            '--launcher mpi needs the environment variable MASTER_ADDR, which is not set.'
        )
    os.environ.setdefault('MASTER_PORT', _DEFAULT_PORT)
    os.environ['WORLD_SIZE'] = str(size)
    os.environ['RANK'] = str(rank)
    os.environ['LOCAL_RANK'] = os.environ.get('OMPI_COMM_WORLD_LOCAL_RANK', '0')


def _pytorch_env() -> None:
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        if name not in os.environ:
            raise ConfigError(
                f'--launcher pytorch needs the environment variable {name}, '
                'which torchrun sets; start the run with tools/dist_train.sh '
                'or torchrun.'
            )


def setup_cpu_distributed(cfg: Any) -> bool:
    """Prepare ``cfg`` and the process group for a distributed CPU run.

    Does nothing when ``cfg.launcher`` is ``'none'`` or CUDA is available.

    Args:
        cfg (mmengine.Config): The run's config; ``launcher`` must be set.
            ``env_cfg.dist_cfg`` and ``model_wrapper_cfg`` are updated in
            place.

    Returns:
        bool: Whether a gloo process group was set up here.

    Raises:
        ConfigError: If ``cfg.launcher`` is not one of :data:`LAUNCHERS`, or
            the launcher's environment variables are missing.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher not in LAUNCHERS:
        raise ConfigError(f'launcher must be one of {LAUNCHERS}; got {launcher!r}')
    if launcher == 'none' or torch.cuda.is_available():
        return False

    {'pytorch': _pytorch_env, 'slurm': _slurm_env, 'mpi': _mpi_env}[launcher]()

    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'gloo') != 'gloo':
        print_log(
            f'No CUDA device: using the gloo backend instead of {dist_cfg["backend"]!r}.',
            logger='current',
        )
    dist_cfg['backend'] = 'gloo'

    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='CPUDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False),
        )
    elif wrapper.get('type', 'MMDistributedDataParallel') in (
        'MMDistributedDataParallel',
        MMDistributedDataParallel,
    ):
        wrapper['type'] = 'CPUDistributedDataParallel'

    if not torch_dist.is_initialized():
        kwargs: dict[str, Any] = {}
        timeout = dist_cfg.get('timeout')
        if timeout is not None:
            kwargs['timeout'] = datetime.timedelta(seconds=timeout)
        torch_dist.init_process_group(
            backend='gloo',
            rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']),
            **kwargs,
        )
    return True
