"""Weights-only checkpoint loading for MMEngine runners.

MMEngine 0.10 calls ``torch.load(filename, map_location=...)`` without
``weights_only``. Since torch 2.6 that defaults to ``weights_only=True`` and
fails on the numpy arrays and ``HistoryBuffer`` objects every MMEngine
checkpoint holds, so ``--resume`` breaks; passing ``weights_only=False``
would let any checkpoint run arbitrary code. This module keeps torch's
weights-only unpickler and allows exactly the extra types found in
checkpoints that MMEngine's ``Runner`` writes (found by saving real
checkpoints and listing them with
``torch.serialization.get_unsafe_globals_in_checkpoint``):

- ``mmengine.logging.history_buffer.HistoryBuffer`` (the message hub's
  logged scalars), and the lookup ``getattr(HistoryBuffer, <statistic>)``
  that pickles its statistics methods (``min``, ``max``, ``mean``,
  ``current``); ``getattr`` on anything else is refused;
- numpy arrays, scalars and numeric dtypes (``numpy.ndarray``,
  ``numpy.dtype``, ``numpy._core.multiarray._reconstruct`` / ``scalar``,
  also under their numpy 1.x names ``numpy.core.multiarray.*``, and the
  bool / integer / float / complex dtype classes).

:func:`install_safe_checkpoint_loader` registers :func:`load_from_local_safe`
as MMEngine's loader for local paths (``CheckpointLoader`` scheme ``''``),
which every local load goes through: ``Runner.resume`` (``--resume``),
``load_from`` and ``tools/test.py``'s checkpoint, and
``mmengine.runner.load_checkpoint``. MMEngine's other schemes (http,
``open-mmlab://``, ...) fetch plain state dicts and are left as they are.

Before unpickling, every member of a zip checkpoint is read and its CRC-32
checked (``torch.load`` does not): a flipped bit in a stored tensor is a
``CheckpointLoadError``, not wrong weights.
"""

from __future__ import annotations

import inspect
import logging
import os
import os.path as osp
import pickle
import zipfile
from typing import Any, Callable, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = [
    'CheckpointLoadError',
    'UnsafeCheckpointError',
    'install_safe_checkpoint_loader',
    'load_from_local_safe',
    'mmengine_safe_globals',
    'safe_torch_load',
]

MapLocation = Union[str, torch.device, Callable, dict, None]

#: numpy dtype kinds that may appear in a checkpoint (no object, str, void).
_NUMPY_DTYPES = (
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.longdouble,
    np.complex64,
    np.complex128,
)

#: ``HistoryBuffer`` statistics registered by its constructor.
_DEFAULT_STATISTICS = frozenset({'min', 'max', 'current', 'mean'})

#: How the weights-only unpickler's refusals start (anything else it raises
#: means bytes that are not a pickle: a corrupt file).
_REFUSAL_PREFIXES = (
    'Unsupported call: ',  # raised by _history_buffer_getattr
    'Unsupported global',
    'Trying to',  # "... call reduce for unrecognized function", "... blocked"
    'Can only',  # build / create / append / extend / set on other types
)

_REFUSED = "pickled object that torch's weights-only unpickler refused"


class CheckpointLoadError(RuntimeError):
    """A checkpoint file cannot be read (missing, truncated or corrupt)."""


class UnsafeCheckpointError(CheckpointLoadError):
    """A checkpoint holds a pickled object outside the allowed types."""


def _history_buffer_getattr(obj: Any, name: Any) -> Any:
    """Stand-in for ``builtins.getattr`` while unpickling.

    ``HistoryBuffer`` keeps its statistics methods in a dict, which pickles
    them as ``getattr(HistoryBuffer, 'mean')``. Only that lookup is allowed:
    one of its statistics methods, defined on ``HistoryBuffer`` itself.

    Raises:
        pickle.UnpicklingError: For any other object or attribute.
    """
    statistics = _DEFAULT_STATISTICS.union(HistoryBuffer._statistics_methods)
    if (
        obj is HistoryBuffer
        and isinstance(name, str)
        and name in statistics
        and inspect.isfunction(vars(HistoryBuffer).get(name))
    ):
        return vars(HistoryBuffer)[name]
    owner = getattr(obj, '__qualname__', type(obj).__qualname__)
    raise pickle.UnpicklingError(f'Unsupported call: getattr({owner}, {name!r})')


