"""Where Gradient Centralization acts: the per-group option ``gc_variant``.

- ``'grad'`` (default; the paper's Sec. 3.3, the authors' ``*_GC`` / ``*_GCC``):
  the optimizer receives the centralized gradient :math:`\\mathbf{P}\\mathbf{g}`
  (plus L2 decay, projected with it, where decay is a gradient term).
- ``'update'`` (the authors' ``Adam_GC2`` / ``Adam_GCC2`` / ``AdamW_GCC2``):
  the optimizer steps on the raw gradient, then its update
  :math:`\\Delta = \\theta_{t-1} - \\theta_t` is centralized per output unit,
  so each output unit's weight sum stays at its initial value (Eq. 3) for
  adaptive optimizers too. For SGD the two are the same update
  (:math:`\\mathbf{P}` is linear and commutes with momentum).
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError

__all__ = ['GC_VARIANTS', 'check_gc_variant', 'check_one_of', 'gc_variant_of']

#: The values of the ``gc_variant`` group option, default first.
GC_VARIANTS: tuple[str, ...] = ('grad', 'update')


def check_one_of(value: Any, choices: tuple[str, ...], name: str) -> str:
    """Return ``value`` if it is one of the strings ``choices``.

    Raises:
        ValueError: ``'{name} must be one of {choices}; got {value!r}'``.
    """
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f'{name} must be one of {choices}; got {value!r}')
    return value


def check_gc_variant(value: Any) -> str:
    """Return ``value`` if it is one of :data:`GC_VARIANTS`.

    Raises:
        ValueError: Naming the bad value and the valid ones.
    """
    return check_one_of(value, GC_VARIANTS, 'gc_variant')


def gc_variant_of(group: dict) -> str:
    """A parameter group's ``gc_variant`` (absent: ``'grad'``)."""
    return group.get('gc_variant', GC_VARIANTS[0])
