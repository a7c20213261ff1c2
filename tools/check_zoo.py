r"""Switch GC on for every config of an OpenMMLab codebase's own zoo and check it, on the CPU.

Usage::

    python tools/check_zoo.py [CONFIG ...] [--codebase mmdet|mmseg|mmpretrain]
        [--layers conv fc] [--variant grad|update|sgdw]
        [--out work_dirs/check_zoo/zoo.jsonl] [--workers N] [--resume] [--spread]

Without CONFIG, every ``.py`` under the codebase's ``.mim/configs``
(``mmdet/.mim/configs`` by default; ``_base_`` folders left out). For each
config: load it, switch pretrained weights off (``init_cfg=None`` and
``pretrained=None`` everywhere in ``model``), build the model on the CPU in
the config's ``default_scope`` (its codebase), build its optimizer as the
config says (the baseline) and
after :func:`mmgc.engine.optimizers.gc_switch.enable_gc` (GC), and check
(:func:`check_gc`):

1. exactly the selected tensors get GC: every conv and FC weight of the model
   that the optimizer holds (``layers``), with the output-unit dim (1 for a
   transposed conv), and nothing else;
2. every other setting of every parameter (each key of its group) equals the
   baseline's;
3. one step with seeded random gradients keeps the invariant of the
   optimizer and variant: SGD, GC on the gradient or the update: each output
   unit's weight sum (the paper's Eq. 3; with decoupled decay, scaled by
   :math:`1 - \gamma\lambda`); an adaptive optimizer, GC on the gradient: the
   first moment's rows have zero mean; GC on the update: the weight sums.
   Weights that are not selected must break it (a control).

``AmpOptimWrapper`` configs: MMEngine's AMP wrapper needs a GPU, so the
optimizer is built through ``GCOptimWrapperConstructor.build_optimizer`` (the
wrapper's type and arguments are kept but not built) and the baseline with
``type='OptimWrapper'``. Configs whose ``model``, ``optim_wrapper`` and
``custom_imports`` equal an earlier one's (most differ only in data or
schedule) share its result (``same_as``). Prints one line per config, then how
many work and, grouped, why the others do not build here or are refused
(mmgc refusing GC in one sentence, such as the ``grad`` variant on MMPretrain's
LARS and Lamb, whose trust ratios read the raw gradient: ``refused``, not a
failure); writes one JSON line per config
to ``--out`` (``--resume`` keeps those already there; ``--spread`` visits the
folders round-robin, so that a run cut short has seen every kind).
``tests/tools/test_check_zoo.py`` runs the same check on a sample in CI.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import copy
import importlib
import importlib.util
import inspect
import json
import logging
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Group keys that GC adds (the GC side may have them, the baseline not).
GC_KEYS = ('gc', 'gc_dim', 'gc_variant')
#: Group keys SGDGC has beyond torch's SGD (SGD -> SGDGC / SGDWGC).
SGDGC_EXTRA_KEYS = ('decoupled_weight_decay',)
#: Group keys with one entry per parameter.
PER_PARAM_KEYS = ('param_names',)
#: optim wrappers MMEngine cannot build without a GPU.
GPU_ONLY_WRAPPERS = ('AmpOptimWrapper',)
_AMP_ONLY_KEYS = ('loss_scale', 'dtype', 'use_fsdp')
#: Models above this size are not stepped here (memory of a shared 24 GiB machine).
MAX_PARAMS = 300_000_000


#: The codebases whose zoo the check walks, by ``default_scope``.
CODEBASES = ('mmdet', 'mmseg', 'mmpretrain')


def zoo_dir(codebase: str = 'mmdet') -> Path:
    """The config zoo ``codebase`` ships (``<codebase>/.mim/configs``).

    Raises:
        MissingCodebaseError: If it is not installed, naming what to install.
    """
    from mmgc.runtime.codebases import CODEBASES as KNOWN
    from mmgc.runtime.codebases import MissingCodebaseError

    if codebase not in CODEBASES:
        raise ValueError(f'codebase must be one of {CODEBASES}; got {codebase!r}')
    if importlib.util.find_spec(codebase) is None:
        known = KNOWN[codebase]
        raise MissingCodebaseError(f'{known.name} is not installed: {known.install}.')
    return Path(importlib.import_module(codebase).__file__).parent / '.mim' / 'configs'


def zoo_configs(root: Path | None = None) -> list[Path]:
    """Every config file of the zoo, ``_base_`` folders left out, sorted."""
    root = root or zoo_dir()
    return sorted(p for p in root.rglob('*.py') if '_base_' not in p.relative_to(root).parts)


def _pretrained_off(node: Any) -> None:
    """``init_cfg=None`` and ``pretrained=None`` in every dict under ``node``."""
    if isinstance(node, dict):
        for key in ('init_cfg', 'pretrained'):
            if key in node:
                node[key] = None
        for value in node.values():
            _pretrained_off(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _pretrained_off(value)


def load_config(path: str | Path, import_custom_modules: bool = True) -> Any:
    """The config at ``path`` with pretrained weights off (``import_custom_modules``:
    import what its ``custom_imports`` names, as a run would).

    Raises:
        ValueError: If it is not a training config (no ``model`` or no
            ``optim_wrapper.optimizer``).
    """
    from mmengine.config import Config

    cfg = Config.fromfile(str(path), import_custom_modules=import_custom_modules)
    optim_wrapper = cfg.get('optim_wrapper')
    if not isinstance(cfg.get('model'), dict) or not isinstance(optim_wrapper, dict):
        raise ValueError('not a training config (no model or no optim_wrapper)')
    if not isinstance(optim_wrapper.get('optimizer'), dict):
        raise ValueError('not a training config (optim_wrapper has no optimizer)')
    _pretrained_off(cfg.model)
    return cfg


def build_model(cfg: Any) -> nn.Module:
    """``cfg.model`` built on the CPU in its ``default_scope``'s codebase
    (MMDetection's without one; no weights loaded)."""
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings

    scope = cfg.get('default_scope') or 'mmdet'
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(scope)
    return importlib.import_module(f'{scope}.registry').MODELS.build(cfg.model)


def expected_gc(model: nn.Module, layers: tuple[str, ...]) -> dict[int, int]:
    """``id(weight) -> output-unit dim`` of the weights GC must get, decided
    here by module type (independently of mmgc's selection): conv = torch's
    conv base class (conv and transposed conv, dim 1 for the latter; grouped
    transposed convs left out) and MMCV's deformable convs; fc = ``nn.Linear``
    and ``nn.MultiheadAttention``'s input projections."""
    from mmgc._compat import conv_base_types

    conv_nd, conv_transpose_nd = conv_base_types()

    deform: tuple[type, ...] = ()
    with contextlib.suppress(ImportError):
        from mmcv.ops import DeformConv2d, ModulatedDeformConv2d

        deform = (DeformConv2d, ModulatedDeformConv2d)
    out: dict[int, int] = {}
    for module in model.modules():
        weights: list[tuple[Any, int]] = []
        if 'conv' in layers and isinstance(module, conv_transpose_nd):
            weights = [(module.weight, 1)] if module.groups == 1 else []
        elif 'conv' in layers and isinstance(module, (conv_nd, *deform)):
            weights = [(module.weight, 0)]
        elif 'fc' in layers and isinstance(module, nn.Linear):
            weights = [(module.weight, 0)]
        elif 'fc' in layers and isinstance(module, nn.MultiheadAttention):
            names = ('in_proj_weight', 'q_proj_weight', 'k_proj_weight', 'v_proj_weight')
            weights = [(getattr(module, n), 0) for n in names if getattr(module, n) is not None]
        for weight, dim in weights:
            if isinstance(weight, nn.Parameter):
                out.setdefault(id(weight), dim)
    return out


def _per_param(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, Any]]:
    """``id(param) -> its group's options`` (per-parameter lists: its entry)."""
    out: dict[int, dict[str, Any]] = {}
    for group in optimizer.param_groups:
        params = group['params']
        for i, param in enumerate(params):
            options = {}
            for key, value in group.items():
                if key == 'params':
                    continue
                if key in PER_PARAM_KEYS and isinstance(value, list) and len(value) == len(params):
                    value = value[i]
                options[key] = value
            if id(param) in out:
                raise AssertionError(f'a tensor of shape {tuple(param.shape)} is in two groups')
            out[id(param)] = options
    return out


