"""Which checkpoint ``--resume`` without a path resumes from.

As MMEngine (``find_latest_checkpoint``): the one ``<work_dir>/last_checkpoint``
names. Added: a ``last_checkpoint`` naming a missing file stops the run in one
sentence. The file is not read here; the tools' loader (:mod:`.checkpoint`)
CRC-checks it as it loads.
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
        str | None: What ``<work_dir>/last_checkpoint`` names; None without one.

    Raises:
        CheckpointLoadError: If it is empty or names a local file that does not exist.
    """
    path = find_latest_checkpoint(work_dir)
    if path is None or '://' in path or osp.isfile(path):
        return path
    raise CheckpointLoadError(
        f'Cannot resume from {work_dir}: its last_checkpoint names {path!r}, which does not '
        'exist; pass --resume CKPT with an existing checkpoint, or delete last_checkpoint to '
        'start afresh.'
    )
