"""GC under the distributed strategies MMEngine offers: works on whole output
units, or refuses in one sentence (mmgc.engine.optimizers.coverage).

The distributed runs are real: ``tests/data/gc_strategy_worker.py`` in 1 or 2
gloo processes on the CPU (DDP, torch's and MMEngine's ZeroRedundancyOptimizer,
torch FSDP2, MMEngine's FSDP1 wrapper, DeepSpeed where it is installed), each
rank's weights checked against a float64 single-process reference
(``tests/reference.py``) fed the ranks' averaged gradients.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import uuid

import pytest
import torch
from mmengine.logging import MMLogger
from torch import nn

from mmgc.engine.optimizers import SGDGC, attach_gc_hooks
from mmgc.engine.optimizers.coverage import (
    GCCoverageError,
    gc_coverage,
    gc_local_optimizer,
    install_gc_coverage_check,
    require_gc_coverage,
)
from mmgc.engine.optimizers.strategies import check_gc_runner_strategy, check_gc_strategy
from tests.conftest import ROOT, ExitProbe, excerpt
from tests.data import gc_strategy_worker as worker
from tests.reference import ReferenceAdamGC, ReferenceSGDGC

WORKER = ROOT / 'tests' / 'data' / 'gc_strategy_worker.py'
LAUNCH_TIMEOUT_S = 180
HAS_FSDP2 = worker.fully_shard_fn() is not None
HAS_DEEPSPEED = importlib.util.find_spec('deepspeed') is not None
needs_fsdp2 = pytest.mark.skipif(not HAS_FSDP2, reason='this torch has no FSDP2 (fully_shard)')

#: Cases of the 2-process run: strategy-optimizer.
SGD_CASES = [
    'ddp-sgdgc',
    'ddpview-sgdgc',
    'torchzero-sgdgc',
    'torchzero-sgdgc_bucket',
    'mmzero-sgd',
]
ADAM_CASES = ['ddp-adam', 'ddpview-adam', 'mmzero-adam', 'mmzero-adamw']
FSDP2_CASES = ['fsdp2-sgdgc_foreach', 'fsdp2-adam']
#: SGDGC's default step on DTensors (once a segfault of mmgc's CPU kernel): run last.
FSDP2_DEFAULT = 'fsdp2-sgdgc'


def launch(
    tools, out_dir, world_size: int, cases: list[str], env: dict[str, str]
) -> tuple[list[int], str]:
    """Run the worker in ``world_size`` processes (with ``env`` too); return their
    exit codes and output. One process dying (a segfault) ends the others, so a
    test fails instead of hanging; so does :data:`LAUNCH_TIMEOUT_S`."""
    port = str(tools.free_port())
    procs, logs = [], [out_dir / f'rank{rank}.log' for rank in range(world_size)]
    files = [log.open('w') for log in logs]  # files: a pipe could fill up and block
    for rank in range(world_size):
        rank_env = tools.env(
            **env,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            MASTER_ADDR='127.0.0.1',
            MASTER_PORT=port,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(out_dir), *cases],
                cwd=ROOT,
                env=rank_env,
                stdout=files[rank],
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while any(p.poll() is None for p in procs):
        failed = any(p.returncode not in (None, 0) for p in procs)
        if failed or time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    codes = [p.wait() for p in procs]
    for file in files:
        file.close()
    outputs = [excerpt(log.read_text()) for log in logs]
    return codes, '\n'.join(f'--- rank {r}\n{out}' for r, out in enumerate(outputs))


class Launch:
    """A finished launch: exit codes, output, and each rank's saved results."""

    def __init__(self, tools, out_dir, world_size: int, cases: list[str]) -> None:
        self.out_dir, self.world_size, self.cases = out_dir, world_size, cases
        self.exit_probe = ExitProbe(tools, out_dir / 'exit_probe')
        env = self.exit_probe.env()
        self.codes, self.output = launch(tools, out_dir, world_size, cases, env)

    def log(self, rank: int) -> str:
        return (self.out_dir / f'rank{rank}.log').read_text()

    def results(self, case: str) -> list[dict]:
        paths = [self.out_dir / f'{case}_rank{r}.pt' for r in range(self.world_size)]
        if not all(p.exists() for p in paths):
            pytest.fail(f'{case}: no results (exit codes {self.codes})\n{self.output}')
        return [torch.load(p, weights_only=False) for p in paths]


