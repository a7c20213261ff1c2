"""The private torch / MMEngine / MMCV / NumPy names mmgc relies on (``mmgc/_compat.py``),
each pinned here, so that a release that changes one fails this file rather than
mmgc's results; and a scan that fails when a private upstream name is used outside
``mmgc/_compat.py``. (``CheckpointHook._save_checkpoint_with_step``'s source is
pinned with the atomic checkpoint tests.)"""

from __future__ import annotations

import ast
import inspect
import io
import pickle
import pickletools
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.optim import OptimWrapper

from mmgc import _compat
from mmgc.engine.optimizers.sgd_gc import torch_has_fused_sgd
from tests.conftest import ROOT

#: Where a private upstream name may not appear (``_compat.py`` aside).
SCANNED = ('mmgc', 'tools', 'benchmarks')
#: Upstream packages whose private names count.
UPSTREAM = ('torch', 'mmengine', 'mmdet', 'mmcv', 'mmseg', 'mmpretrain', 'numpy')
#: ``namedtuple``'s public methods, which start with an underscore.
NAMEDTUPLE_API = {'_replace', '_asdict', '_fields', '_make', '_field_defaults'}
PRIVATE_PATH = re.compile(rf'\b(?:{"|".join(UPSTREAM)})(?:\.\w+)*\._[a-z]\w*')


def _private(name: str) -> bool:
    return name.startswith('_') and not name.startswith('__') and name not in NAMEDTUPLE_API


def _upstream(module: str | None) -> bool:
    return bool(module) and module.split('.')[0] in UPSTREAM


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings or bare expressions."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def private_uses(source: str) -> list[str]:
    """What ``source`` touches of a private upstream name: imports of one,
    attribute chains rooted at an upstream import, ``getattr`` / ``hasattr`` /
    ``setattr`` with a private literal on anything but ``self``/``cls``, and
    dotted private paths in strings (docstrings aside)."""
    tree = ast.parse(source)
    upstream_names: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _upstream(alias.name):
                    upstream_names.add((alias.asname or alias.name).split('.')[0])
                    if any(_private(part) for part in alias.name.split('.')):
                        found.append(f'line {node.lineno}: import {alias.name}')
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _upstream(node.module):
            if any(_private(part) for part in node.module.split('.')):
                found.append(f'line {node.lineno}: from {node.module} import ...')
            for alias in node.names:
                upstream_names.add(alias.asname or alias.name)
                if _private(alias.name):
                    found.append(f'line {node.lineno}: from {node.module} import {alias.name}')
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in upstream_names:
                found.append(f'line {node.lineno}: .{node.attr}')
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            if node.func.id in ('getattr', 'hasattr', 'setattr') and len(args) >= 2:
                target, name = args[0], args[1]
                own = isinstance(target, ast.Name) and target.id in ('self', 'cls')
                literal = isinstance(name, ast.Constant) and isinstance(name.value, str)
                if literal and _private(name.value) and not own:
                    found.append(f'line {node.lineno}: {node.func.id}(..., {name.value!r})')
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        ):
            if PRIVATE_PATH.search(node.value):
                found.append(f'line {node.lineno}: {PRIVATE_PATH.search(node.value).group()!r}')
    return found


def test_no_private_name_outside_compat():
    compat = ROOT / 'mmgc' / '_compat.py'
    files = sorted(p for d in SCANNED for p in (ROOT / d).rglob('*.py') if p != compat)
    assert len(files) > 40
    uses = {
        str(p.relative_to(ROOT)): found for p in files if (found := private_uses(p.read_text()))
    }
    assert not uses, f'private upstream names outside mmgc/_compat.py: {uses}'


def test_the_scan_finds_each_kind():
    source = '\n'.join(
        [
            'import torch',
            'import mmengine._strategy',
            'from torch.optim.optimizer import _default_to_fused_or_foreach',
            'from mmengine.hooks import CheckpointHook',
            'x = torch._utils._rebuild_tensor',
            'y = CheckpointHook._save_checkpoint_with_step',
            "z = getattr(registry, '_locations', ())",
            "w = importlib.util.find_spec('mmcv._ext')",
            "ok = getattr(self, '_checked', None); t = held._replace(a=1); torch.__version__",
        ]
    )
    found = private_uses(source)
    assert sorted({f.split(':')[0] for f in found}) == [f'line {i}' for i in (2, 3, 5, 6, 7, 8)]


def test_default_foreach():
    from torch.optim.optimizer import _default_to_fused_or_foreach

    assert list(inspect.signature(_default_to_fused_or_foreach).parameters)[:3] == [
        'params',
        'differentiable',
        'use_fused',
    ]
    assert isinstance(_compat.default_foreach([torch.zeros(2)]), bool)