def _numpy_multiarray() -> Any:
    """numpy's ``multiarray`` module (``numpy._core`` in numpy 2)."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


def mmengine_safe_globals() -> list[tuple[Any, str]]:
    """The globals, beyond torch's defaults, that MMEngine checkpoints hold.

    Returns:
        list[tuple[Any, str]]: ``(object, 'module.qualname')`` pairs in the
        form ``torch.serialization.safe_globals`` takes.
    """
    multiarray = _numpy_multiarray()
    allowed: list[tuple[Any, str]] = [
        (HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (_history_buffer_getattr, 'builtins.getattr'),
        (np.ndarray, 'numpy.ndarray'),
        (np.dtype, 'numpy.dtype'),
    ]
    for prefix in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        allowed.append((multiarray._reconstruct, f'{prefix}._reconstruct'))
        allowed.append((multiarray.scalar, f'{prefix}.scalar'))
    for scalar_type in _NUMPY_DTYPES:
        dtype_class = type(np.dtype(scalar_type))
        if dtype_class is not np.dtype:  # numpy >= 1.25 has one per dtype
            allowed.append((dtype_class, f'{dtype_class.__module__}.{dtype_class.__name__}'))
    return allowed


def _safe_globals_supported() -> bool:
    return hasattr(torch.serialization, 'safe_globals') and hasattr(
        torch.serialization, 'get_unsafe_globals_in_checkpoint'
    )


def _unsafe_globals(filename: str) -> list[str] | None:
    """Globals in ``filename`` outside the allow list, read without loading.

    Must be called inside the ``safe_globals`` context. Returns None when
    the file cannot be scanned (not a zip checkpoint, or an opcode the
    static scanner does not know); the weights-only unpickler still guards
    the load then.
    """
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(filename))
    except Exception:  # noqa: BLE001 - any failure means "could not scan"
        return None


def _first_sentence(err: BaseException) -> str:
    text = str(err).strip()
    if not text:
        return type(err).__name__
    first = text.splitlines()[0].split('. ')[0].rstrip('.')
    return f'{type(err).__name__}: {first}'


def _unsafe_error(filename: str, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"Refusing to load checkpoint '{filename}': it holds the "
        f'{what}, which is not one of the types an MMEngine checkpoint '
        'contains, so nothing in it was run.'
    )


def _corrupt_error(
    filename: str, err: BaseException | None, detail: str | None = None
) -> CheckpointLoadError:
    return CheckpointLoadError(
        f"Cannot read checkpoint '{filename}': the file is truncated or "
        f'corrupt ({detail or _first_sentence(err)}).'
    )


def _unpickler_detail(err: BaseException) -> str:
    """The weights-only unpickler's own line out of torch's long message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith(_REFUSAL_PREFIXES):
            return line
        if line.startswith('WeightsUnpickler error:'):
            rest = line[len('WeightsUnpickler error:') :].strip()
            if rest:
                return rest
            if i + 1 < len(lines):
                return lines[i + 1]
    return _first_sentence(err)


def _is_environment_error(err: BaseException) -> bool:
    """Errors about this machine, not the file: re-raised unchanged."""
    if isinstance(err, (PermissionError, IsADirectoryError, MemoryError)):
        return True
    # e.g. "Attempting to deserialize object on a CUDA device but ..."
    return 'deserialize object on' in str(err)


def _crc_mismatch(filename: str) -> str | None:
    """The first member of a zip checkpoint whose CRC-32 is wrong, or None.

    ``torch.load`` does not check the CRCs that ``torch.save`` writes, so a
    flipped bit in a stored tensor would load silently. Files that are not
    zip archives (legacy format, or truncated) are left to ``torch.load``.
    """
    if not zipfile.is_zipfile(filename):
        return None
    try:
        with zipfile.ZipFile(filename) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError):
        return None  # torch.load reports it