@pytest.fixture(scope='module')
def two_ranks(tools, tmp_path_factory) -> Launch:
    fsdp2 = [*FSDP2_CASES, FSDP2_DEFAULT] if HAS_FSDP2 else []
    cases = [*SGD_CASES, *ADAM_CASES, 'fsdp1', *fsdp2]  # the default last: a crash loses only it
    return Launch(tools, tmp_path_factory.mktemp('two_ranks'), 2, cases)


@pytest.fixture(scope='module')
def one_rank(tools, tmp_path_factory) -> Launch:
    cases = [*FSDP2_CASES, FSDP2_DEFAULT]  # the default last: a crash loses only it
    return Launch(tools, tmp_path_factory.mktemp('one_rank'), 1, cases)


def reference_weights(case: str, world_size: int) -> list[torch.Tensor]:
    """The case's weights after :data:`worker.STEPS` steps in one float64
    process, each step on the ranks' gradients averaged (what DDP, ZeRO's
    DDP and FSDP2's reduce-scatter hand the optimizer)."""
    model = worker.build_model().double()  # the same initial values, in float64
    params = list(model.parameters())
    optim = case.partition('-')[2]
    if optim.startswith('sgd'):
        ref = ReferenceSGDGC(params, worker.OUT_DIMS, **worker.SGD_OPTIONS)
    else:
        ref = ReferenceAdamGC(
            params, worker.OUT_DIMS, decoupled=optim == 'adamw', **worker.ADAM_OPTIONS
        )
    for step in range(worker.STEPS):
        with torch.no_grad():
            for p, w in zip(params, ref.weights):
                p.copy_(w)
        grads = [torch.zeros_like(p) for p in params]
        for rank in range(world_size):
            x, y = (t.double() for t in worker.batch(rank, step))
            for total, g in zip(grads, torch.autograd.grad(worker.loss_fn(model, x, y), params)):
                total += g / world_size
        ref.step(grads)
    return ref.weights


def unit_sums(weight: torch.Tensor, out_dim: int) -> torch.Tensor:
    """Each output unit's weight sum (the paper's e^T w, Eq. 3)."""
    return weight.double().movedim(out_dim, 0).reshape(weight.shape[out_dim], -1).sum(1)


def check_against_reference(case: str, results: list[dict]) -> None:
    expected = reference_weights(case, len(results))
    for rank, result in enumerate(results):
        for i, (got, want) in enumerate(zip(result['final'], expected)):
            where = f'rank {rank}, parameter {i}'
            torch.testing.assert_close(
                got.double(), want, rtol=1e-5, atol=1e-6, msg=lambda m, w=where: f'{w}: {m}'
            )
            torch.testing.assert_close(got, results[0]['final'][i], rtol=0, atol=0)
    if case.partition('-')[2].startswith('sgd'):  # Eq. 3 holds for SGD-type updates
        for i, out_dim in enumerate(worker.OUT_DIMS):
            if out_dim is not None:
                before, after = results[0]['initial'][i], results[0]['final'][i]
                assert not torch.equal(before, after)
                torch.testing.assert_close(
                    unit_sums(after, out_dim), unit_sums(before, out_dim), rtol=0, atol=1e-6
                )


def expected_coverage() -> tuple[int, int, int, int]:
    params = list(worker.build_model().parameters())
    gc = [p for p, d in zip(params, worker.OUT_DIMS) if d is not None]
    return len(gc), sum(p.numel() for p in gc), len(params), sum(p.numel() for p in params)


