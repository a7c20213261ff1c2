"""Test helper: one rank of a GC run under a distributed strategy (gloo, CPU).

Run as ``python gc_strategy_worker.py OUT_DIR CASE [CASE ...]`` in each of
``WORLD_SIZE`` processes with ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
set, as torchrun sets them. For each case it builds :func:`build_model`
(seed 0), wraps it in the case's strategy, trains :data:`STEPS` steps on
:func:`batch` (different data per rank) and saves, per rank,
``OUT_DIR/<case>_rank<r>.pt``: the initial and final full weights (a
DTensor gathered), the optimizer's ``gc_coverage`` before the first step and
the local optimizer's after it. ``tests/engine/optimizers/test_strategies.py``
checks them against a single-process float64 reference.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from mmgc.runtime.distributed import ends_process_group

STEPS = 3
SGD_OPTIONS = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
ADAM_OPTIONS = dict(lr=1e-2, weight_decay=1e-2)
#: The output-unit dim of each parameter of :func:`build_model`, in order
#: (None: 1-D, never centralized). The ConvTranspose2d's units are dim 1.
OUT_DIMS = (0, None, 1, None, 0, None)


def build_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Conv2d (3 units), ConvTranspose2d (3 inputs, 4 units on dim 1), Linear
    (5 units): dim 0 has 3, 3 and 5 rows, which 2 ranks split unevenly."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ConvTranspose2d(3, 4, 2, stride=2),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 5),
    )
    return model.to(dtype)


def batch(rank: int, step: int, dtype: torch.dtype = torch.float32):
    """Inputs and targets of ``rank`` at ``step`` (seeded by both)."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(2, 2, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x) - y).square().mean()


def param_groups(model: nn.Module) -> list[dict]:
    """Weights by output-unit dim, biases in a ``gc=False`` group."""
    conv, deconv, _, fc = model
    return [
        dict(params=[conv.weight, fc.weight], gc=True, gc_dim=0),
        dict(params=[deconv.weight], gc=True, gc_dim=1),
        dict(params=[conv.bias, deconv.bias, fc.bias], gc=False),
    ]


def fully_shard_fn():
    """torch's FSDP2 ``fully_shard`` (public from torch 2.6, composable before), or None."""
    try:
        from torch.distributed.fsdp import fully_shard

        return fully_shard
    except ImportError:
        pass
    try:
        from torch.distributed._composable.fsdp import fully_shard

        return fully_shard
    except ImportError:
        return None


def _build(case: str, model: nn.Module, world_size: int, notes: dict):
    """(module to train, optimizer) for ``case``; what else is learnt goes to ``notes``."""
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import ZeroRedundancyOptimizer as MMEngineZeRO
    from torch.distributed.optim import ZeroRedundancyOptimizer

    from mmgc.engine.optimizers import SGDGC, attach_gc_hooks
    from mmgc.engine.optimizers.coverage import gc_local_optimizer

    strategy, _, optim = case.partition('-')
    if strategy == 'fsdp2':
        from torch.distributed.device_mesh import init_device_mesh

        fully_shard_fn()(model, mesh=init_device_mesh('cpu', (world_size,)))
        wrapped = model
    else:  # ddpview: DDP's gradients are views into its communication buckets
        view = strategy == 'ddpview'
        wrapped = MMDistributedDataParallel(
            module=model, broadcast_buffers=False, gradient_as_bucket_view=view
        )
    groups = param_groups(model)
    if strategy == 'torchzero':  # torch's ZeRO, SGDGC as the local optimizer
        bucket = optim == 'sgdgc_bucket'
        optimizer = ZeroRedundancyOptimizer(
            groups, optimizer_class=SGDGC, parameters_as_bucket_view=bucket, **SGD_OPTIONS
        )
    elif strategy == 'mmzero':  # MMEngine's ZeRO, a torch optimizer + mmgc's step hooks
        options = SGD_OPTIONS if optim == 'sgd' else ADAM_OPTIONS
        optimizer = MMEngineZeRO(
            groups, optimizer_type={'sgd': 'SGD', 'adam': 'Adam'}.get(optim, 'AdamW'), **options
        )
        attach_gc_hooks(gc_local_optimizer(optimizer))
        # On the wrapper they would see AdamW as a coupled-decay optimizer: refused.
        notes['wrapper_hooks'] = _refusal(lambda: attach_gc_hooks(optimizer))
    elif optim.startswith('sgdgc'):
        foreach = True if optim == 'sgdgc_foreach' else None
        optimizer = SGDGC(groups, foreach=foreach, **SGD_OPTIONS)
    else:
        optimizer = torch.optim.Adam(groups, **ADAM_OPTIONS)
        attach_gc_hooks(optimizer)
    return wrapped, optimizer


def _full(tensor: torch.Tensor) -> torch.Tensor:
    full = tensor.full_tensor() if hasattr(tensor, 'full_tensor') else tensor
    return full.detach().clone()


def _refusal(call) -> str | None:
    """The message of the ValueError / GCCoverageError ``call()`` raises, or None."""
    from mmgc.engine.optimizers.coverage import GCCoverageError

    try:
        call()
    except (ValueError, GCCoverageError) as err:
        return f'{type(err).__name__}: {err}'
    return None