def safe_torch_load(filename: str, map_location: MapLocation = None) -> Any:
    """``torch.load`` in weights-only mode with MMEngine's types allowed.

    Args:
        filename (str): Path of a local checkpoint file.
        map_location: Same as :func:`torch.load`. Defaults to None.

    Returns:
        Any: The loaded checkpoint (usually a dict).

    Raises:
        FileNotFoundError: If ``filename`` is not a file.
        UnsafeCheckpointError: If the file holds any other pickled global;
            it is refused before anything in it is called.
        CheckpointLoadError: If the file is truncated or corrupt (a member
            of a zip checkpoint whose CRC-32 does not match included).
        RuntimeError: If this torch has no ``safe_globals`` (torch < 2.5).
    """
    if not osp.isfile(filename):
        raise FileNotFoundError(f"Checkpoint file '{filename}' does not exist.")
    if not _safe_globals_supported():
        raise RuntimeError(
            'Weights-only checkpoint loading needs torch >= 2.5 '
            f'(torch.serialization.safe_globals); found torch {torch.__version__}.'
        )
    bad_member = _crc_mismatch(filename)
    if bad_member is not None:
        raise _corrupt_error(filename, None, f'CRC mismatch in {bad_member!r}')
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        unsafe = _unsafe_globals(filename)
        if unsafe:
            names = ', '.join(f"'{name}'" for name in unsafe)
            plural = 's' if len(unsafe) > 1 else ''
            raise _unsafe_error(filename, f'pickled global{plural} {names}')
        try:
            return torch.load(filename, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            detail = _unpickler_detail(err)
            if not detail.startswith(_REFUSAL_PREFIXES):
                # e.g. "Unsupported operand 110": bytes that are no pickle
                raise _corrupt_error(filename, err, detail) from err
            # The static scan found nothing, yet the weights-only unpickler
            # refused: a forbidden getattr or call. Its message names it.
            raise _unsafe_error(filename, _unpickler_reason(detail)) from None
        except Exception as err:
            if _is_environment_error(err):
                raise
            raise _corrupt_error(filename, err) from err


def _unpickler_reason(detail: str) -> str:
    """What the weights-only unpickler refused, for the error sentence."""
    if detail.startswith('Unsupported call: '):
        return 'pickled call ' + detail[len('Unsupported call: ') :]
    return f'{_REFUSED} ({detail.rstrip(".")})'


def load_from_local_safe(filename: str, map_location: MapLocation) -> Any:
    """MMEngine ``CheckpointLoader`` scheme for local paths, weights-only.

    Drop-in for ``mmengine.runner.checkpoint.load_from_local``.

    Args:
        filename (str): Local checkpoint path (``~`` is expanded).
        map_location: Same as :func:`torch.load`.

    Returns:
        Any: The loaded checkpoint.
    """
    return safe_torch_load(osp.expanduser(os.fspath(filename)), map_location)


def install_safe_checkpoint_loader() -> bool:
    """Make MMEngine load local checkpoints with :func:`safe_torch_load`.

    Re-registers MMEngine's ``CheckpointLoader`` scheme for local paths
    (the prefix ``''``); ``force=True`` is how MMEngine documents replacing
    a scheme. Idempotent. On torch < 2.5 (no ``safe_globals``) it leaves
    MMEngine's loader in place and logs a warning.

    Returns:
        bool: Whether the safe loader is installed.
    """
    if not _safe_globals_supported():
        print_log(
            f'torch {torch.__version__} has no torch.serialization.safe_globals '
            "(torch >= 2.5): checkpoints are loaded by MMEngine's own loader.",
            logger='current',
            level=logging.WARNING,
        )
        return False
    if CheckpointLoader._schemes.get('') is not load_from_local_safe:
        CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safe, force=True)
    return True