@pytest.mark.parametrize('case', SGD_CASES + ADAM_CASES)
def test_ddp_and_zero_match_the_single_process_reference(two_ranks, case):
    results = two_ranks.results(case)
    check_against_reference(case, results)
    for result in results:  # the wrapper's groups: all tensors, on every rank
        assert result['coverage'] == expected_coverage()
    if 'zero' in case:  # each rank's local optimizer holds its share, whole
        assert sum(r['local_coverage'][0] for r in results) == expected_coverage()[0]
        assert sum(r['local_coverage'][2] for r in results) == expected_coverage()[2]
        local = {'torchzero': 'SGDGC', 'mmzero-sgd': 'SGD', 'mmzero-adam': 'Adam'}
        local['mmzero-adamw'] = 'AdamW'
        want = local['torchzero' if 'torchzero' in case else case]
        assert {r['optimizer'] for r in results} == {want}
    for result in results:  # the hooks put the decay back, in both optimizers' groups
        decay = worker.SGD_OPTIONS['weight_decay']
        assert result['decays'] == [[decay] * 3] * 2
    if 'mmzero' in case:  # hooks on the wrapper would not know AdamW's decay: refused
        assert all(
            r['wrapper_hooks'].startswith(
                'ConfigError: cannot apply gradient centralization to ZeroRedundancyOptimizer'
            )
            for r in results
        ), [r['wrapper_hooks'] for r in results]


@needs_fsdp2
@pytest.mark.parametrize('world_size', [1, 2])
@pytest.mark.parametrize('case', [*FSDP2_CASES, FSDP2_DEFAULT])
def test_fsdp2_matches_the_single_process_reference(two_ranks, one_rank, case, world_size):
    """DTensors sharded on dim 0, unevenly on 2 ranks (3, 3 and 5 rows): the
    ConvTranspose2d's output units (dim 1) span both ranks, and its mean must
    still be over the whole unit. SGDGC's default step (FSDP2_DEFAULT): mmgc's
    CPU kernel must not be handed DTensors (it crashed the process with a
    segmentation fault, exit -11)."""
    launch_ = one_rank if world_size == 1 else two_ranks
    assert -11 not in launch_.codes, f'segmentation fault\n{launch_.output}'
    results = launch_.results(case)
    if world_size == 2:  # each rank holds its rows of dim 0 only
        assert [r['local_shapes'][2] for r in results] == [(2, 4, 2, 2), (1, 4, 2, 2)]
    check_against_reference(case, results)
    for result in results:
        assert result['coverage'] == expected_coverage()


def test_two_rank_run_exits_cleanly_and_logs_coverage_once_per_run(two_ranks):
    assert two_ranks.codes == [0, 0], two_ranks.output
    two_ranks.exit_probe.assert_ended(WORKER.name, ranks=2)  # no live group at exit
    trained = [case for case in two_ranks.cases if case != 'fsdp1']
    lines = [line for line in two_ranks.log(0).splitlines() if 'mmgc: gradient' in line]
    assert len(lines) == len(trained), lines  # rank 0 logs; MMEngine quiets the others
    for case, line in zip(trained, lines):
        assert ' 3 of 6 tensors (1,382 of 1,394 params; grad 3 / 1,382)' in line, line
        if 'zero' in case:  # the wrapper logs for all ranks, its local optimizer not
            assert line.endswith(
                'that ZeroRedundancyOptimizer holds at its first step (all ranks; each '
                'updates its share)'
            ), line


def fsdp1_results(two_ranks) -> list[dict]:
    results = two_ranks.results('fsdp1')
    if 'unavailable' in results[0]:
        pytest.skip(f'torch FSDP1 does not build on the CPU here: {results[0]["unavailable"]}')
    return results


def test_fsdp1_is_refused(two_ranks):
    """MMEngine's FSDP1 wrapper on a CPU device, 2 ranks: the optimizer holds
    1-D shards (with or without use_orig_params), and check_gc_strategy
    refuses the model by type."""
    for result in fsdp1_results(two_ranks):
        for use_orig_params in (False, True):
            entry = result[use_orig_params]
            assert all(len(shape) == 1 for shape in entry['shapes']), entry['shapes']
            assert entry['coverage'][0] == 0
            assert entry['refusal'].startswith(
                'ConfigError: gradient centralization cannot run under torch FSDP1 '
                '(MMFullyShardedDataParallel at the top of the model; '
            ), entry['refusal']
            assert entry['refusal'].endswith('and under torch FSDP2 (fully_shard)')


