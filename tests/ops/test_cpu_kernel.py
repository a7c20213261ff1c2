"""The fused CPU kernel (mmgc.ops.cpu_kernel) and SGDGC's default path that
uses it, against the independent float64 reference on random shapes; its
build, cache and fallback; and its guard: it takes only plain dense tensors,
so a DTensor (what torch's FSDP2 makes of parameters) goes the generic way,
and the step equals the plain-tensor one."""

import logging

import pytest
import torch
import torch.distributed as dist
from mmengine.logging import MMLogger
from torch import nn
from torch.testing import assert_close

from mmgc import SGDGC
from mmgc.ops import cpu_kernel
from mmgc.ops.cpu_kernel import cpu_kernel_build, cpu_kernel_supports, fused_sgd_gc_cpu_
from mmgc.runtime.distributed import end_process_group
from tests.conftest import hyper_id
from tests.reference import ReferenceSGDGC, ReferenceSGDWGC

HYPER = [
    dict(momentum=0.0, weight_decay=0.0),
    dict(momentum=0.0, weight_decay=1e-2, maximize=True),
    dict(momentum=0.9, weight_decay=1e-2),
    dict(momentum=0.9, weight_decay=1e-2, nesterov=True),
    dict(momentum=0.9, dampening=0.3, weight_decay=1e-3),
    dict(momentum=0.5, weight_decay=1e-2, maximize=True, nesterov=True),
]
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}
#: The kernel's options that HYPER leaves at torch's defaults.
OFF = dict(dampening=0.0, nesterov=False, maximize=False)


@pytest.fixture
def kernel():
    build = cpu_kernel_build()
    if build.library is None:
        pytest.skip(f'the CPU kernel cannot be built here: {build.error}')
    return build.library


@pytest.fixture
def fresh_kernel_state(monkeypatch):
    """Forget the loaded kernel before and after (environment restored)."""
    cpu_kernel._reset_for_tests()
    yield monkeypatch
    monkeypatch.undo()
    cpu_kernel._reset_for_tests()