def _without_gpu_wrapper(optim_wrapper: dict) -> dict:
    """The optim wrapper config with a GPU-only wrapper type replaced by OptimWrapper."""
    optim_wrapper = copy.deepcopy(dict(optim_wrapper))
    if optim_wrapper.get('type') in GPU_ONLY_WRAPPERS:
        optim_wrapper['type'] = 'OptimWrapper'
        for key in _AMP_ONLY_KEYS:
            optim_wrapper.pop(key, None)
    return optim_wrapper


def build_optimizers(
    cfg: Any, model: nn.Module, layers: tuple[str, ...], variant: str
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, Any]:
    """The baseline's and the GC run's optimizers for ``model``, and the GC
    run's ``optim_wrapper`` config (after ``enable_gc``)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    from mmgc.engine.optimizers.gc_switch import enable_gc

    gc_cfg = copy.deepcopy(cfg)
    enable_gc(gc_cfg, layers=layers, variant=variant)
    baseline = build_optim_wrapper(model, _without_gpu_wrapper(cfg.optim_wrapper)).optimizer
    ow = copy.deepcopy(dict(gc_cfg.optim_wrapper))
    if ow.get('type') in GPU_ONLY_WRAPPERS:  # keep the type; build the optimizer alone
        constructor, paramwise_cfg = ow.pop('constructor'), ow.pop('paramwise_cfg', None)
        constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
            dict(type=constructor, optim_wrapper_cfg=ow, paramwise_cfg=paramwise_cfg)
        )
        gc = constructor.build_optimizer(model)
    else:
        gc = build_optim_wrapper(model, ow).optimizer
    return baseline, gc, gc_cfg.optim_wrapper


def _unit_dims(tensor: torch.Tensor, dim: int) -> list[int]:
    return [d for d in range(tensor.ndim) if d != dim]


#: Optimizers that keep a first moment (``exp_avg``), whose rows GC on the gradient centres.
FIRST_MOMENT = ('Adam', 'AdamW', 'Adamax', 'NAdam', 'RAdam')
#: Optimizers whose weight decay is a gradient term, ``g + wd w`` (unless a group says decoupled).
COUPLED = ('SGD', 'Adam', 'Adamax', 'Adagrad', 'Adadelta', 'RMSprop', 'ASGD', 'NAdam', 'RAdam')


def _step_invariant(
    optimizer: torch.optim.Optimizer, variant: str
) -> tuple[str, dict[int, torch.Tensor]]:
    """What the step must keep for a GC tensor: ('sums', scale per tensor),
    ('moment', {}) or ('replay', {}): an optimizer without a first moment
    (RMSprop, ...), whose GC step must be its own step on ``P(g + wd w)``."""
    from mmgc.engine.optimizers.sgd_gc import SGDGC

    if variant == 'update':
        return 'sums', {}
    if isinstance(optimizer, SGDGC):
        scales = {}
        for group in optimizer.param_groups:
            if group.get('decoupled_weight_decay'):
                for p in group['params']:
                    scales[id(p)] = 1.0 - group['lr'] * group['weight_decay']
        return 'sums', scales
    return ('moment' if type(optimizer).__name__ in FIRST_MOMENT else 'replay'), {}


def _replayed(
    optimizer: torch.optim.Optimizer, expected: dict[int, int]
) -> dict[int, torch.Tensor]:
    """``id(weight) -> the weight after one step of a fresh, plain optimizer of
    the same type and options`` on a copy, fed ``P(g + wd w)`` (decay then 0)
    for a GC weight and ``g`` for any other (computed here, in float64)."""
    copies: dict[int, torch.Tensor] = {}
    groups = []
    for group in optimizer.param_groups:
        coupled = type(optimizer).__name__ in COUPLED and not group.get('decoupled_weight_decay')
        for p in group['params']:
            if p.ndim < 2 or p.numel() == 0:
                continue
            q = p.detach().clone()
            if id(p) in expected:
                d = p.grad.double() + (group['weight_decay'] * p.double() if coupled else 0)
                unit = _unit_dims(p, expected[id(p)])
                q.grad = (d - d.mean(unit, keepdim=True)).to(p.dtype)
            else:
                q.grad = p.grad.clone()
            options = {k: v for k, v in group.items() if k != 'params'}
            if id(p) in expected and coupled:
                options['weight_decay'] = 0.0
            groups.append(dict(options, params=[q]))
            copies[id(p)] = q
    if groups:
        type(optimizer)(groups).step()
    return copies


def _check_replayed(
    p: torch.Tensor, start: torch.Tensor, replayed: torch.Tensor, gc: bool, optimizer: Any
) -> None:
    """``p``'s step equals the replayed plain optimizer's (to float32 rounding)."""
    step, want = (p.detach() - start).double(), (replayed - start).double()
    worst = float((step - want).abs().max())
    if worst > 1e-4 * float(want.abs().max()) + 1e-8:
        what = 'P(g + wd w)' if gc else 'g (no GC)'
        raise AssertionError(
            f'a tensor of shape {tuple(p.shape)} steps {worst:.3g} away from '
            f'{type(optimizer).__name__} on {what}'
        )


def _moment_rows(
    optimizer: Any, p: torch.Tensor, unit: list[int], grad_abs: Any
) -> tuple[Any, Any, Any]:
    """The first moment's row means, their target (0) and tolerance: float32
    rounding of the moment and of the gradient's row mean (``grad_abs``: the
    raw gradient's mean magnitude per row), whose error stays in a centralized
    row of small entries (a (512, 2) weight whose two gradients nearly agree)."""
    moment = optimizer.state[p].get('exp_avg')
    if moment is None:
        raise AssertionError(f'{type(optimizer).__name__} keeps no first moment (exp_avg)')
    value = moment.mean(unit, dtype=torch.float64)
    tol = 1e-5 * moment.abs().mean(unit, dtype=torch.float64) + 1e-6 * grad_abs + 1e-12
    return value, torch.zeros_like(value), tol


def _decidable(p: torch.Tensor, start: torch.Tensor | None, unit: list[int], tol: Any) -> bool:
    """Whether a weight without GC must break the sums invariant. A step that is
    not centralized moves each unit's sum by a random amount of spread
    ``sqrt(n) * rms(step)``, which falls inside the tolerance by chance when the
    spread is near it: so the spread must clear the tolerance tenfold on each of
    at least 4 units (a chance of about 0.08 per unit, 4e-5 for all four). A
    tensor of fewer units (ViG's (1, 196, 196) relative positions, a (1, 150,
    768) class embedding) is left out. The moment check: always."""
    if start is None:
        return True
    step = (p.detach() - start).double()
    spread = step.square().sum(unit).sqrt()  # sqrt(n) * rms over each unit
    return spread.numel() >= 4 and bool((spread > 10 * tol).all())


def check_step(optimizer: torch.optim.Optimizer, expected: dict[int, int], variant: str) -> int:
    """One step on seeded random gradients; check the invariant on every GC
    tensor and that non-selected weights (ndim > 1, lr > 0) break it.

    Returns:
        int: How many GC tensors were checked.
    """
    generator = torch.Generator().manual_seed(0)
    params = [p for g in optimizer.param_groups for p in g['params']]
    lrs = {id(p): float(g['lr']) for g in optimizer.param_groups for p in g['params']}
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
    kind, scales = _step_invariant(optimizer, variant)
    multi = [p for p in params if p.ndim > 1 and p.numel() > 0]
    dims = {id(p): expected.get(id(p), 0) for p in multi}
    f64 = torch.float64
    before = {id(p): p.detach().sum(_unit_dims(p, dims[id(p)]), dtype=f64) for p in multi}
    absum = {id(p): p.detach().abs().sum(_unit_dims(p, dims[id(p)]), dtype=f64) for p in multi}
    replayed = _replayed(optimizer, expected) if kind == 'replay' else {}
    grad_abs = (
        {  # the raw gradients' mean magnitude per row, for the moment's tolerance
            id(p): p.grad.abs().mean(_unit_dims(p, dims[id(p)]), dtype=f64) for p in multi
        }
        if kind == 'moment'
        else {}
    )
    start = {  # the steps the replay and the sums' control read
        k: p.detach().clone()
        for p in multi
        if (k := id(p)) in replayed or (kind == 'sums' and k not in expected)
    }
    optimizer.step()
    checked = 0
    for p in multi:
        key, unit = id(p), _unit_dims(p, dims[id(p)])
        if kind == 'replay':  # the step, against the plain optimizer's on P(g + wd w) / g
            _check_replayed(p, start[key], replayed[key], key in expected, optimizer)
            checked += key in expected
            continue
        if kind == 'sums':
            value = p.detach().sum(unit, dtype=f64)
            target = before[key] * scales.get(key, 1.0)
            # float32 rounding: relative to the row's weights before and after
            tol = 1e-5 * (absum[key] + p.detach().abs().sum(unit, dtype=f64)) + 1e-6
        else:
            value, target, tol = _moment_rows(optimizer, p, unit, grad_abs[key])
        holds = bool(((value - target).abs() <= tol).all())
        if key in expected:
            if not holds:
                worst = float((value - target).abs().max())
                raise AssertionError(
                    f'a GC tensor of shape {tuple(p.shape)} breaks the {kind} invariant '
                    f'(off by {worst:.3g})'
                )
            checked += 1
        elif holds and lrs[key] > 0 and _decidable(p, start.get(key), unit, tol):
            raise AssertionError(
                f'a weight without GC (shape {tuple(p.shape)}) keeps the {kind} invariant, '
                'as if it were centralized'
            )
    for p in params:
        p.grad = None
    return checked


def check_gc(
    cfg: Any, model: nn.Module, layers: tuple[str, ...] = ('conv', 'fc'), variant: str = 'grad'
) -> dict[str, Any]:
    """Checks 1-3 of the module docstring for one config and model.

    Returns:
        dict: ``n_gc`` (GC tensors), ``n_params`` (tensors in the optimizer),
        ``n_groups`` (baseline, GC), ``optimizer``, ``constructor``, ``wrapper``.

    Raises:
        AssertionError: Naming the first thing that does not hold.
    """
    baseline, gc, gc_wrapper = build_optimizers(cfg, model, layers, variant)
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    base, ours = _per_param(baseline), _per_param(gc)
    if base.keys() != ours.keys():
        extra = sorted(names.get(k, '?') for k in ours.keys() ^ base.keys())
        raise AssertionError(f'the optimizers hold different parameters: {extra[:5]}')
    expected = {k: d for k, d in expected_gc(model, layers).items() if k in ours}
    gc_variant = 'grad' if variant == 'sgdw' else variant
    allowed_extra = set(GC_KEYS)
    if type(gc) is not type(baseline):  # SGD -> SGDGC: options torch's SGD lacks here
        allowed_extra |= set(inspect.signature(type(gc)).parameters) - set(
            inspect.signature(type(baseline)).parameters
        )
    for key, settings in ours.items():
        name = names.get(key, '?')
        want = (True, expected[key], gc_variant) if key in expected else (False, 0, None)
        got = (settings.get('gc'), settings.get('gc_dim'), settings.get('gc_variant'))
        if key not in expected:
            got = (got[0], got[1], None)
        if got != want:
            raise AssertionError(f'{name}: GC options {got}, expected {want}')
        other = {k: v for k, v in settings.items() if k not in GC_KEYS}
        missing = sorted(set(base[key]) - set(other))
        extra = sorted(set(other) - set(base[key]) - allowed_extra)
        if missing or extra:
            raise AssertionError(f'{name}: group keys missing {missing}, extra {extra}')
        for k, v in base[key].items():
            if k in SGDGC_EXTRA_KEYS and k in allowed_extra:
                continue  # SGDWGC: decoupled by design
            same = torch.equal(v, other[k]) if isinstance(v, torch.Tensor) else v == other[k]
            if not same:
                raise AssertionError(f'{name}: {k}={other[k]!r} with GC, {v!r} without')
    checked = check_step(gc, expected, variant)
    return dict(
        n_gc=len(expected),
        n_checked=checked,
        n_params=len(ours),
        n_groups=(len(baseline.param_groups), len(gc.param_groups)),
        optimizer=type(gc).__name__,
        constructor=gc_wrapper.gc.constructor,
        wrapper=gc_wrapper.get('type', 'OptimWrapper'),
    )


#: MMDetection's own messages for an optional package (its name in group 1).
_INSTALL_HINTS = (
    r'(\S+) is not installed',
    r'mim install ([\w.-]+)',
    r'install (\w+) first',
    r'pip install ((?:-\w\s+)?["\']?[\w.\[\]/-]+)',  # a package, an extra or -r FILE
)


def _missing_package(err: BaseException, text: str) -> str | None:
    """The reason if ``err`` says an optional package is missing, else None."""
    if isinstance(err, ModuleNotFoundError) and str(err.name).split('.')[0] == 'projects':
        return "imports MMDetection's projects/ folder (not part of the installed package)"
    if isinstance(err, ModuleNotFoundError) and err.name:
        return f'missing optional package {str(err.name).split(".")[0]!r}'
    installed = next((m for m in (re.search(h, text) for h in _INSTALL_HINTS) if m), None)
    if installed:
        what = installed.group(1).replace('"', '').replace("'", '').strip('.,')
        return f'missing optional package {what.lower()!r}'
    custom = re.search(r"Failed to import custom modules from .*'imports': \[([^\]]*)\]", text)
    if custom:  # a config's own custom_imports
        first = custom.group(1).split(',')[0].strip(' \'"')
        return f'missing optional package {first.split(".")[0]!r}'
    if isinstance(err, ImportError):
        return f'missing optional package ({text[:80]})'
    return None


def why_not(err: BaseException) -> str:
    """A short, groupable reason for a config that does not build here."""
    text = ' '.join(str(err).split())
    if isinstance(err, ValueError) and text.startswith('not a training config'):
        return text
    missing = _missing_package(err, text)
    if missing:
        return missing
    if isinstance(err, KeyError) and 'registry' in text:
        match = re.search(r'(\S+) is not in the (\S+) registry', text)
        what = match.group(1).strip('\'"') if match else text[:60]
        return f'module not registered by its codebase (a project or optional package): {what}'
    if isinstance(err, MemoryError):
        return text
    if 'process group has not been initialized' in text:
        return 'needs an initialized torch.distributed process group (SyncBN)'
    if 'cuda' in text.lower() or 'gpu' in text.lower():
        return 'needs CUDA'
    if isinstance(err, (FileNotFoundError, OSError)):
        return f'needs a file or a download ({type(err).__name__})'
    if isinstance(err, TypeError) and '__init__()' in text:
        return f'does not build in this MMDetection ({text[:100]})'
    return f'other: {type(err).__name__}: {text[:120]}'


def run_one(
    path: str, layers: tuple[str, ...] = ('conv', 'fc'), variant: str = 'grad'
) -> dict[str, Any]:
    """Load, build and check one config; never raises (the outcome is in the dict)."""
    from mmengine.logging import MMLogger

    from mmgc.errors import ConfigError

    torch.set_num_threads(1)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    start = time.perf_counter()
    result: dict[str, Any] = dict(config=path)
    try:
        try:
            cfg = load_config(path)
            model = build_model(cfg)
            size = sum(p.numel() for p in model.parameters())
            if size > MAX_PARAMS:
                result['params'] = size
                raise MemoryError(
                    f'too large to check on this CPU (over {MAX_PARAMS // 10**6} M params)'
                )
        except Exception as err:  # a config that does not build here: say why
            result.update(status='skip', reason=why_not(err))
            return result
        try:
            result.update(check_gc(cfg, model, layers, variant), status='ok')
        except ConfigError as err:  # mmgc refuses GC on this config, in one sentence
            result.update(status='refused', reason=' '.join(str(err).split()))
        except Exception as err:  # GC on a config that builds: every failure counts
            result.update(status='fail', reason=f'{type(err).__name__}: {err}')
            result['traceback'] = traceback.format_exc(limit=4)
    finally:
        logger.setLevel(level)
        result['seconds'] = round(time.perf_counter() - start, 2)
    return result


def _checked(paths: list[str], workers: int, per_pool: int, *args: Any) -> Any:
    """:func:`run_one` (with ``args``) on each of ``paths``, results in order: in
    this process for ``workers=0``, else in pools of ``workers`` processes, a
    fresh pool for every ``workers * per_pool`` configs (what keeps a worker's
    memory bounded; ``max_tasks_per_child`` hangs once a worker retires on
    Python 3.11 to 3.13, cpython gh-115634)."""
    if workers == 0:
        yield from (run_one(path, *args) for path in paths)
        return
    size = workers * per_pool
    for start in range(0, len(paths), size):
        batch = paths[start : start + size]
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run_one, path, *args) for path in batch]
            for path, future in zip(batch, futures):
                try:
                    yield future.result()
                except Exception as err:  # the worker died (memory, a crash in an op)
                    died = f'worker died: {err!r}'
                    yield dict(config=path, status='skip', reason=died, seconds=0.0)


def build_key(path: str) -> str | None:
    """What the check depends on: the config's ``model``, ``optim_wrapper`` and
    ``custom_imports`` (configs that differ only in data or schedule share it);
    None if the file does not load."""
    from mmengine.config import Config

    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    except Exception:  # run_one says why
        return None
    parts = {k: cfg.get(k) for k in ('model', 'optim_wrapper', 'custom_imports', 'default_scope')}
    return json.dumps(parts, sort_keys=True, default=repr)


def _summary(results: list[dict], layers: tuple[str, ...], variant: str) -> int:
    counts = collections.Counter(r['status'] for r in results)
    print(
        f'\n{counts["ok"]} of {len(results)} configs work with GC ({"/".join(layers)}, '
        f'{variant}); {counts["fail"]} fail the check; {counts["refused"]} are refused by '
        f'mmgc; {counts["skip"]} do not build here'
    )
    for status in ('refused', 'skip'):
        reasons = collections.Counter(r['reason'] for r in results if r['status'] == status)
        for reason, n in reasons.most_common():
            print(f'{n:5}  {status}: {reason}')
    for r in results:
        if r['status'] == 'fail':
            print(f'FAIL {r["config"]}: {r["reason"]}')
    return 1 if counts['fail'] else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='*', help='configs (default: the whole zoo)')
    parser.add_argument(
        '--codebase',
        default='mmdet',
        choices=CODEBASES,
        help='whose zoo: the configs under <codebase>/.mim/configs (default mmdet)',
    )
    parser.add_argument('--layers', nargs='+', default=['conv', 'fc'], choices=['conv', 'fc'])
    parser.add_argument('--variant', default='grad', choices=['grad', 'update', 'sgdw'])
    parser.add_argument('--out', default='work_dirs/check_zoo/zoo.jsonl')
    parser.add_argument(
        '--workers', type=int, default=1, help='worker processes (default 1; 0: in this one)'
    )
    parser.add_argument(
        '--tasks-per-process',
        type=int,
        default=25,
        help='configs a worker checks before a fresh pool replaces it (default 25)',
    )
    parser.add_argument(
        '--resume', action='store_true', help='keep the results already in --out, check the rest'
    )
    parser.add_argument(
        '--spread',
        action='store_true',
        help='order the configs round-robin over their folders (every kind early in a long run)',
    )
    return parser


def _spread(paths: list[str]) -> list[str]:
    """``paths`` round-robin over their folders."""
    by_folder: dict[str, list[str]] = collections.defaultdict(list)
    for path in paths:
        by_folder[str(Path(path).parent)].append(path)
    lists = list(by_folder.values())
    return [f[i] for i in range(max(map(len, lists), default=0)) for f in lists if i < len(f)]


def _same_builds(todo: list[str]) -> dict[int, int]:
    """One check per distinct (model, optim_wrapper, custom_imports): index in
    ``todo`` -> index of the config checked for it."""
    first: dict[str, int] = {}
    same_as: dict[int, int] = {}
    for i, path in enumerate(todo):
        key = build_key(path)
        if key is not None and key in first:
            same_as[i] = first[key]
        elif key is not None:
            first[key] = i
    return same_as


def _progress_line(result: dict) -> str:
    detail = result.get('reason') or (
        f'{result["n_gc"]} GC tensors of {result["n_params"]}, {result["optimizer"]}, '
        f'{result["constructor"]}, {result["wrapper"]}'
    )
    same = f' (same model and optimizer as {result["same_as"]})' if 'same_as' in result else ''
    return f'{result["status"]:4} {result["config"]} ({result["seconds"]} s): {detail}{same}'


def main(argv: list[str] | None = None) -> int:
    from mmgc.runtime.codebases import MissingCodebaseError

    args = _parser().parse_args(argv)
    try:
        root = zoo_dir(args.codebase)
    except MissingCodebaseError as err:
        print(f'check_zoo.py: {err}', file=sys.stderr)
        return 2
    paths = [str(p) for p in (args.configs or zoo_configs(root))]
    if args.spread:
        paths = _spread(paths)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    layers = tuple(args.layers)
    done: dict[str, dict] = {}
    if args.resume and out.exists():
        done = {r['config']: r for r in map(json.loads, out.read_text().splitlines())}

    def name_of(path: str) -> str:
        return str(Path(path).relative_to(root)) if path.startswith(str(root)) else path

    results = [done[name_of(p)] for p in paths if name_of(p) in done]
    todo = [p for p in paths if name_of(p) not in done]
    same_as = _same_builds(todo)
    checked = _checked(
        [p for i, p in enumerate(todo) if i not in same_as],
        args.workers,
        args.tasks_per_process,
        layers,
        args.variant,
    )
    with out.open('a' if args.resume else 'w') as sink:
        outcome: dict[int, dict] = {}
        for i, path in enumerate(todo):
            if i in same_as:
                result = dict(outcome[same_as[i]], seconds=0.0)
                result['same_as'] = name_of(todo[same_as[i]])
            else:
                result = next(checked)
                outcome[i] = dict(result)
            result['config'] = name_of(path)
            results.append(result)
            sink.write(json.dumps(result) + '\n')
            sink.flush()
            print(_progress_line(result), flush=True)
    return _summary(results, layers, args.variant)


if __name__ == '__main__':
    sys.exit(main())