def test_fsdp1_first_step_stops_the_run(two_ranks):
    """Without check_gc_strategy, SGDGC on FSDP1's parameters stops at its
    first step (FSDP1 marks the tensors it flattened)."""
    results = fsdp1_results(two_ranks)
    if results[0]['trains'] is not True:
        pytest.skip(f'torch FSDP1 does not train on the CPU here: {results[0]["trains"]}')
    for rank, result in enumerate(results):
        for use_orig_params in (False, True):
            message = result[use_orig_params]['first_step']
            assert message.startswith(
                "GCCoverageError: SGDGC holds torch FSDP1's flattened parameters "
                "(FullyShardedDataParallel, MMEngine's FSDPStrategy), in which no output unit "
                'can be centralized, so gradient centralization would do nothing; GC runs under'
            ), (rank, use_orig_params, message)


@pytest.mark.skipif(not HAS_DEEPSPEED, reason='DeepSpeed is not installed')
def test_deepspeed_zero_stops_at_the_first_step(tools, tmp_path):
    """Real DeepSpeed ZeRO-1 and ZeRO-2 (CPU accelerator, 2 gloo ranks), SGDGC
    and Adam with mmgc's hooks: the first step stops the run in one sentence."""
    run = Launch(tools, tmp_path, 2, ['deepspeed'])
    assert run.codes == [0, 0], run.output
    for result in run.results('deepspeed'):
        assert set(result) == {(1, 'SGDGC'), (1, 'Adam'), (2, 'SGDGC'), (2, 'Adam')}
        for (_, name), entry in result.items():
            assert entry['inner'], 'DeepSpeed stepped another optimizer than the one built'
            assert all(len(g) == 1 and len(g[0]) == 1 for g in entry['held']), entry['held']
            assert entry['first_step'].startswith(
                f'GCCoverageError: {name} was built with 3 weights to centralize'
            ), entry['first_step']
            assert 'DeepSpeed ZeRO-1/2' in entry['first_step']
            assert entry['refusal'].startswith(
                'ConfigError: gradient centralization cannot run under DeepSpeed'
            ), entry['refusal']


# --- in one process -------------------------------------------------------


def deepspeed_flatten_(optimizer: torch.optim.Optimizer, world_size: int, rank: int) -> None:
    """Do to ``optimizer`` what DeepSpeed ZeRO-1/2 do (``stage_1_and_2.py``,
    ``DeepSpeedZeroOptimizer.__init__``): flatten each group's trainable
    tensors into one buffer padded to an alignment, split it into
    ``world_size`` near-equal partitions, and replace the group's ``params``
    by this rank's partition, an fp32 copy with ``requires_grad=True``; the
    gradient of that partition is a flat tensor too."""
    alignment = 2 * world_size
    for group in optimizer.param_groups:
        tensors = [p.detach().reshape(-1) for p in group['params'] if p.requires_grad]
        flat = torch.cat(tensors)
        flat = torch.cat([flat, flat.new_zeros(-flat.numel() % alignment)])
        base, remaining = divmod(flat.numel(), world_size)
        sizes = [base + (r < remaining) for r in range(world_size)]
        start = sum(sizes[:rank])
        partition = flat.narrow(0, start, sizes[rank]).clone().to(torch.float32)
        partition.requires_grad = True
        partition.grad = torch.randn_like(partition)
        group['params'] = [partition]


def gc_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    """SGDGC, or Adam with mmgc's step hooks, on :func:`worker.param_groups`."""
    if kind == 'SGDGC':
        return SGDGC(worker.param_groups(model), **worker.SGD_OPTIONS)
    optimizer = torch.optim.Adam(worker.param_groups(model), **worker.ADAM_OPTIONS)
    attach_gc_hooks(optimizer)
    return optimizer


@pytest.mark.parametrize('rank', [0, 1])
@pytest.mark.parametrize('kind', ['SGDGC', 'Adam-hooks'])
def test_first_step_stops_on_deepspeed_flattened_groups(kind, rank):
    optimizer = gc_optimizer(kind, worker.build_model())
    install_gc_coverage_check(optimizer)
    deepspeed_flatten_(optimizer, world_size=2, rank=rank)
    before = [p.detach().clone() for g in optimizer.param_groups for p in g['params']]
    name = type(optimizer).__name__
    with pytest.raises(
        GCCoverageError,
        match=rf'^{name} was built with 3 weights to centralize \(1,382 params\), but at its '
        r'first step it holds one flat 1-D tensor per parameter group \(3 groups\), as '
        r'DeepSpeed ZeRO-1/2 .*; GC runs under DDP .* torch FSDP2 \(fully_shard\)$',
    ):
        optimizer.step()
    after = [p.detach() for g in optimizer.param_groups for p in g['params']]
    for b, a in zip(before, after):  # stopped before anything moved
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(GCCoverageError):  # and again: it never goes quiet
        optimizer.step()


