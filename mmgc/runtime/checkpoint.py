"""Checkpoint loading that never runs code, on every supported torch.

MMEngine 0.10 loads checkpoints with ``torch.load(filename, map_location=...)``
and no ``weights_only``. Under torch >= 2.6 that means weights-only, which
refuses the numpy arrays and ``HistoryBuffer`` objects every MMEngine
checkpoint holds, so ``--resume`` fails; under older torch it means a full
unpickle, so a checkpoint can run any code. :func:`safe_torch_load` loads
genuine MMEngine checkpoints on every torch from 2.1 on and refuses anything
else, with two guards:

1. **Before anything is unpickled**, every global that the checkpoint's
   pickles name is read with :mod:`pickletools` (:func:`checkpoint_globals`)
   and checked against an allow list: torch's own tensor and storage types,
   and the types MMEngine checkpoints hold (:func:`mmengine_safe_globals`:
   ``HistoryBuffer``, numpy arrays, scalars and dtypes). A checkpoint that
   names anything else is refused with :class:`UnsafeCheckpointError`.
   This works the same on every torch.
2. **The load itself** resolves only the allow list: where torch has
   ``torch.serialization.safe_globals`` (2.5 and later), torch's
   weights-only unpickler with the MMEngine types added; on older torch
   (no ``safe_globals``, so ``weights_only=True`` cannot take them) an
   unpickler whose ``find_class`` returns allowed objects and refuses every
   other name, handed to ``torch.load`` as its ``pickle_module``.

``HistoryBuffer`` pickles its statistics methods as
``getattr(HistoryBuffer, 'mean')``: ``builtins.getattr`` is allowed only as
a stand-in that resolves exactly those statistics.

:func:`install_safe_checkpoint_loader` makes :func:`safe_torch_load`
MMEngine's loader for local paths, which every local load goes through
(``Runner.resume``, ``load_from``, ``tools/test.py``'s checkpoint,
``mmengine.runner.load_checkpoint``). Before unpickling, every member of a
zip checkpoint is CRC-checked (``torch.load`` does not), so a flipped bit is
a :class:`CheckpointLoadError`, not wrong weights.
"""

from __future__ import annotations

