"""Checkpoint loading that never runs code, on every supported torch.

MMEngine 0.10 calls ``torch.load`` without ``weights_only``: torch >= 2.6 refuses
every MMEngine checkpoint, older torch unpickles anything. :func:`safe_torch_load`
CRC-checks a zip checkpoint's members, then resolves only :func:`allowed_globals`
(how, on which torch: docs/tools.md, "Resume and safe checkpoint loading").
"""

from __future__ import annotations

import _codecs
import collections
import functools
import inspect
import io
import os
import os.path as osp
import pickle
import types
import zipfile
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from .._compat import (
    NUMPY_MULTIARRAY_MODULES,
    NUMPY_PICKLED,
    numpy_multiarray,
    torch_rebuilders,
)

__all__ = [
    'CheckpointLoadError',
    'UnsafeCheckpointError',
    'allowed_globals',
    'install_safe_checkpoint_loader',
    'load_from_local_safe',
    'mmengine_safe_globals',
    'safe_torch_load',
]

#: numpy dtypes that may appear in a checkpoint (no object, str, void).
_NUMPY_DTYPES = (
    'bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 '
    'float16 float32 float64 longdouble complex64 complex128'
).split()

#: The statistics methods defined on ``HistoryBuffer`` (all that it pickles by name).
_STATISTICS = frozenset({'min', 'max', 'current', 'mean'})


class CheckpointLoadError(RuntimeError):
    """A checkpoint file cannot be read (truncated or corrupt)."""


class UnsafeCheckpointError(CheckpointLoadError):
    """A checkpoint holds a pickled object outside the allowed types."""


class _Refused(Exception):
    """Raised while unpickling for a name outside the allow list."""


def _history_buffer_getattr(obj: Any, name: Any) -> Any:
    """Stand-in for ``builtins.getattr``, which ``HistoryBuffer`` pickles: only
    ``getattr(HistoryBuffer, <statistic>)``; :class:`_Refused` for any other."""
    method = vars(HistoryBuffer).get(name) if isinstance(name, str) else None
    if obj is HistoryBuffer and name in _STATISTICS and inspect.isfunction(method):
        return method
    owner = getattr(obj, '__qualname__', type(obj).__qualname__)
    raise _Refused(f'pickled call getattr({owner}, {name!r})')


def mmengine_safe_globals() -> list[tuple[Any, str]]:
    """The globals, beyond torch's own, that MMEngine checkpoints hold: ``(object,
    'module.qualname')`` pairs, the form ``torch.serialization.safe_globals`` takes;
    numpy's under numpy 1's and numpy 2's module names."""
    multiarray = numpy_multiarray()
    allowed: list[tuple[Any, str]] = [
        (HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (_history_buffer_getattr, 'builtins.getattr'),
        (np.ndarray, 'numpy.ndarray'),
        (np.dtype, 'numpy.dtype'),
    ]
    for prefix in NUMPY_MULTIARRAY_MODULES:
        allowed += [(getattr(multiarray, f), f'{prefix}.{f}') for f in NUMPY_PICKLED]
    dtype_classes = (type(np.dtype(name)) for name in _NUMPY_DTYPES)  # one each on numpy >= 1.25
    allowed += [(c, f'{c.__module__}.{c.__name__}') for c in dtype_classes if c is not np.dtype]
    return allowed


@functools.cache
def allowed_globals() -> dict[str, Any]:
    """Every global a checkpoint may name, ``{'module.qualname': object}``: torch's
    tensor rebuilders, storages, dtypes, ``device``, ``Size``; ``OrderedDict``,
    ``Counter`` (``MultiStepLR``), ``_codecs.encode`` (bytes under pickle protocol 2);
    :func:`mmengine_safe_globals`."""
    allowed: dict[str, Any] = {
        'collections.OrderedDict': collections.OrderedDict,
        'collections.Counter': collections.Counter,
        '_codecs.encode': _codecs.encode,
        'torch.device': torch.device,
        'torch.Size': torch.Size,
    }
    allowed.update(torch_rebuilders())
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype) or (name.endswith('Storage') and isinstance(value, type)):
            allowed[f'torch.{name}'] = value
    allowed.update({name: obj for obj, name in mmengine_safe_globals()})
    return allowed