@pytest.fixture
def log_file(tmp_path):
    """A fresh current MMEngine logger writing to a file; returns the path."""
    path = tmp_path / 'log.txt'
    MMLogger.get_instance(f'test_strategies_{uuid.uuid4().hex}', log_file=str(path))
    return path


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    worker.loss_fn(model, *worker.batch(0, 0)).backward()
    optimizer.step()


@pytest.mark.parametrize('kind', ['SGDGC', 'Adam-hooks'])
def test_first_step_logs_coverage_once(kind, log_file):
    model = worker.build_model()
    optimizer = gc_optimizer(kind, model)
    handle = install_gc_coverage_check(optimizer)
    assert install_gc_coverage_check(optimizer) is handle  # SGDGC, hooks, constructor: once
    for _ in range(3):
        _step(model, optimizer)
    lines = [line for line in log_file.read_text().splitlines() if 'mmgc: gradient' in line]
    name = type(optimizer).__name__
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        f'mmgc: gradient centralization on 3 of 6 tensors (1,382 of 1,394 params; grad 3 / '
        f'1,382) that {name} holds at its first step'
    ), lines[0]


def test_first_step_warns_when_fewer_tensors_remain(log_file):
    model = worker.build_model()
    optimizer = SGDGC(worker.param_groups(model), **worker.SGD_OPTIONS)
    install_gc_coverage_check(optimizer)
    optimizer.param_groups[1]['params'] = [model[1].weight.detach().reshape(-1).requires_grad_()]
    _step(model, optimizer)
    text = log_file.read_text()
    assert 'WARNING' in text and '2 of 6 tensors' in text
    assert '(it was built with 3 to centralize)' in text


def test_first_step_stops_an_optimizer_that_applies_no_gc():
    model = worker.build_model()
    optimizer = torch.optim.SGD(worker.param_groups(model), lr=0.1)  # no hooks
    install_gc_coverage_check(optimizer)
    with pytest.raises(
        GCCoverageError,
        match=r'^SGD holds 3 weights to centralize, but its step applies no gradient '
        r"centralization \(its local optimizer SGD is neither SGDGC nor given mmgc's step "
        r'hooks\); use optimizer_class=SGDGC, or attach_gc_hooks\(gc_local_optimizer',
    ):
        _step(model, optimizer)


def test_gc_coverage_counts_what_the_step_centralizes():
    model = worker.build_model()
    want = expected_coverage()
    sgdgc = SGDGC(worker.param_groups(model), lr=0.1)
    assert tuple(gc_coverage(sgdgc)[:4]) == want
    assert gc_coverage(sgdgc).by_variant == {'grad': want[:2]}
    adam = torch.optim.Adam(worker.param_groups(model))
    assert tuple(gc_coverage(adam)[:4]) == (0, 0, *want[2:])  # no hooks: no GC
    attach_gc_hooks(adam)
    assert tuple(gc_coverage(adam)[:4]) == want
    groups = worker.param_groups(model)
    groups[1].update(gc=False)  # the deconv off
    groups[0]['gc_variant'] = 'update'
    coverage = gc_coverage(SGDGC(groups, lr=0.1))
    conv, fc = model[0].weight.numel(), model[3].weight.numel()
    assert (coverage.tensors, coverage.params) == (2, conv + fc)
    assert coverage.by_variant == {'update': (2, conv + fc)}
    assert gc_local_optimizer(sgdgc) is sgdgc


def test_require_gc_coverage():
    model = worker.build_model()
    plain = torch.optim.SGD(worker.param_groups(model), lr=0.1)
    with pytest.raises(
        GCCoverageError,
        match=r'^GCOptimWrapperConstructor chose 3 weights for gradient centralization, but '
        r'the SGD it built centralizes none of them .*attach_gc_hooks\(gc_local_optimizer',
    ):
        require_gc_coverage(plain, 3, 'GCOptimWrapperConstructor')
    assert require_gc_coverage(plain, 0, 'x').tensors == 0  # nothing chosen, nothing asked
    assert require_gc_coverage(SGDGC(model.parameters()), 3, 'x').tensors == 3


