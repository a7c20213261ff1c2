"""A hook that makes a resumed run draw the random numbers of an unbroken one.

MMEngine seeds Python's, numpy's and torch's generators once, when the
runner starts; checkpoints do not hold their states. A run resumed after
epoch ``k`` therefore starts epoch ``k + 1`` from freshly seeded generators,
while the unbroken run continues the streams of epochs ``1..k`` (and of its
validation). Mask R-CNN draws from them in every iteration (``RandomFlip``
uses numpy's, the RPN and RoI samplers torch's), so the two runs diverge.
Saving the states in the checkpoint is not enough either: the checkpoint is
written before the epoch's validation, which draws too.

:class:`StepSeedHook` re-seeds all three generators from
``(seed, epoch)`` before every training epoch and from ``(seed, iter)``
before every training iteration. Each draw then depends only on the seed and
the position in the schedule, so a run resumed at an epoch boundary makes the
same draws as one that never stopped.

``tools/train.py`` registers the hook; importing this module registers it
in MMEngine's ``HOOKS``, so a config names it with
``custom_imports = dict(imports=['mmgc', 'mmgc.runtime.hooks'])`` and
``custom_hooks = [dict(type='StepSeedHook')]``.

Limits: DataLoader worker processes keep their own generators
(MMEngine's ``worker_init_fn`` seeds them when they start), so with
``persistent_workers=True`` the data augmentation after a resume differs;
and ``IterBasedTrainLoop`` fast-forwards the dataloader on resume, loading
(and augmenting) the skipped batches. Bit-for-bit resumes need
``num_workers=0`` or ``persistent_workers=False`` and an epoch-based loop.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ['StepSeedHook', 'step_seed']

_EPOCH_TAG = 1
_ITER_TAG = 2


def step_seed(seed: int, tag: int, step: int) -> int:
    """A 63-bit seed mixed from ``(seed, tag, step)`` by numpy's SeedSequence."""
    words = np.random.SeedSequence([seed % 2**63, tag, step]).generate_state(2)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & (2**63 - 1)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@HOOKS.register_module()
class StepSeedHook(Hook):
    """Re-seed Python, numpy and torch before each training epoch and iter.

    Args:
        seed (int, optional): Base seed. Defaults to None: the runner's seed
            (``runner.seed``, i.e. ``randomness.seed`` after MMEngine's
            per-rank adjustment).
    """

    priority = 'VERY_HIGH'

    def __init__(self, seed: Optional[int] = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f'seed must be an int or None; got {seed!r}')
        self.seed = seed

    def _base(self, runner: Any) -> Optional[int]:
        return self.seed if self.seed is not None else runner.seed

    def before_train_epoch(self, runner: Any) -> None:
        base = self._base(runner)
        if base is not None:
            _seed_all(step_seed(base, _EPOCH_TAG, runner.epoch))

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        base = self._base(runner)
        if base is not None:
            _seed_all(step_seed(base, _ITER_TAG, runner.iter))
