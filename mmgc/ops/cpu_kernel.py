"""A fused CPU kernel for the SGD + GC step, compiled at first use.

The kernel (``mmgc/csrc/sgd_gc_cpu.cpp``) centralizes each output unit while
its elements are in cache and applies the momentum and weight update in the
same visit, for all tensors in one OpenMP region: it reads weight, gradient
and momentum and writes weight and momentum once, as torch's fused SGD does.
The source has a plain C ABI (no torch headers), so ``g++ -O3 -fopenmp``
builds it in about a second; it is loaded with :mod:`ctypes` and cached in
``$MMGC_CACHE_DIR`` (default ``$XDG_CACHE_HOME/mmgc`` or ``~/.cache/mmgc``)
under a hash of the source, flags, compiler and CPU (``-march=native``), so
a cache shared between machines stays correct. ``MMGC_CPU_KERNEL=0``
disables it and ``CXX`` picks the compiler. If the build fails, a warning is
logged once and SGDGC falls back to PyTorch ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from mmengine.logging import print_log
from torch import Tensor

__all__ = [
    'BUILD_TIMEOUT_S',
    'CPU_KERNEL_DTYPES',
    'KernelBuild',
    'SGDHyper',
    'cpu_kernel_build',
    'cpu_kernel_supports',
    'fused_sgd_gc_cpu_',
    'load_cpu_kernel',
    'time_cpu_kernel_compile',
]

#: Dtypes the kernel handles; others take the PyTorch path.
CPU_KERNEL_DTYPES = (torch.float32, torch.float64)
#: The compiler gets this long before the build counts as failed.
BUILD_TIMEOUT_S = 120.0

_SOURCE = Path(__file__).resolve().parent.parent / 'csrc' / 'sgd_gc_cpu.cpp'
_FLAGS = ('-O3', '-march=native', '-fopenmp', '-fPIC', '-shared', '-std=c++17')
_ABI_VERSION = 3
_CENTER, _INIT_BUFFER = 1, 2


class KernelBuild(NamedTuple):
    """The library, or why there is none (``compile_seconds``: 0 if cached)."""

    library: ctypes.CDLL | None = None
    path: Path | None = None
    compile_seconds: float = 0.0
    error: str | None = None


_BUILD: KernelBuild | None = None


def _library_path(source: str) -> Path:
    try:  # what -march=native depends on
        cpu = [
            line
            for line in Path('/proc/cpuinfo').read_text().splitlines()
            if line.startswith(('flags', 'model name', 'Features', 'CPU part'))
        ]
    except OSError:
        cpu = [platform.processor()]
    key = [source, ' '.join(_FLAGS), os.environ.get('CXX', 'g++'), platform.machine()]
    key += [platform.system(), '\n'.join(sorted(set(cpu)))]
    digest = hashlib.sha256('\n'.join(key).encode()).hexdigest()[:16]
    root = os.environ.get('MMGC_CACHE_DIR')
    if not root:
        root = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'mmgc'
    return Path(root) / f'sgd_gc_cpu_{digest}.so'


def _compile(target: Path) -> float:
    """Compile into ``target`` atomically; return the seconds it took."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=target.parent)
    os.close(fd)
    start = time.perf_counter()
    try:
        cmd = [os.environ.get('CXX', 'g++'), *_FLAGS, str(_SOURCE), '-o', tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(
                f'{" ".join(cmd)} exited with {result.returncode}:\n{result.stderr[-2000:]}'
            )
        os.replace(tmp, target)  # concurrent builders: last one wins, same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return time.perf_counter() - start


def _build() -> KernelBuild:
    if os.environ.get('MMGC_CPU_KERNEL', '1') == '0':
        return KernelBuild(error='disabled by MMGC_CPU_KERNEL=0')
    try:
        path = _library_path(_SOURCE.read_text())
    except OSError as err:
        return KernelBuild(error=f'kernel source not found: {err}')
    seconds = 0.0
    try:
        if not path.exists():
            seconds = _compile(path)
            print_log(
                f'mmgc: compiled the CPU SGD-GC kernel in {seconds:.1f} s (cached as {path})',
                logger='current',
            )
        library = ctypes.CDLL(str(path))
        if library.mmgc_sgd_gc_abi_version() != _ABI_VERSION:
            raise RuntimeError('stale kernel library: ABI version mismatch')
        c, func = ctypes, library.mmgc_sgd_gc_step
        func.argtypes = [c.c_int64, c.c_int, *[c.c_void_p] * 5, *[c.c_double] * 4, *[c.c_int] * 4]
        func.restype = c.c_int
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as err:
        return KernelBuild(path=path, compile_seconds=seconds, error=str(err))
    return KernelBuild(library, path, seconds)


def cpu_kernel_build() -> KernelBuild:
    """Build (once per process) and return the kernel's :class:`KernelBuild`.

    A failure is logged once as a warning; later calls return the same
    outcome without retrying.
    """
    global _BUILD
    if _BUILD is None:
        _BUILD = _build()
        if _BUILD.library is None and not _BUILD.error.startswith('disabled'):
            print_log(
                f'mmgc: the CPU SGD-GC kernel is unavailable, SGDGC falls back '
                f'to PyTorch ops (slower, same results): {_BUILD.error}. Set CXX '
                f'to a C++ compiler with OpenMP, or MMGC_CACHE_DIR to a '
                f'writable directory, to enable it',
                logger='current',
                level=logging.WARNING,
            )
    return _BUILD


def load_cpu_kernel() -> ctypes.CDLL | None:
    """The kernel library, or None if it cannot be built or is disabled."""
    return cpu_kernel_build().library


def time_cpu_kernel_compile() -> float:
    """Seconds to compile the kernel from scratch (a temporary directory, not
    the cache): the first-use cost on a machine with an empty cache.

    Raises:
        RuntimeError: If the compiler fails.
    """
    with tempfile.TemporaryDirectory() as tmp:
        return _compile(Path(tmp) / 'sgd_gc_cpu.so')


def _reset_for_tests() -> None:
    """Forget the loaded kernel so the next call builds again."""
    global _BUILD
    _BUILD = None


#: The only tensor types the kernel takes: plain tensors, no subclass (a
#: DTensor, a ``__torch_dispatch__`` wrapper, ``class T(torch.Tensor)``), whose
#: ``data_ptr`` may not be the data its values are read from.
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def _addressable(tensor: Tensor) -> bool:
    """A plain, dense, contiguous CPU tensor whose memory holds its values as
    they read (no lazy negation or conjugation bit)."""
    return (
        type(tensor) in _PLAIN_TYPES
        and tensor.layout == torch.strided
        and tensor.is_cpu
        and tensor.is_contiguous()
        and not tensor.is_neg()
        and not tensor.is_conj()
    )


def cpu_kernel_supports(
    param: Tensor, grad: Tensor, buffer: Tensor | None, requires_autograd: bool
) -> bool:
    """Whether the kernel can update ``param`` in place: plain ``torch.Tensor``
    / ``nn.Parameter`` objects only (no tensor subclass such as a DTensor),
    dense, contiguous, on the CPU, float32/float64 of one dtype and shape, and
    no autograd through the step. Everything else takes the generic path.
    (Called per tensor and step, so it reads only cheap attributes.)"""
    dtype, shape = param.dtype, param.shape
    if (requires_autograd and param.requires_grad) or dtype not in CPU_KERNEL_DTYPES:
        return False
    if not (_addressable(param) and _addressable(grad)):
        return False
    if grad.dtype != dtype or grad.shape != shape:
        return False
    return buffer is None or (
        _addressable(buffer) and buffer.dtype == dtype and buffer.shape == shape
    )


def _as_float(value: float | Tensor, name: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f'{name} must have one element; got {value.shape}')
        return float(value.item())
    return float(value)


class SGDHyper(NamedTuple):
    """The hyperparameters of one SGD(-GC) step, as :func:`~mmgc.sgd_gc` takes
    them (the symbols are those of :class:`~mmgc.SGDGC`'s rule)."""

    lr: float | Tensor  # gamma
    momentum: float  # mu
    dampening: float  # tau
    weight_decay: float | Tensor  # lambda
    nesterov: bool
    maximize: bool
    decoupled_weight_decay: bool = False  # SGDW: (1 - gamma lambda) theta


def fused_sgd_gc_cpu_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: list[Tensor | None],
    gc_dims: Sequence[int | None],
    **hyper: float | Tensor | bool,
) -> None:
    """One SGD(-GC) step with the kernel, in place (the rule is in
    :class:`~mmgc.SGDGC`'s docstring; ``gc_dims[i]`` None: no GC). ``hyper``
    are the fields of :class:`SGDHyper`, by keyword (``lr``, ``momentum``,
    ``dampening``, ``weight_decay``, ``nesterov``, ``maximize``; optionally
    ``decoupled_weight_decay``, SGDW's decay of the weight). All tensors must
    pass :func:`cpu_kernel_supports`; ``gc_dims`` must be valid. Where
    ``momentum != 0``, ``momentum_buffers`` gets new buffers in place of None.

    Raises:
        TypeError: If ``hyper`` lacks a field of :class:`SGDHyper` or has
            another key.
        RuntimeError: If the kernel is not available.
    """
    h = SGDHyper(**hyper)
    library = load_cpu_kernel()
    if library is None:
        raise RuntimeError(f'the CPU SGD-GC kernel is unavailable: {cpu_kernel_build().error}')
    momentum = h.momentum
    args = (_as_float(h.lr, 'lr'), float(momentum), float(h.dampening))
    args += (_as_float(h.weight_decay, 'weight_decay'), int(h.nesterov), int(h.maximize))
    args += (int(h.decoupled_weight_decay), torch.get_num_threads())
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, param in enumerate(params):
        by_dtype.setdefault(param.dtype, []).append(i)
    for dtype, indices in by_dtype.items():
        n = len(indices)
        p_ptrs, g_ptrs, b_ptrs = ((ctypes.c_void_p * n)() for _ in range(3))
        shapes = (ctypes.c_int64 * (3 * n))()
        flags = (ctypes.c_int32 * n)()
        for k, i in enumerate(indices):
            param, dim = params[i], gc_dims[i]
            p_ptrs[k], g_ptrs[k] = param.data_ptr(), grads[i].data_ptr()
            if momentum != 0:
                if momentum_buffers[i] is None:
                    momentum_buffers[i] = torch.empty_like(
                        param, memory_format=torch.contiguous_format
                    )
                    flags[k] |= _INIT_BUFFER
                b_ptrs[k] = momentum_buffers[i].data_ptr()
            shape = param.shape  # viewed as (A, O, B), O the output-unit dim
            if dim is not None and param.dim() > 1:
                dim %= param.dim()
                flags[k] |= _CENTER
                shape = (math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :]))
            else:
                shape = (1, 1, param.numel())
            shapes[3 * k : 3 * k + 3] = shape
        is_double = int(dtype == torch.float64)
        library.mmgc_sgd_gc_step(n, is_double, p_ptrs, g_ptrs, b_ptrs, shapes, flags, *args)
