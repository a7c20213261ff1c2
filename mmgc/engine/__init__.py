"""Training, testing and checkpoint plumbing behind the command-line tools.

- :mod:`~mmgc.engine.checkpoint`: weights-only checkpoint loading for
  MMEngine (``--resume``, ``load_from``, test checkpoints);
- :mod:`~mmgc.engine.cli`: ``tools/train.py`` and ``tools/test.py``;
- :mod:`~mmgc.engine.data_check`: stop before model building on missing data;
- :mod:`~mmgc.engine.distributed`: distributed runs on CPU-only machines;
- :mod:`~mmgc.engine.hooks`: ``StepSeedHook`` for exact resumes;
- :mod:`~mmgc.engine.metrics`: the metric file ``tools/test.py`` writes.
"""

from .checkpoint import (
    CheckpointLoadError,
    UnsafeCheckpointError,
    install_safe_checkpoint_loader,
    safe_torch_load,
)
from .data_check import MissingDataError, check_data_paths
from .distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .hooks import StepSeedHook

__all__ = [
    'CPUDistributedDataParallel',
    'CheckpointLoadError',
    'MissingDataError',
    'StepSeedHook',
    'UnsafeCheckpointError',
    'check_data_paths',
    'install_safe_checkpoint_loader',
    'safe_torch_load',
    'setup_cpu_distributed',
]
