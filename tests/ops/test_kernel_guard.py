"""mmgc's CPU kernel takes only plain dense tensors: a DTensor (what torch's
FSDP2 makes of parameters) goes the generic way, and the step equals the
plain-tensor one."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from mmgc import SGDGC
from mmgc.ops.cpu_kernel import cpu_kernel_supports

dist = pytest.importorskip('torch.distributed')
try:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
except ImportError:  # torch without the public DTensor API
    DTensor = None

pytestmark = pytest.mark.skipif(
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
        if owned:
            dist.destroy_process_group()


SHAPES = [((8, 4, 3, 3), 0), ((5, 3, 2, 2), 1), ((6, 7), 0), ((8,), None)]
HYPER = [
    dict(momentum=0.9, weight_decay=1e-2),
    dict(momentum=0.9, weight_decay=1e-2, nesterov=True),
    dict(momentum=0.0, weight_decay=1e-2, maximize=True),
    dict(momentum=0.9, weight_decay=1e-2, decoupled_weight_decay=True),
]


def _step_both(mesh, hyper, impl, steps=3):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s, _ in SHAPES]
    dims = [d for _, d in SHAPES]
    plain = [nn.Parameter(w.clone()) for w in start]
    sharded = [nn.Parameter(distribute_tensor(w.clone(), mesh, [Shard(0)])) for w in start]

    def groups(params):
        return [dict(params=[p], gc=d is not None, gc_dim=d or 0) for p, d in zip(params, dims)]

    ours = SGDGC(groups(sharded), lr=0.1, **hyper, **impl)
    theirs = SGDGC(groups(plain), lr=0.1, **hyper)  # default: mmgc's kernel where it applies
    for _ in range(steps):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s, _ in SHAPES]
        for p, q, g in zip(sharded, plain, grads):
            p.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            q.grad = g.clone()
        ours.step()
        theirs.step()
    return sharded, plain, ours


@pytest.mark.parametrize('impl', [dict(), dict(foreach=True)], ids=['default', 'foreach'])
@pytest.mark.parametrize('hyper', HYPER, ids=lambda h: '-'.join(f'{k}={v}' for k, v in h.items()))
def test_dtensor_step_equals_plain_step(mesh, hyper, impl):
    sharded, plain, opt = _step_both(mesh, hyper, impl)
    for p, q in zip(sharded, plain):
        assert isinstance(p, DTensor)
        assert_close(p.detach().full_tensor(), q.detach(), rtol=1e-12, atol=1e-12)
        if hyper['momentum']:
            assert isinstance(opt.state[p]['momentum_buffer'], DTensor)


def test_kernel_guard_refuses_dtensors(mesh):
    w = torch.randn(4, 3)
    d = distribute_tensor(w.clone(), mesh, [Shard(0)])
    # a DTensor on a CPU mesh looks like a dense contiguous CPU tensor
    assert d.is_cpu and d.is_contiguous() and d.layout == torch.strided
    assert not cpu_kernel_supports(nn.Parameter(d), w.clone(), None, False)
    assert not cpu_kernel_supports(nn.Parameter(w.clone()), d, None, False)
    assert not cpu_kernel_supports(nn.Parameter(w.clone()), w.clone(), d, False)
    assert cpu_kernel_supports(nn.Parameter(w.clone()), w.clone(), w.clone(), False)