def run_flattening_case(case: str, out_dir: str, rank: int) -> None:
    """FSDP1 (MMEngine's wrapper on a CPU device) or DeepSpeed ZeRO-1/2 with
    SGDGC and Adam + hooks: what the optimizer holds, and what mmgc says."""
    from mmgc.engine.optimizers import SGDGC, attach_gc_hooks
    from mmgc.engine.optimizers.coverage import gc_coverage, install_gc_coverage_check
    from mmgc.engine.optimizers.strategies import check_gc_strategy

    results: dict = {}
    path = os.path.join(out_dir, f'{case}_rank{rank}.pt')
    if case == 'fsdp1':
        from mmengine.model.wrappers import MMFullyShardedDataParallel

        try:  # a probe: FSDP1 on a CPU device needs a recent torch
            probe = MMFullyShardedDataParallel(module=build_model(), device_id=torch.device('cpu'))
        except Exception as err:  # whatever this torch's FSDP1 raises on a CPU
            torch.save(dict(unavailable=f'{type(err).__name__}: {err}'), path)
            dist.barrier()
            return
        try:
            loss_fn(probe, *batch(rank, 0)).backward()
            results['trains'] = True
        except Exception as err:  # torch 2.1: builds on a CPU, cannot train there
            results['trains'] = f'{type(err).__name__}: {err}'
        for use_orig_params in (False, True):
            fsdp = MMFullyShardedDataParallel(
                module=build_model(), device_id=torch.device('cpu'), use_orig_params=use_orig_params
            )
            optimizer = SGDGC(fsdp.parameters(), **SGD_OPTIONS)
            install_gc_coverage_check(optimizer)
            coverage = tuple(gc_coverage(optimizer)[:4])

            def train_step(fsdp=fsdp, optimizer=optimizer):
                loss_fn(fsdp, *batch(rank, 0)).backward()
                optimizer.step()

            results[use_orig_params] = dict(
                refusal=_refusal(lambda fsdp=fsdp: check_gc_strategy(fsdp, dict(type='SGDGC'))),
                shapes=[tuple(p.shape) for p in fsdp.parameters()],
                coverage=coverage,
                first_step=_refusal(train_step) if results['trains'] is True else None,
            )
    else:  # deepspeed
        import deepspeed

        for stage in (1, 2):
            for name in ('SGDGC', 'Adam'):
                model = build_model()
                if name == 'SGDGC':
                    optimizer = SGDGC(param_groups(model), **SGD_OPTIONS)
                else:
                    optimizer = torch.optim.Adam(param_groups(model), **ADAM_OPTIONS)
                    attach_gc_hooks(optimizer)
                install_gc_coverage_check(optimizer)
                config = dict(
                    train_batch_size=2 * dist.get_world_size(),
                    train_micro_batch_size_per_gpu=2,
                    zero_optimization=dict(stage=stage),
                    zero_allow_untested_optimizer=True,
                )
                engine, ds_optimizer, *_ = deepspeed.initialize(
                    model=model, optimizer=optimizer, config=config
                )

                def train_step(engine=engine):
                    engine.backward(loss_fn(engine, *batch(rank, 0)))
                    engine.step()

                results[(stage, name)] = dict(
                    held=[[tuple(p.shape) for p in g['params']] for g in optimizer.param_groups],
                    inner=ds_optimizer.optimizer is optimizer,
                    first_step=_refusal(train_step),
                    refusal=_refusal(lambda e=engine, n=name: check_gc_strategy(e, dict(type=n))),
                )
    torch.save(results, path)
    dist.barrier()


def run_case(case: str, out_dir: str, rank: int, world_size: int) -> None:
    from mmgc.engine.optimizers.coverage import (
        gc_coverage,
        gc_local_optimizer,
        install_gc_coverage_check,
    )

    if case in ('fsdp1', 'deepspeed'):
        run_flattening_case(case, out_dir, rank)
        return
    model = build_model()
    initial = [p.detach().clone() for p in model.parameters()]
    notes = {}
    wrapped, optimizer = _build(case, model, world_size, notes)
    install_gc_coverage_check(gc_local_optimizer(optimizer))  # as SGDGC and the hooks do
    install_gc_coverage_check(optimizer)  # as the constructor does (ZeRO: the wrapper)
    before = gc_coverage(optimizer)
    for step in range(STEPS):
        optimizer.zero_grad()
        loss_fn(wrapped, *batch(rank, step)).backward()
        optimizer.step()
    local = gc_coverage(gc_local_optimizer(optimizer))
    torch.save(
        dict(
            initial=initial,
            final=[_full(p) for p in model.parameters()],
            local_shapes=[
                tuple((p.to_local() if hasattr(p, 'to_local') else p).shape)
                for p in model.parameters()
            ],
            coverage=tuple(before[:4]),
            local_coverage=tuple(local[:4]),
            optimizer=type(gc_local_optimizer(optimizer)).__name__,
            wrapper_hooks=notes.get('wrapper_hooks'),
            decays=[
                [g['weight_decay'] for g in o.param_groups]
                for o in (optimizer, gc_local_optimizer(optimizer))
            ],
        ),
        os.path.join(out_dir, f'{case}_rank{rank}.pt'),
    )
    dist.barrier()


@ends_process_group  # a process that starts a group ends it, even when a case fails
def main() -> None:
    out_dir, cases = sys.argv[1], sys.argv[2:]
    dist.init_process_group('gloo')
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    for case in cases:
        run_case(case, out_dir, rank, world_size)
        print(f'rank {rank}: {case} done', flush=True)


if __name__ == '__main__':
    main()