def test_foreach_ops_broadcast_as_used():
    targets = [torch.zeros(2, 3), torch.zeros(4, 1, 2)]
    shifts = [torch.ones(2, 1), torch.full((4, 1, 1), 2.0)]
    _compat.foreach_add_(targets, shifts, alpha=-0.5)
    assert torch.equal(targets[0], torch.full((2, 3), -0.5))
    assert torch.equal(targets[1], torch.full((4, 1, 2), -1.0))
    _compat.foreach_mul_(targets, 2.0)
    _compat.foreach_neg_(targets)
    assert torch.equal(targets[0], torch.ones(2, 3))
    scaled = _compat.foreach_mul(shifts, torch.tensor(3.0))
    assert torch.equal(scaled[1], torch.full((4, 1, 1), 6.0))


def test_step_pre_hooks():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)

    def hook(*args):
        return None

    handle = optimizer.register_step_pre_hook(hook)
    assert list(_compat.step_pre_hooks(optimizer)) == [hook]
    handle.remove()
    assert list(_compat.step_pre_hooks(optimizer)) == []


def test_skip_fused_sgd_device_check(monkeypatch):
    if not torch_has_fused_sgd():
        pytest.skip('this torch has no fused SGD')
    import torch.optim.sgd as sgd_module

    # SGD's step calls the module-level name, so replacing it there takes effect
    assert '_device_dtype_check_for_fused(p)' in inspect.getsource(torch.optim.SGD._init_group)
    check = sgd_module._device_dtype_check_for_fused
    monkeypatch.setattr(sgd_module, '_device_dtype_check_for_fused', check)  # restored after
    meta, ints = torch.zeros(3, device='meta'), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match='fused=True'):
        check(meta)
    _compat.skip_fused_sgd_device_check('meta')
    sgd_module._device_dtype_check_for_fused(meta)  # now taken
    with pytest.raises(RuntimeError, match='fused=True'):  # anything else still checked
        sgd_module._device_dtype_check_for_fused(ints)


def test_conv_base_types():
    conv_nd, conv_transpose_nd = _compat.conv_base_types()
    assert issubclass(torch.nn.Conv2d, conv_nd) and not issubclass(
        torch.nn.Conv2d, conv_transpose_nd
    )
    for cls in (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d):
        assert issubclass(cls, conv_transpose_nd) and issubclass(cls, conv_nd)


def test_torch_dispatch_mode_and_tree_flatten():
    seen = []

    class Record(_compat.torch_dispatch_mode()):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    with Record():
        torch.ones(2).add_(1)
    assert 'aten.add_' in seen
    leaves, _ = _compat.tree_flatten([1, (torch.zeros(1), {'a': 3})])
    assert leaves[0] == 1 and leaves[2] == 3 and len(leaves) == 3


def _pickled_globals(buffer: bytes) -> set[str]:
    """The ``module.name`` globals a ``torch.save`` file's pickle names."""
    with zipfile.ZipFile(io.BytesIO(buffer)) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith('data.pkl')))
    names, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ('SHORT_BINUNICODE', 'BINUNICODE', 'UNICODE'):
            strings.append(arg)
        elif opcode.name == 'GLOBAL':
            names.add(arg.replace(' ', '.'))
        elif opcode.name == 'STACK_GLOBAL':
            names.add('.'.join(strings[-2:]))
    return names


def test_torch_rebuilders_cover_a_saved_parameter():
    buffer = io.BytesIO()
    torch.save({'w': torch.nn.Parameter(torch.zeros(2, 2)), 't': torch.ones(3)}, buffer)
    rebuilders = {n for n in _pickled_globals(buffer.getvalue()) if n.startswith('torch._utils.')}
    assert rebuilders and rebuilders <= set(_compat.torch_rebuilders())
    assert (
        _compat.torch_rebuilders()['torch._utils._rebuild_tensor_v2']
        is torch._utils._rebuild_tensor_v2
    )


def test_numpy_multiarray_names():
    multiarray = _compat.numpy_multiarray()
    for name in _compat.NUMPY_PICKLED:
        assert callable(getattr(multiarray, name))
    named = {
        f'{module}.{name}'
        for opcode, arg, _ in pickletools.genops(pickle.dumps(np.zeros(2), protocol=2))
        if opcode.name == 'GLOBAL'
        for module, name in [arg.split(' ')]
    }
    assert any(n.startswith(_compat.NUMPY_MULTIARRAY_MODULES) for n in named), named


