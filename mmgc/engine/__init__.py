"""Training, testing and checkpoint plumbing behind the command-line tools.

- :mod:`~mmgc.engine.atomic_checkpoint`: ``AtomicCheckpointHook``, saves
  that a kill never leaves half-written;
- :mod:`~mmgc.engine.checkpoint`: weights-only checkpoint loading for
  MMEngine (``--resume``, ``load_from``, test checkpoints);
- :mod:`~mmgc.engine.cli`: ``tools/train.py`` and ``tools/test.py``;
- :mod:`~mmgc.engine.data_check`: stop before model building on missing data;
- :mod:`~mmgc.engine.distributed`: distributed runs on CPU-only machines;
- :mod:`~mmgc.engine.hooks`: ``StepSeedHook`` for exact resumes;
- :mod:`~mmgc.engine.metrics`: the metric file ``tools/test.py`` writes;
- :mod:`~mmgc.engine.resume`: the checkpoint ``--resume`` picks, and GC runs
  resumed from plain-SGD checkpoints.
"""

from .atomic_checkpoint import AtomicCheckpointHook, AtomicLocalBackend, atomic_write_bytes
from .checkpoint import (
    CheckpointLoadError,
    UnsafeCheckpointError,
    install_safe_checkpoint_loader,
    safe_torch_load,
)
from .data_check import MissingDataError, check_data_paths
from .distributed import (
    CPUDistributedDataParallel,
    DistributedRunError,
    set_dist_timeout,
    setup_cpu_distributed,
)
from .hooks import StepSeedHook
from .resume import PlainOptimizerStateHook, find_resume_checkpoint

__all__ = [
    'AtomicCheckpointHook',
    'AtomicLocalBackend',
    'CPUDistributedDataParallel',
    'CheckpointLoadError',
    'DistributedRunError',
    'MissingDataError',
    'PlainOptimizerStateHook',
    'StepSeedHook',
    'UnsafeCheckpointError',
    'atomic_write_bytes',
    'check_data_paths',
    'find_resume_checkpoint',
    'install_safe_checkpoint_loader',
    'safe_torch_load',
    'set_dist_timeout',
    'setup_cpu_distributed',
]
