"""StepSeedHook: draws depend only on (seed, position in the schedule)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmgc.runtime.hooks import StepSeedHook, step_seed


def _draws() -> tuple:
    return (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_same_position_same_draws_whatever_came_before():
    hook = StepSeedHook()
    runner = SimpleNamespace(seed=7, epoch=3, iter=41)
    hook.before_train_iter(runner, batch_idx=1)
    first = _draws()
    _draws(), torch.randn(100)  # unrelated draws, e.g. a validation
    hook.before_train_iter(runner, batch_idx=1)
    assert _draws() == first
    runner.iter = 42
    hook.before_train_iter(runner, batch_idx=2)
    assert _draws() != first
    hook.before_train_epoch(runner)
    epoch_draws = _draws()
    hook.before_train_epoch(runner)
    assert _draws() == epoch_draws


def test_explicit_seed_overrides_the_runner_seed():
    runner = SimpleNamespace(seed=7, epoch=0, iter=0)
    StepSeedHook(seed=1).before_train_iter(runner, batch_idx=0)
    a = _draws()
    StepSeedHook().before_train_iter(runner, batch_idx=0)
    assert _draws() != a


def test_step_seed_is_stable_and_spread():
    assert step_seed(0, 2, 5) == step_seed(0, 2, 5)
    seeds = {step_seed(s, t, i) for s in (0, 1) for t in (1, 2) for i in range(50)}
    assert len(seeds) == 200
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize('seed', [1.5, '3', True])
def test_bad_seed(seed):
    with pytest.raises(TypeError, match='seed must be an int or None'):
        StepSeedHook(seed=seed)