import collections
import functools
import inspect
import io
import os
import os.path as osp
import pickle
import pickletools
import types
import zipfile
from contextlib import nullcontext
from typing import IO, Any, Callable, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = [
    'CheckpointLoadError',
    'UnsafeCheckpointError',
    'checkpoint_globals',
    'crc_problem',
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

#: torch's functions that rebuild tensors and parameters from a checkpoint.
_TORCH_REBUILDERS = (
    '_rebuild_tensor',
    '_rebuild_tensor_v2',
    '_rebuild_tensor_v3',
    '_rebuild_parameter',
    '_rebuild_parameter_with_state',
)

#: The number of pickles a legacy (non-zip) checkpoint starts with: magic
#: number, protocol, system info, the object, the storage keys.
_LEGACY_PICKLES = 5

#: Opcodes that name a global. STACK_GLOBAL takes its names from the stack.
_GLOBAL_OPCODES = frozenset({'GLOBAL', 'INST'})
_STRING_OPCODES = frozenset(
    {
        'SHORT_BINUNICODE',
        'BINUNICODE',
        'BINUNICODE8',
        'UNICODE',
        'SHORT_BINSTRING',
        'BINSTRING',
        'STRING',
    }
)
_EXTENSION_OPCODES = frozenset({'EXT1', 'EXT2', 'EXT4'})


class CheckpointLoadError(RuntimeError):
    """A checkpoint file cannot be read (truncated or corrupt)."""


class UnsafeCheckpointError(CheckpointLoadError):
    """A checkpoint holds a pickled object outside the allowed types."""


class _RefusedCall(Exception):
    """Raised while unpickling by the ``getattr`` stand-in; never escapes."""


def _history_buffer_getattr(obj: Any, name: Any) -> Any:
    """Stand-in for ``builtins.getattr`` while unpickling.

    Only ``getattr(HistoryBuffer, <statistic>)`` is allowed: one of its
    statistics methods, defined on ``HistoryBuffer`` itself.

    Raises:
        _RefusedCall: For any other object or attribute.
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
    raise _RefusedCall(f'getattr({owner}, {name!r})')


def _numpy_multiarray() -> Any:
    """numpy's ``multiarray`` module (``numpy._core`` in numpy 2)."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


def mmengine_safe_globals() -> list[tuple[Any, str]]:
    """The globals, beyond torch's own, that MMEngine checkpoints hold.

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


def _torch_globals() -> dict[str, Any]:
    """torch's own globals in checkpoints: tensor rebuilders, storage types,
    dtypes, ``OrderedDict`` (module states) and ``_codecs.encode`` (bytes
    under pickle protocol 2)."""
    import _codecs

    allowed: dict[str, Any] = {
        'collections.OrderedDict': collections.OrderedDict,
        'collections.Counter': collections.Counter,  # MultiStepLR's milestones
        '_codecs.encode': _codecs.encode,
        'torch.device': torch.device,
        'torch.Size': torch.Size,
    }
    for name in _TORCH_REBUILDERS:
        if hasattr(torch._utils, name):
            allowed[f'torch._utils.{name}'] = getattr(torch._utils, name)
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype) or (name.endswith('Storage') and isinstance(value, type)):
            allowed[f'torch.{name}'] = value
    return allowed


@functools.cache
def allowed_globals() -> dict[str, Any]:
    """Every global a checkpoint may name: ``{'module.qualname': object}``."""
    allowed = _torch_globals()
    allowed.update({name: obj for obj, name in mmengine_safe_globals()})
    return allowed


def _global_name(module: str, qualname: str) -> str:
    """``'module.qualname'``, with Python 2's ``__builtin__`` read as
    ``builtins`` (pickle protocol 2, torch.save's, writes the old name; the
    unpickler maps it back)."""
    return f'{"builtins" if module == "__builtin__" else module}.{qualname}'


def _pickle_globals(stream: io.BufferedIOBase) -> set[str]:
    """The globals one pickle in ``stream`` names, read without unpickling.

    Raises:
        UnsafeCheckpointError: For globals the scan cannot name (``STACK_GLOBAL``
            with computed names, copyreg extensions).
        ValueError: If the bytes are not a pickle (from :mod:`pickletools`).
    """
    found: set[str] = set()
    memo: dict[Any, Any] = {}
    pushed: list[Any] = []  # recent values pushed by string opcodes and memo gets
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in _GLOBAL_OPCODES:
            found.add(_global_name(*arg.split(' ', 1)))
        elif name in _STRING_OPCODES:
            pushed.append(arg)
        elif name in ('BINGET', 'LONG_BINGET', 'GET'):
            pushed.append(memo.get(arg))
        elif name in ('BINPUT', 'LONG_BINPUT', 'PUT'):
            memo[arg] = pushed[-1] if pushed else None
        elif name == 'MEMOIZE':
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name == 'STACK_GLOBAL':
            module, qualname = pushed[-2:] if len(pushed) >= 2 else (None, None)
            if not (isinstance(module, str) and isinstance(qualname, str)):
                raise UnsafeCheckpointError('a pickled global whose name is computed')
            found.add(_global_name(module, qualname))
        elif name in _EXTENSION_OPCODES:
            raise UnsafeCheckpointError('a pickled copyreg extension')
        else:
            pushed.append(None)
        if name == 'STOP':
            break
    return found


def checkpoint_globals(source: str | IO[bytes], filename: str | None = None) -> set[str]:
    """Every global named by the pickles in a checkpoint, read with
    :mod:`pickletools`: nothing is unpickled or imported.

    Reads each ``*.pkl`` member of a zip checkpoint, or the five pickles a
    legacy (non-zip) checkpoint starts with.

    Args:
        source (str | IO[bytes]): The checkpoint file, or its bytes.
        filename (str, optional): The name errors give. Defaults to
            ``source`` when it is a path.

    Returns:
        set[str]: ``'module.qualname'`` of each global.

    Raises:
        UnsafeCheckpointError: For a global whose name cannot be read.
        CheckpointLoadError: If the file is no readable checkpoint.
    """
    found: set[str] = set()
    try:
        if zipfile.is_zipfile(_rewound(source)):
            with zipfile.ZipFile(_rewound(source)) as archive:
                for member in archive.namelist():
                    if member.endswith('.pkl'):
                        found |= _pickle_globals(io.BytesIO(archive.read(member)))
        else:
            opened = open(source, 'rb') if isinstance(source, str) else nullcontext(source)
            with opened as stream:
                _rewound(stream)
                for _ in range(_LEGACY_PICKLES):
                    found |= _pickle_globals(stream)
    except (ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise _corrupt_error(filename or str(source), err) from None
    return found


def _rewound(source: str | IO[bytes]) -> str | IO[bytes]:
    """``source`` itself, at its start when it is a file object."""
    if not isinstance(source, str):
        source.seek(0)
    return source


def crc_problem(source: str | IO[bytes]) -> str | None:
    """What is wrong with a zip checkpoint's CRC-32s, or None if they match.

    ``torch.load`` does not check the CRCs ``torch.save`` writes, so a
    flipped bit in a stored tensor would load silently. Nothing is
    unpickled. Files that are not zip archives (legacy format, or cut off
    before the zip directory) are reported as not zip checkpoints only by
    the caller's next step.

    Returns:
        str | None: e.g. ``"CRC mismatch in 'epoch_1/data/0'"``, or
        ``'not a zip archive'``, or None.
    """
    if not zipfile.is_zipfile(_rewound(source)):
        return 'not a zip archive'
    try:
        with zipfile.ZipFile(_rewound(source)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f'{type(err).__name__}: {err}'
    return None if bad is None else f'CRC mismatch in {bad!r}'


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


class _AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves the allow list and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        qualified = _global_name(module, name)
        allowed = allowed_globals().get(qualified)
        if allowed is None:
            raise _RefusedCall(qualified)
        return allowed


def _allow_list_pickle_module() -> types.SimpleNamespace:
    """A ``pickle_module`` for ``torch.load`` that unpickles with
    :class:`_AllowListUnpickler` (torch < 2.5)."""

    def load(stream: Any, **kwargs: Any) -> Any:
        return _AllowListUnpickler(stream, **kwargs).load()

    return types.SimpleNamespace(
        __name__='mmgc_allow_list_pickle', Unpickler=_AllowListUnpickler, load=load
    )


def _load_allow_listed(stream: IO[bytes], map_location: MapLocation) -> Any:
    """``torch.load`` resolving only the allow list (see the module doc)."""
    stream.seek(0)
    if hasattr(torch.serialization, 'safe_globals'):
        with torch.serialization.safe_globals(mmengine_safe_globals()):
            return torch.load(stream, map_location=map_location, weights_only=True)
    # torch < 2.5 cannot add types to weights_only=True; an explicit
    # pickle_module needs weights_only=False, and this one refuses every
    # global outside the allow list that the scan already checked.
    return torch.load(
        stream,
        map_location=map_location,
        pickle_module=_allow_list_pickle_module(),
        weights_only=False,
    )


def safe_torch_load(filename: str, map_location: MapLocation = None) -> Any:
    """Load a local checkpoint, allowing only the types MMEngine writes.

    Args:
        filename (str): Path of a local checkpoint file.
        map_location: Same as :func:`torch.load`. Defaults to None.

    Returns:
        Any: The loaded checkpoint (usually a dict).

    Raises:
        FileNotFoundError: If ``filename`` is not a file.
        UnsafeCheckpointError: If the file names any other pickled global or
            call; it is refused before anything in it is called.
        CheckpointLoadError: If the file is truncated or corrupt (a member
            of a zip checkpoint whose CRC-32 does not match included).
    """
    if not osp.isfile(filename):
        raise FileNotFoundError(f"Checkpoint file '{filename}' does not exist.")
    with open(filename, 'rb') as stream:  # read once: check, scan and load the same bytes
        data = io.BytesIO(stream.read())
    problem = crc_problem(data)
    if problem is not None and problem != 'not a zip archive':
        raise _corrupt_error(filename, None, problem)
    try:
        unsafe = sorted(checkpoint_globals(data, filename) - set(allowed_globals()))
    except UnsafeCheckpointError as err:
        raise _unsafe_error(filename, str(err)) from None
    if unsafe:
        names = ', '.join(f"'{name}'" for name in unsafe)
        plural = 's' if len(unsafe) > 1 else ''
        raise _unsafe_error(filename, f'pickled global{plural} {names}')
    try:
        return _load_allow_listed(data, map_location)
    except _RefusedCall as err:
        raise _unsafe_error(filename, f'pickled call {err}') from None
    except (pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise _corrupt_error(filename, err) from None


def load_from_local_safe(filename: str, map_location: MapLocation) -> Any:
    """MMEngine ``CheckpointLoader`` scheme for local paths.

    Drop-in for ``mmengine.runner.checkpoint.load_from_local``.

    Args:
        filename (str): Local checkpoint path (``~`` is expanded).
        map_location: Same as :func:`torch.load`.

    Returns:
        Any: The loaded checkpoint.
    """
    return safe_torch_load(osp.expanduser(os.fspath(filename)), map_location)


def install_safe_checkpoint_loader() -> None:
    """Make MMEngine load local checkpoints with :func:`safe_torch_load`.

    Registers it as MMEngine's ``CheckpointLoader`` scheme for local paths
    (the prefix ``''``; ``force=True`` is how MMEngine documents replacing a
    scheme). Idempotent; works on every supported torch.
    """
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safe, force=True)