class _AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves :func:`allowed_globals` and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        # pickle protocol 2 (torch.save's) writes Python 2's name of builtins.
        qualified = f'{"builtins" if module == "__builtin__" else module}.{name}'
        if qualified not in allowed_globals():
            raise _Refused(f"pickled global '{qualified}'")
        return allowed_globals()[qualified]


#: ``torch.load``'s ``pickle_module`` for the allow-list load.
_ALLOW_LIST_PICKLE = types.SimpleNamespace(
    __name__='mmgc_allow_list_pickle',  # torch.load reads it
    Unpickler=_AllowListUnpickler,
    load=lambda f, **kw: _AllowListUnpickler(f, **kw).load(),
)


def _torch_takes_named_globals() -> bool:
    """Whether ``torch.serialization.safe_globals`` takes ``(object, name)``
    pairs (torch >= 2.6; 2.5's takes objects only)."""
    if not hasattr(torch.serialization, 'safe_globals'):
        return False
    annotation = inspect.signature(torch.serialization.add_safe_globals).parameters
    return 'tuple' in str(annotation['safe_globals'].annotation).lower()


def _zip_problem(data: bytes) -> str | None:
    """What is wrong with a zip checkpoint (torch's magic number first), or None."""
    if not data.startswith(b'PK\x03\x04'):  # legacy format: torch.load reads it
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f'{type(err).__name__}: {err}'
    return None if bad is None else f'CRC mismatch in {bad!r}'


def _load(data: bytes, map_location: Any) -> Any:
    """``torch.load`` resolving only the allow list (see the module doc)."""
    if _torch_takes_named_globals():
        safe = [(obj, name) for name, obj in allowed_globals().items()]
        try:
            with torch.serialization.safe_globals(safe):
                return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            pass  # torch's message is no API: the allow-list load names what it refused
    return torch.load(
        io.BytesIO(data),
        map_location=map_location,
        pickle_module=_ALLOW_LIST_PICKLE,
        weights_only=False,  # an explicit pickle_module needs it; ours refuses the rest
    )


def safe_torch_load(filename: str, map_location: Any = None) -> Any:
    """Load the local checkpoint ``filename`` (``map_location`` as :func:`torch.load`'s),
    allowing only the types MMEngine writes.

    Raises:
        FileNotFoundError: If ``filename`` is not a file.
        UnsafeCheckpointError: If the file names any other global or call;
            nothing outside the allow list is resolved or called.
        CheckpointLoadError: If the file is truncated or corrupt (a zip
            member whose CRC-32 does not match included).
    """
    if not osp.isfile(filename):
        raise FileNotFoundError(f"Checkpoint file '{filename}' does not exist.")
    with open(filename, 'rb') as stream:
        data = stream.read()
    problem = _zip_problem(data)
    if problem is None:
        try:
            return _load(data, map_location)
        except _Refused as err:
            raise UnsafeCheckpointError(
                f"Refusing to load checkpoint '{filename}': it holds the {err}, which is not "
                'one of the types an MMEngine checkpoint contains, so nothing in it was run.'
            ) from None
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            first = str(err).strip().split('\n')[0].split('. ')[0].rstrip('.')
            problem = f'{type(err).__name__}: {first}' if first else type(err).__name__
    raise CheckpointLoadError(
        f"Cannot read checkpoint '{filename}': the file is truncated or corrupt ({problem})."
    )


def load_from_local_safe(filename: str, map_location: Any) -> Any:
    """MMEngine's ``load_from_local``, through :func:`safe_torch_load`."""
    return safe_torch_load(osp.expanduser(os.fspath(filename)), map_location)


def install_safe_checkpoint_loader() -> None:
    """Make :func:`safe_torch_load` MMEngine's ``CheckpointLoader`` scheme for
    local paths (prefix ``''``; ``force=True`` is how MMEngine documents
    replacing a scheme). Idempotent."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safe, force=True)
