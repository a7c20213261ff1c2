"""Tensor operations of Gradient Centralization."""

from .centralize import (
    centralize,
    centralize_,
    gc_direction_means,
    gc_update_directions,
    reduce_dims,
)

__all__ = [
    'centralize',
    'centralize_',
    'gc_direction_means',
    'gc_update_directions',
    'reduce_dims',
]
