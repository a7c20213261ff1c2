"""Which checkpoint ``--resume`` (without a path) resumes from.

``--resume`` without a path (auto-resume) resumes from the checkpoint that
``<work_dir>/last_checkpoint`` names, as MMEngine does
(``mmengine.runner.find_latest_checkpoint``). :func:`latest_checkpoint`
adds one check: a ``last_checkpoint`` that names a missing file stops the
run in one sentence. The checkpoint is not read here: the tools' loader
(:mod:`mmgc.runtime.checkpoint`) checks every member's CRC-32 as it loads
it, so a truncated or corrupt checkpoint also ends in one sentence. Atomic
saves (:mod:`mmgc.runtime.atomic_checkpoint`) never leave one behind, so
there is no fallback to an older checkpoint.
"""

from __future__ import annotations

import os.path as osp
from typing import Optional

from mmengine.runner import find_latest_checkpoint

from .checkpoint import CheckpointLoadError

__all__ = ['latest_checkpoint']


def latest_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint that ``--resume`` (auto) resumes from.

    Args:
        work_dir (str): The run's work dir.

    Returns:
        str | None: The path that ``<work_dir>/last_checkpoint`` names; None
        when there is no ``last_checkpoint`` (nothing to resume).

    Raises:
        CheckpointLoadError: If ``last_checkpoint`` is empty or names a
            local file that does not exist.
    """
    path = find_latest_checkpoint(work_dir)
    if path is None or '://' in path or osp.isfile(path):
        return path
    raise CheckpointLoadError(
        f'Cannot resume from {work_dir}: its last_checkpoint names {path!r}, which does '
        'not exist; pass --resume CKPT with an existing checkpoint, or delete '
        'last_checkpoint to start afresh.'
    )
