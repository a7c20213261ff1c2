r"""A fused CPU kernel for the SGD + GC step, compiled at first use.

The step is memory-bound: torch's fused SGD reads weight, gradient and
momentum and writes weight and momentum once. GC adds, per output unit, the
mean of :math:`\pm g + \lambda w`; the kernel (``mmgc/csrc/sgd_gc_cpu.cpp``)
computes it while the unit's elements are in cache and applies the momentum
and weight update in the same visit, for all tensors in one OpenMP region.
It allocates nothing beyond the momentum buffers torch's SGD keeps.

The source has a plain C ABI (no torch headers), so ``g++ -O3 -fopenmp``
builds it in about a second; it is loaded with :mod:`ctypes`. The shared
library is cached in ``$MMGC_CACHE_DIR`` (default
``$XDG_CACHE_HOME/mmgc`` or ``~/.cache/mmgc``) under a name that hashes the
source, the flags, the compiler and the CPU, so a cache shared between
different machines stays correct. Environment:

- ``MMGC_CPU_KERNEL=0`` disables the kernel (the pure-PyTorch path runs);
- ``CXX`` picks the compiler (default ``g++``);
- ``MMGC_CACHE_DIR`` picks the cache directory.

If the build fails (no compiler, a timeout), a warning is logged once and
:func:`load_cpu_kernel` returns None; callers fall back to PyTorch ops.
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

import torch
from mmengine.logging import print_log
from torch import Tensor

__all__ = [
    'CPU_KERNEL_DTYPES',
    'BUILD_TIMEOUT_S',
    'KernelBuild',
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
_FLAGS = (
    '-O3',
    '-march=native',
    '-fopenmp',
    '-fPIC',
    '-shared',
    '-std=c++17',
)
_ABI_VERSION = 1
_CENTER, _INIT_BUFFER = 1, 2


class KernelBuild:
    """The outcome of loading the kernel: the library or why there is none.

    Attributes:
        library (ctypes.CDLL | None): The loaded library.
        path (Path | None): The shared library on disk.
        compile_seconds (float): Time spent compiling in this process
            (0 when the library came from the cache).
        error (str | None): Why there is no library.
    """

    def __init__(
        self,
        library: ctypes.CDLL | None = None,
        path: Path | None = None,
        compile_seconds: float = 0.0,
        error: str | None = None,
    ) -> None:
        self.library = library
        self.path = path
        self.compile_seconds = compile_seconds
        self.error = error


_BUILD: KernelBuild | None = None


def _cache_dir() -> Path:
    root = os.environ.get('MMGC_CACHE_DIR')
    if root:
        return Path(root)
    xdg = os.environ.get('XDG_CACHE_HOME')
    return (Path(xdg) if xdg else Path.home() / '.cache') / 'mmgc'


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags."""
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return platform.processor()
    keep = [
        line
        for line in text.splitlines()
        if line.startswith(('flags', 'model name', 'Features', 'CPU part'))
    ]
    return '\n'.join(sorted(set(keep)))


def _compiler() -> str:
    return os.environ.get('CXX', 'g++')