def test_fsdp1_flattened():
    if not torch.distributed.is_available():
        pytest.skip('torch.distributed is not available')
    from torch.distributed.fsdp import _common_utils

    assert _common_utils.FSDP_FLATTENED == '_fsdp_flattened'
    tensor = torch.zeros(4)
    assert not _compat.fsdp1_flattened(tensor)
    setattr(tensor, _common_utils.FSDP_FLATTENED, True)
    assert _compat.fsdp1_flattened(tensor)


def test_checkpoint_hook_save_method():
    from mmengine.hooks import CheckpointHook

    from mmgc.runtime.atomic_checkpoint import AtomicCheckpointHook

    params = list(
        inspect.signature(getattr(CheckpointHook, _compat.CHECKPOINT_HOOK_SAVE)).parameters
    )
    assert params == ['self', 'runner', 'step', 'meta']
    assert (
        getattr(AtomicCheckpointHook, _compat.CHECKPOINT_HOOK_SAVE)
        is AtomicCheckpointHook.save_atomically
    )


def test_accumulative_counts():
    param = torch.nn.Parameter(torch.zeros(2))
    wrapper = OptimWrapper(torch.optim.SGD([param], lr=0.1), accumulative_counts=3)
    assert _compat.accumulative_counts(wrapper) == 3


def test_mmengine_strategies():
    from mmengine.registry import STRATEGIES

    _compat.register_mmengine_strategies()
    with STRATEGIES.switch_scope_and_registry(None) as registry:
        assert registry.get('DDPStrategy') is not None
        flattening = {cls.__name__ for cls in _compat.mmengine_flattening_strategies()}
        assert flattening == {'DeepSpeedStrategy', 'FSDPStrategy'}
        assert all(registry.get(name) is not None for name in flattening)


def test_mmcv_ops_found():
    # the stacks build MMCV with its ops (MMCV_WITH_OPS=1)
    assert _compat.mmcv_ops_found()


def test_mmengine_module2package_table():
    # mmgc/mim.py: the table MMEngine looks 'scope::path' packages up in
    from mmengine.config.utils import MODULE2PACKAGE

    assert isinstance(MODULE2PACKAGE, dict) and MODULE2PACKAGE.get('mmdet') == 'mmdet'


def test_grad_scaler_fused_protocol():
    # mmgc/engine/optimizers/gc_step_hooks.py: GradScaler hands fused optimizers
    # grad_scale / found_inf instead of unscaling (read in GradScaler.step's source)
    from torch.cuda.amp import GradScaler

    source = inspect.getsource(GradScaler.step)
    if 'grad_scale' not in source:  # torch >= 2.3: torch.amp.GradScaler holds it
        from torch.amp import GradScaler as AmpGradScaler

        source = inspect.getsource(AmpGradScaler.step)
    for name in ('_step_supports_amp_scaling', 'grad_scale', 'found_inf'):
        assert name in source


def test_default_scope_names():
    """``DefaultScope._instance_dict`` keeps the scopes in creation order, and
    ``overwrite_default_scope`` adds one while a build runs and drops it after
    (what the mmgc registry scope reads the run's codebase from)."""
    import time

    from mmengine.registry import DefaultScope

    name = f'test-compat-{time.time()}'
    DefaultScope.get_instance(name, scope_name='mmseg')
    try:
        assert _compat.default_scope_names()[-1] == 'mmseg'
        with DefaultScope.overwrite_default_scope('mmgc'):
            assert _compat.default_scope_names()[-2:] == ['mmseg', 'mmgc']
            assert DefaultScope.get_current_instance().scope_name == 'mmgc'
        assert _compat.default_scope_names()[-1] == 'mmseg'
    finally:
        DefaultScope._instance_dict.pop(name, None)


def test_process_groups_lists_the_default_group_and_subgroups(tmp_path):
    """``distributed_c10d._world.pg_map`` holds every group torch made, and
    ``destroy_process_group`` empties it."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip('a process group is already alive in this process')
    store = f'file://{tmp_path / "store"}'
    dist.init_process_group('gloo', init_method=store, rank=0, world_size=1)
    try:
        sub = dist.new_group([0])
        groups = _compat.process_groups()
        assert any(g is dist.group.WORLD for g in groups) and any(g is sub for g in groups)
        assert all(isinstance(g, dist.ProcessGroup) for g in groups)
    finally:
        dist.destroy_process_group()
    assert _compat.process_groups() == []


def test_run_exit_handlers_runs_each_once():
    """``atexit._run_exitfuncs`` runs the handlers last-in first-out and clears
    them, so the interpreter's own exit does not run them again."""
    code = (
        'import atexit; from mmgc import _compat\n'
        "atexit.register(print, 'first'); atexit.register(print, 'second')\n"
        "_compat.run_exit_handlers(); print('after')\n"
    )
    out = subprocess.run(
        [sys.executable, '-c', code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.split() == ['second', 'first', 'after'], out
