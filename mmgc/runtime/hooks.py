"""``StepSeedHook``: a resumed run draws the random numbers of an unbroken one
(why and its limits: docs/tools.md, "A resumed run equals one that never stopped").
Configs import it with ``custom_imports=dict(imports=['mmgc', 'mmgc.runtime.hooks'])``.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ['StepSeedHook', 'step_seed']


def step_seed(seed: int, tag: int, step: int) -> int:
    """A 63-bit seed mixed from ``(seed, tag, step)`` by numpy's SeedSequence."""
    words = np.random.SeedSequence([seed % 2**63, tag, step]).generate_state(2)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & (2**63 - 1)


@HOOKS.register_module()
class StepSeedHook(Hook):
    """Re-seed Python, numpy and torch before each training epoch and iteration.

    Args:
        seed (int, optional): Base seed. Defaults to None: ``runner.seed``.
    """

    priority = 'VERY_HIGH'

    def __init__(self, seed: Optional[int] = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f'seed must be an int or None; got {seed!r}')
        self.seed = seed

    def _reseed(self, runner: Any, tag: int, step: int) -> None:
        base = self.seed if self.seed is not None else runner.seed
        if base is not None:
            seed = step_seed(base, tag, step)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)

    def before_train_epoch(self, runner: Any) -> None:
        self._reseed(runner, 1, runner.epoch)

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        self._reseed(runner, 2, runner.iter)