ZERO = 'ZeroRedundancyOptimizer'


@pytest.mark.parametrize(
    'cfg, match',
    [
        (
            dict(type=ZERO, optimizer_type='SGDGC'),
            r"^MMEngine's ZeroRedundancyOptimizer looks optimizer_type up in torch.optim, so "
            r"optimizer_type='SGDGC' cannot work; use optimizer_type='SGD', which gets "
            r"gradient centralization through mmgc's step hooks, or SGDGC under plain DDP$",
        ),
        (dict(type=ZERO, optimizer_type='SGD_GC'), r"optimizer_type='SGD_GC' cannot work"),
        (
            dict(type=ZERO, optimizer_type='LBFGS'),
            r'^ZeroRedundancyOptimizer needs a local optimizer that can apply gradient '
            r"centralization; got 'LBFGS' \(torch.optim\), valid: \['ASGD', .*'SGD'\]$",
        ),
        (dict(type=ZERO, optimizer_type='Nope'), r"got 'Nope' \(torch.optim\)"),
        (
            dict(type=ZERO, optimizer_type='SGD', overlap_with_ddp=True),
            r'^ZeroRedundancyOptimizer with overlap_with_ddp=True steps a functional '
            r'optimizer .*; set overlap_with_ddp=False \(the default\)$',
        ),
        (
            dict(
                type=torch.distributed.optim.ZeroRedundancyOptimizer,
                optimizer_class=torch.optim.LBFGS,
            ),
            r"got <class 'torch.optim.lbfgs.LBFGS'> \(optimizer_class\), valid: .* or SGDGC",
        ),
    ],
)
def test_check_gc_strategy_refuses(cfg, match):
    with pytest.raises(ValueError, match=match):
        check_gc_strategy(worker.build_model(), cfg)


@pytest.mark.parametrize(
    'cfg, local',
    [
        (None, None),
        (dict(type='SGDGC', lr=0.1), None),
        (dict(type='AdamW'), None),
        (dict(type=ZERO, optimizer_type='SGD'), torch.optim.SGD),
        (dict(type=ZERO, optimizer_type='AdamW'), torch.optim.AdamW),
        (dict(type=torch.distributed.optim.ZeroRedundancyOptimizer, optimizer_class=SGDGC), SGDGC),
    ],
)
def test_check_gc_strategy_accepts(cfg, local):
    model = nn.Sequential(worker.build_model())  # a plain model, however nested
    assert check_gc_strategy(model, cfg) is local
    assert check_gc_strategy(None, cfg) is local  # the config alone


@pytest.mark.parametrize(
    'strategy, what',
    [
        ('DeepSpeedStrategy', 'DeepSpeed ZeRO, one flat 1-D partition per parameter group'),
        (dict(type='FSDPStrategy', model_wrapper=None), 'torch FSDP1, flat 1-D parameters'),
    ],
)
def test_check_gc_runner_strategy_refuses(strategy, what):
    name = strategy if isinstance(strategy, str) else strategy['type']
    with pytest.raises(
        ValueError,
        match=rf"^gradient centralization cannot run under strategy '{name}' \({what}, in "
        r'which no output unit can be found\); GC runs under DDP .* FSDP2 \(fully_shard\) '
        r"\(strategy='DDPStrategy', or Runner's default\)$",
    ):
        check_gc_runner_strategy(strategy)


@pytest.mark.parametrize('strategy', [None, 'DDPStrategy', dict(type='DDPStrategy')])
def test_check_gc_runner_strategy_accepts(strategy):
    assert check_gc_runner_strategy(strategy) is None


def test_gc_switched_off_after_building_is_not_taken_for_flattening():
    """A user (or bench_step.py's 'GC off' row) may set gc=False in every group
    after building SGDGC: nothing is flattened, so the first step runs."""
    model = torch.nn.Conv2d(2, 3, 3)
    optimizer = SGDGC(model.parameters(), lr=0.1, momentum=0.9)
    for group in optimizer.param_groups:
        group['gc'] = False
    model(torch.randn(1, 2, 5, 5)).sum().backward()
    optimizer.step()