def _library_path(source: str) -> Path:
    key = '\n'.join(
        [
            source,
            ' '.join(_FLAGS),
            _compiler(),
            platform.machine(),
            platform.system(),
            _cpu_signature(),
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return _cache_dir() / f'sgd_gc_cpu_{digest}.so'


def _compile(source_path: Path, target: Path) -> float:
    """Compile into ``target`` atomically; return the seconds it took."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=target.parent)
    os.close(fd)
    start = time.perf_counter()
    try:
        cmd = [_compiler(), *_FLAGS, str(source_path), '-o', tmp]
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


def _bind(library: ctypes.CDLL) -> None:
    if library.mmgc_sgd_gc_abi_version() != _ABI_VERSION:
        raise RuntimeError('stale kernel library: ABI version mismatch')
    argtypes = [
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_double,
        ctypes.c_double,
        ctypes.c_double,
        ctypes.c_double,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
    ]
    for name in ('mmgc_sgd_gc_step_f32', 'mmgc_sgd_gc_step_f64'):
        func = getattr(library, name)
        func.argtypes = argtypes
        func.restype = ctypes.c_int


def _build() -> KernelBuild:
    if os.environ.get('MMGC_CPU_KERNEL', '1') == '0':
        return KernelBuild(error='disabled by MMGC_CPU_KERNEL=0')
    try:
        source = _SOURCE.read_text()
    except OSError as err:
        return KernelBuild(error=f'kernel source not found: {err}')
    path = _library_path(source)
    seconds = 0.0
    try:
        if not path.exists():
            seconds = _compile(_SOURCE, path)
            print_log(
                f'mmgc: compiled the CPU SGD-GC kernel in {seconds:.1f} s (cached as {path})',
                logger='current',
            )
        library = ctypes.CDLL(str(path))
        _bind(library)
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as err:
        return KernelBuild(path=path, compile_seconds=seconds, error=str(err))
    return KernelBuild(library=library, path=path, compile_seconds=seconds)


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
    """Compile the kernel from scratch into a temporary directory (not the
    cache) and return the seconds it took: the first-use cost on a machine
    with an empty cache.

    Raises:
        RuntimeError: If the compiler fails.
    """
    with tempfile.TemporaryDirectory() as tmp:
        return _compile(_SOURCE, Path(tmp) / 'sgd_gc_cpu.so')


def _reset_for_tests() -> None:
    """Forget the loaded kernel so the next call builds again."""
    global _BUILD
    _BUILD = None


def cpu_kernel_supports(
    param: Tensor, grad: Tensor, buffer: Tensor | None, requires_autograd: bool
) -> bool:
    """Whether the kernel can update ``param`` in place.

    Dense contiguous CPU float32/float64 tensors of one dtype; no autograd
    through the step. (Called for every tensor on every step, so it uses the
    cheapest tensor attributes: about 0.6 us a tensor.)
    """
    if requires_autograd and param.requires_grad:
        return False
    dtype = param.dtype
    if not (
        param.is_cpu
        and grad.is_cpu
        and dtype in CPU_KERNEL_DTYPES
        and grad.dtype == dtype
        and grad.layout == torch.strided
        and param.is_contiguous()
        and grad.is_contiguous()
        and param.shape == grad.shape
    ):
        return False
    return buffer is None or (
        buffer.is_cpu
        and buffer.dtype == dtype
        and buffer.is_contiguous()
        and buffer.shape == param.shape
    )


def _as_float(value: float | Tensor, name: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f'{name} must have one element; got {value.shape}')
        return float(value.item())
    return float(value)


def fused_sgd_gc_cpu_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: list[Tensor | None],
    gc_dims: Sequence[int | None],
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float | Tensor,
    nesterov: bool,
    maximize: bool,
) -> None:
    """One SGD(-GC) step with the kernel, in place.

    All tensors must pass :func:`cpu_kernel_supports` and ``gc_dims`` must
    be valid (see :func:`mmgc.ops.reduce_dims`). ``momentum_buffers`` gets
    new buffers where it holds None and ``momentum != 0``.

    Raises:
        RuntimeError: If the kernel is not available.
    """
    library = load_cpu_kernel()
    if library is None:
        raise RuntimeError(f'the CPU SGD-GC kernel is unavailable: {cpu_kernel_build().error}')
    lr_f = _as_float(lr, 'lr')
    wd_f = _as_float(weight_decay, 'weight_decay')
    threads = torch.get_num_threads()
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, param in enumerate(params):
        by_dtype.setdefault(param.dtype, []).append(i)
    for dtype, indices in by_dtype.items():
        n = len(indices)
        p_ptrs = (ctypes.c_void_p * n)()
        g_ptrs = (ctypes.c_void_p * n)()
        b_ptrs = (ctypes.c_void_p * n)()
        shapes = (ctypes.c_int64 * (3 * n))()
        flags = (ctypes.c_int32 * n)()
        for k, i in enumerate(indices):
            param, dim = params[i], gc_dims[i]
            p_ptrs[k] = param.data_ptr()
            g_ptrs[k] = grads[i].data_ptr()
            flag = 0
            if momentum != 0:
                if momentum_buffers[i] is None:
                    momentum_buffers[i] = torch.empty_like(
                        param, memory_format=torch.contiguous_format
                    )
                    flag |= _INIT_BUFFER
                b_ptrs[k] = momentum_buffers[i].data_ptr()
            shape = param.shape
            if dim is not None and param.dim() > 1:
                dim %= param.dim()
                flag |= _CENTER
                shapes[3 * k] = math.prod(shape[:dim])
                shapes[3 * k + 1] = shape[dim]
                shapes[3 * k + 2] = math.prod(shape[dim + 1 :])
            else:
                shapes[3 * k], shapes[3 * k + 1], shapes[3 * k + 2] = (
                    1,
                    1,
                    param.numel(),
                )
            flags[k] = flag
        func = (
            library.mmgc_sgd_gc_step_f32 if dtype == torch.float32 else library.mmgc_sgd_gc_step_f64
        )
        func(
            n,
            p_ptrs,
            g_ptrs,
            b_ptrs,
            shapes,
            flags,
            lr_f,
            float(momentum),
            float(dampening),
            wd_f,
            int(nesterov),
            int(maximize),
            threads,
        )