def _random_case(seed, dtype):
    """Random shapes and output dims, covering the kernel's corner cases."""
    g = torch.Generator().manual_seed(seed)

    def r(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    cases = [
        ((r(1, 9), r(1, 9)), 0),  # Linear
        ((r(1, 6), r(1, 5), r(1, 4), r(1, 4)), 0),  # Conv2d
        ((r(1, 5), r(1, 6), r(1, 3), r(1, 3)), 1),  # ConvTranspose2d
        ((r(1, 4), r(1, 4), r(1, 3), r(1, 3), r(1, 3)), 2),  # a middle dim
        ((r(2, 5), r(2, 5), r(2, 4)), -1),  # the last dim
        ((r(1, 8), 1, 1, 1), 0),  # one input per unit: never moves
        ((r(2, 3), 700), 0),  # long units
        ((1500, r(2, 30)), 0),  # many units per work item, several items
        ((r(1, 50),), None),  # a bias
        ((40000,), None),  # a long uncentralized vector: several chunks
        ((r(2, 6), r(2, 6)), None),  # a weight with GC off
        ((0, 3, 3, 3), 0),  # empty
        ((4, 0), 0),  # empty units
    ]
    weights = [torch.randn(s, generator=g, dtype=dtype) for s, _ in cases]
    dims = [d for _, d in cases]
    grads = [[torch.randn(s, generator=g, dtype=dtype) for s, _ in cases] for _ in range(3)]
    return weights, dims, grads


@pytest.mark.parametrize('decoupled', [False, True], ids=['l2', 'decoupled'])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize('hyper', HYPER, ids=hyper_id)
def test_kernel_matches_reference(kernel, hyper, dtype, decoupled):
    weights, dims, grads = _random_case(seed=len(hyper_id(hyper)), dtype=dtype)
    reference = ReferenceSGDWGC if decoupled else ReferenceSGDGC
    ref = reference(weights, dims, lr=0.1, **hyper)
    buffers = [None] * len(weights)
    options = dict(OFF, **hyper, decoupled_weight_decay=decoupled)
    for step_grads in grads:
        fused_sgd_gc_cpu_(weights, step_grads, buffers, dims, lr=0.1, **options)
        ref.step(step_grads)
    for w, expected in zip(weights, ref.weights):
        assert_close(w.double(), expected, **TOL[dtype])
    # units with a single input have a zero centralized gradient: bitwise
    # still (decoupled decay shrinks them: assert_close above)
    if not decoupled:
        assert torch.equal(weights[5].double(), ref.weights[5])
    if hyper['momentum']:
        assert all(b is not None and b.shape == w.shape for b, w in zip(buffers, weights))
    else:
        assert buffers == [None] * len(weights)


@pytest.mark.parametrize('hyper', [HYPER[0], HYPER[3], HYPER[5]], ids=hyper_id)
def test_default_path_uses_kernel_and_matches_reference(kernel, hyper):
    """SGDGC() with foreach/fused unset runs the kernel on centralized
    tensors (bitwise its result) and torch's SGD on the others."""
    weights, dims, grads = _random_case(seed=7, dtype=torch.float32)
    ref = ReferenceSGDGC(weights, dims, lr=0.05, **hyper)
    params = [nn.Parameter(w.clone()) for w in weights]
    twins = [w.clone() for w in weights]
    groups = [dict(params=[p], gc=d is not None, gc_dim=d or 0) for p, d in zip(params, dims)]
    opt = SGDGC(groups, lr=0.05, **hyper)
    buffers = [None] * len(twins)
    options = {**OFF, **hyper}
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
        fused_sgd_gc_cpu_(twins, step_grads, buffers, dims, lr=0.05, **options)
        ref.step(step_grads)
        for p, g in zip(params, step_grads):
            assert torch.equal(p.grad, g)  # gradients are left as they were
    for p, twin, dim, expected in zip(params, twins, dims, ref.weights):
        if dim is not None and p.dim() > 1:  # centralized: the kernel, bitwise
            assert torch.equal(p.detach(), twin)
        assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


def test_unsupported_tensors_take_the_torch_path(kernel):
    """Half precision, a non-contiguous gradient and a channels-last weight
    mixed with kernel tensors: every tensor still gets the reference update."""
    torch.manual_seed(0)
    shapes = [(6, 4, 3, 3), (5, 7), (8, 3, 2, 2), (6, 4, 3, 3)]
    weights = [torch.randn(s) for s in shapes]
    params = [nn.Parameter(w.clone()) for w in weights]
    params[1] = nn.Parameter(weights[1].to(torch.bfloat16))
    params[2] = nn.Parameter(weights[2].to(memory_format=torch.channels_last))
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    opt = SGDGC(params, **hyper)
    ref = ReferenceSGDGC([p.detach() for p in params], [0] * 4, **hyper)
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        grads = [torch.randn(s, generator=gen) for s in shapes]
        grads[1] = grads[1].to(torch.bfloat16)
        for i, p in enumerate(params):
            p.grad = grads[i].clone()
        strided = torch.empty((2 * shapes[3][0], *shapes[3][1:]))[::2]
        params[3].grad = strided.copy_(grads[3])  # not contiguous
        opt.step()
        ref.step(grads)
    assert not params[3].grad.is_contiguous()
    for i, (p, expected) in enumerate(zip(params, ref.weights)):
        tol = dict(rtol=2e-2, atol=2e-2) if i == 1 else dict(rtol=1e-5, atol=1e-6)
        assert_close(p.detach().double(), expected, **tol)


def test_kernel_result_does_not_depend_on_thread_count(kernel):
    weights, dims, grads = _random_case(seed=3, dtype=torch.float32)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            ws = [w.clone() for w in weights]
            buffers = [None] * len(ws)
            for step_grads in grads:
                fused_sgd_gc_cpu_(
                    ws, step_grads, buffers, dims, lr=0.1, momentum=0.9, **OFF, weight_decay=1e-3
                )
            results.append(ws)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_tensor_lr_and_weight_decay(kernel):
    _step_matches_reference(lr=torch.tensor(0.05), weight_decay=torch.tensor(1e-2))


def test_explicit_torch_paths_do_not_use_the_kernel(kernel):
    """foreach=False is torch's for-loop (the PyTorch path of sgd_gc),
    which rounding tells apart from the kernel (mean summed in double)."""
    torch.manual_seed(0)
    w0, grad = torch.randn(64, 300), torch.randn(64, 300)
    out = {}
    for name, kwargs in (('loop', dict(foreach=False)), ('default', {})):
        p = nn.Parameter(w0.clone())
        opt = SGDGC([p], lr=0.3, momentum=0.9, weight_decay=0.1, **kwargs)
        for _ in range(3):
            p.grad = grad.clone()
            opt.step()
        out[name] = p.detach()
    assert_close(out['loop'], out['default'])
    assert not torch.equal(out['loop'], out['default'])


@pytest.fixture
def warnings_logged():
    """The warning records of MMEngine's current logger during the test."""
    records = []

    class Handler(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Handler(level=logging.WARNING)
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _step_matches_reference(lr=0.1, weight_decay=1e-2):
    """Two SGDGC steps of a conv (``lr`` and ``weight_decay`` may be tensors)
    equal the reference's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    params = list(conv.parameters())
    ref = ReferenceSGDGC(
        params, [0, None], lr=float(lr), momentum=0.9, weight_decay=float(weight_decay)
    )
    opt = SGDGC(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    for _ in range(2):
        grads = [torch.randn_like(p) for p in conv.parameters()]
        for p, g in zip(conv.parameters(), grads):
            p.grad = g
        opt.step()
        ref.step(grads)
    for p, expected in zip(conv.parameters(), ref.weights):
        assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


def test_build_failure_warns_once_and_falls_back(fresh_kernel_state, tmp_path, warnings_logged):
    monkeypatch = fresh_kernel_state
    monkeypatch.setenv('MMGC_CACHE_DIR', str(tmp_path))
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    _step_matches_reference()
    _step_matches_reference()
    build = cpu_kernel_build()
    assert build.library is None and 'no-such-compiler' in build.error
    messages = [r.getMessage() for r in warnings_logged]
    assert len(messages) == 1, messages
    assert 'falls back to PyTorch ops' in messages[0]
    assert 'no-such-compiler' in messages[0]
    assert list(tmp_path.iterdir()) == []  # no half-written library left
    weights, grads = [torch.zeros(2, 2)], [torch.zeros(2, 2)]
    with pytest.raises(RuntimeError, match='CPU SGD-GC kernel is unavailable'):
        fused_sgd_gc_cpu_(
            weights, grads, [None], [0], lr=0.1, momentum=0.0, weight_decay=0.0, **OFF
        )


def test_disabled_by_environment_without_warning(fresh_kernel_state, warnings_logged):
    fresh_kernel_state.setenv('MMGC_CPU_KERNEL', '0')
    _step_matches_reference()
    assert warnings_logged == []
    assert cpu_kernel_build().error == 'disabled by MMGC_CPU_KERNEL=0'


def test_build_is_cached_on_disk(fresh_kernel_state, tmp_path):
    if cpu_kernel_build().library is None:
        pytest.skip('no compiler here')
    cpu_kernel._reset_for_tests()
    fresh_kernel_state.setenv('MMGC_CACHE_DIR', str(tmp_path))
    first = cpu_kernel_build()
    assert first.library is not None and first.compile_seconds > 0
    assert first.path.parent == tmp_path and first.path.exists()
    cpu_kernel._reset_for_tests()
    second = cpu_kernel_build()
    assert second.path == first.path and second.compile_seconds == 0
    _step_matches_reference()


# --- the guard: a DTensor goes the generic way ---

try:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
except ImportError:  # torch without the public DTensor API
    DTensor = None

needs_dtensor = pytest.mark.skipif(
    DTensor is None or not dist.is_available() or not dist.is_gloo_available(),
    reason=f'torch {torch.__version__} has no public DTensor API or no gloo backend',
)


@pytest.fixture(scope='module')
def mesh(tmp_path_factory):
    """A one-process gloo CPU device mesh, torn down after the module (an
    existing process group is reused and left as it was)."""
    owned = not dist.is_initialized()
    if owned:
        store = tmp_path_factory.mktemp('dist') / 'store'
        dist.init_process_group('gloo', init_method=f'file://{store}', rank=0, world_size=1)
    try:
        yield init_device_mesh('cpu', (1,))
    finally:
        if owned:  # destroyed, and held until the process exits (end_process_group)
            end_process_group()


DTENSOR_SHAPES = [((8, 4, 3, 3), 0), ((5, 3, 2, 2), 1), ((6, 7), 0), ((8,), None)]
DTENSOR_HYPER = [
    dict(momentum=0.9, weight_decay=1e-2),
    dict(momentum=0.9, weight_decay=1e-2, nesterov=True),
    dict(momentum=0.0, weight_decay=1e-2, maximize=True),
    dict(momentum=0.9, weight_decay=1e-2, decoupled_weight_decay=True),
]


def _step_both(mesh, hyper, impl, steps=3):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s, _ in DTENSOR_SHAPES]
    dims = [d for _, d in DTENSOR_SHAPES]
    plain = [nn.Parameter(w.clone()) for w in start]
    sharded = [nn.Parameter(distribute_tensor(w.clone(), mesh, [Shard(0)])) for w in start]

    def groups(params):
        return [dict(params=[p], gc=d is not None, gc_dim=d or 0) for p, d in zip(params, dims)]

    ours = SGDGC(groups(sharded), lr=0.1, **hyper, **impl)
    theirs = SGDGC(groups(plain), lr=0.1, **hyper)  # default: mmgc's kernel where it applies
    for _ in range(steps):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s, _ in DTENSOR_SHAPES]
        for p, q, g in zip(sharded, plain, grads):
            p.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            q.grad = g.clone()
        ours.step()
        theirs.step()
    return sharded, plain, ours


@needs_dtensor
@pytest.mark.parametrize('impl', [dict(), dict(foreach=True)], ids=['default', 'foreach'])
@pytest.mark.parametrize('hyper', DTENSOR_HYPER, ids=hyper_id)
def test_dtensor_step_equals_plain_step(mesh, hyper, impl):
    sharded, plain, opt = _step_both(mesh, hyper, impl)
    for p, q in zip(sharded, plain):
        assert isinstance(p, DTensor)
        assert_close(p.detach().full_tensor(), q.detach(), rtol=1e-12, atol=1e-12)
        if hyper['momentum']:
            assert isinstance(opt.state[p]['momentum_buffer'], DTensor)


@needs_dtensor
def test_kernel_guard_refuses_dtensors(mesh):
    w = torch.randn(4, 3)
    d = distribute_tensor(w.clone(), mesh, [Shard(0)])
    # a DTensor on a CPU mesh looks like a dense contiguous CPU tensor
    assert d.is_cpu and d.is_contiguous() and d.layout == torch.strided
    assert not cpu_kernel_supports(nn.Parameter(d), w.clone(), None, False)
    assert not cpu_kernel_supports(nn.Parameter(w.clone()), d, None, False)
    assert not cpu_kernel_supports(nn.Parameter(w.clone()), w.clone(), d, False)
    assert cpu_kernel_supports(nn.Parameter(w.clone()), w.clone(), w.clone(), False)
