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
and the gloo path here pass to ``init_process_group``), and
:func:`describe_dist_failure` turns the error a surviving rank then gets
into one sentence (:class:`DistributedRunError`).
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from typing import Any, Optional

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from torch import nn

__all__ = [
    'CPUDistributedDataParallel',
    'DIST_TIMEOUT_ENV',
    'DistributedRunError',
    'LAUNCHERS',
    'describe_dist_failure',
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

#: Words in the errors that gloo / NCCL / c10d raise when a peer is gone.
_PEER_LOST_MARKS = (
    'connection closed by peer',
    'connection reset by peer',
    'broken pipe',
    'timed out',
    'timeout',
    'socket closed',
    'connection refused',
    'nccl communicator was aborted',
)

#: ... and the words that say the error came from a collective's backend.
_BACKEND_MARKS = ('gloo', 'nccl', 'c10d', 'processgroup', 'process group')


class DistributedRunError(RuntimeError):
    """A rank of a distributed run lost its peers (one died or hung)."""


def parse_dist_timeout(value: Any, source: str = '--dist-timeout') -> float:
    """Seconds of a process-group timeout, checked.

    Args:
        value: A number or a string holding one.
        source (str): Where it came from, for the error message.

    Returns:
        float: The timeout in seconds (> 0).

    Raises:
        ValueError: If ``value`` is not a positive finite number.
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float('nan')
    if not (0 < seconds < float('inf')):
        raise ValueError(f'{source} must be a positive number of seconds; got {value!r}')
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
        ValueError: If the given timeout is not a positive number.
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


def describe_dist_failure(err: BaseException, timeout: Optional[float]) -> Optional[str]:
    """One sentence for a rank whose collective failed, or None.

    Returns None unless a process group is initialised and ``err`` (or an
    error it was raised from) is a ``torch.distributed`` error, or names a
    backend (gloo, NCCL, c10d) and says that a peer's connection closed or
    timed out; other errors (e.g. a DataLoader timeout) are left alone.

    Args:
        err (BaseException): What ``Runner.train()`` raised.
        timeout (float, optional): The process group's timeout in seconds.
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return None
    dist_error = getattr(torch_dist, 'DistError', ())
    chain: list[BaseException] = []
    current: Optional[BaseException] = err
    while current is not None and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        text = str(item).strip()
        lowered = text.lower()
        if not (
            (dist_error and isinstance(item, dist_error))
            or (
                any(mark in lowered for mark in _PEER_LOST_MARKS)
                and any(mark in lowered for mark in _BACKEND_MARKS)
            )
        ):
            continue
        detail = next((line.strip() for line in text.splitlines() if line.strip()), '')
        detail = re.sub(r'^\[[^\]]*\]\s*', '', detail)  # gloo's "[file.cc:129] "
        detail = detail.split('. ')[0].rstrip('.')  # its first sentence
        if len(detail) > 160:
            detail = detail[:157] + '...'
        limit = f'{timeout:g} s' if timeout is not None else "torch's default of 30 min"
        return (
            f'Rank {torch_dist.get_rank()} of {torch_dist.get_world_size()} lost '
            f'the other processes of the distributed run ({detail}): one of them '
            f'died, or did not answer within the timeout of {limit} (set it with '
            f'--dist-timeout SECONDS or {DIST_TIMEOUT_ENV}); this process stops '
            'too, and the run can be resumed with --resume.'
        )
    return None


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
        raise RuntimeError(
            f'--launcher {launcher} needs the environment variable {name}, '
            'which is not set; start the run with the matching launcher '
            '(tools/dist_train.sh uses torchrun, tools/slurm_train.sh srun).'
        )
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f'{name} must be an integer; got {value!r}') from None


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
        raise RuntimeError(
            '--launcher mpi needs the environment variable MASTER_ADDR, which is not set.'
        )
    os.environ.setdefault('MASTER_PORT', _DEFAULT_PORT)
    os.environ['WORLD_SIZE'] = str(size)
    os.environ['RANK'] = str(rank)
    os.environ['LOCAL_RANK'] = os.environ.get('OMPI_COMM_WORLD_LOCAL_RANK', '0')


def _pytorch_env() -> None:
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        if name not in os.environ:
            raise RuntimeError(
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
        ValueError: If ``cfg.launcher`` is not one of :data:`LAUNCHERS`.
        RuntimeError: If the launcher's environment variables are missing.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}; got {launcher!r}')
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
