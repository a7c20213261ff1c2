"""Property-based tests of every GC path against the reference, over random
shapes, dtypes, memory formats and non-finite gradients (hypothesis, with a
fixed seed so that runs are reproducible)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from mmgc import SGDGC
from mmgc.engine.optimizers.sgd_gc import torch_fused_sgd_on_cpu
from mmgc.ops import centralize
from tests.reference import ReferenceSGDGC, project

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# The SGDGC paths: the default (mmgc's choice), torch's for-loop, foreach, fused
PATHS = {
    'default': dict(),
    'for-loop': dict(foreach=False),
    'foreach': dict(foreach=True),
}
if torch_fused_sgd_on_cpu():  # not on torch 2.1 (tests/engine/optimizers/test_sgd_gc.py)
    PATHS['fused'] = dict(fused=True)

# tolerance per dtype, relative to the size of the values involved
RTOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

shapes = st.lists(st.integers(0, 5), min_size=1, max_size=5).map(tuple)
hyper = st.fixed_dictionaries(
    dict(
        lr=st.sampled_from([0.01, 0.1]),
        momentum=st.sampled_from([0.0, 0.9]),
        weight_decay=st.sampled_from([0.0, 1e-2]),
        maximize=st.booleans(),
    )
)


def _tensor(shape, dtype, seed, channels_last=False, transposed=False):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=torch.float64)
    if transposed and t.dim() >= 2:  # same values, non-contiguous layout
        t = t.transpose(0, -1).contiguous().transpose(0, -1)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.to(dtype)


def _check_against_reference(shape, dtype, path, h, out_dim=0, layout=None, steps=2):
    layout = layout or {}
    weight = torch.nn.Parameter(_tensor(shape, dtype, 0, **layout))
    opt = SGDGC([weight], **h, **PATHS[path])
    ref = ReferenceSGDGC([weight], [out_dim if len(shape) > 1 else None], **h)
    ref.weights[0] = weight.detach().double().clone()
    for step in range(steps):
        grad = _tensor(shape, dtype, 100 + step, **layout)
        weight.grad = grad
        before = grad.clone()
        opt.step()
        ref.step([grad.double()])
        assert torch.equal(weight.grad, before)
    expected = ref.weights[0]
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    assert_close(weight.detach().double(), expected, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


@FUZZ
@given(shape=shapes, h=hyper, path=st.sampled_from(list(PATHS)))
def test_float32_shapes(shape, h, path):
    _check_against_reference(shape, torch.float32, path, h)


@FUZZ
@given(shape=shapes, h=hyper, path=st.sampled_from(list(PATHS)))
def test_float64_shapes(shape, h, path):
    _check_against_reference(shape, torch.float64, path, h)


@FUZZ
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
    h=hyper,
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    path=st.sampled_from(['default', 'for-loop', 'foreach']),
)
def test_half_precision(shape, h, dtype, path):
    _check_against_reference(shape, dtype, path, h, steps=1)


@FUZZ
@given(
    shape=st.lists(st.integers(1, 5), min_size=4, max_size=4).map(tuple),
    h=hyper,
    path=st.sampled_from(list(PATHS)),
    layout=st.sampled_from([dict(channels_last=True), dict(transposed=True)]),
)
def test_memory_formats(shape, h, path, layout):
    """channels_last conv weights and gradients; non-contiguous gradients."""
    _check_against_reference(shape, torch.float32, path, h, layout=layout)


@FUZZ
@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=5).map(tuple),
    out_dim=st.integers(0, 1),
    path=st.sampled_from(list(PATHS)),
)
def test_output_dim(shape, out_dim, path):
    weight = torch.nn.Parameter(_tensor(shape, torch.float64, 0))
    opt = SGDGC([dict(params=[weight], gc_dim=out_dim)], lr=0.1, momentum=0.9, **PATHS[path])
    ref = ReferenceSGDGC([weight], [out_dim], lr=0.1, momentum=0.9)
    for step in range(2):
        grad = _tensor(shape, torch.float64, 7 + step)
        weight.grad = grad
        opt.step()
        ref.step([grad])
    assert_close(weight.detach(), ref.weights[0], rtol=1e-10, atol=1e-12)


@FUZZ
@given(
    rows=st.integers(2, 6),
    cols=st.integers(1, 6),
    bad_row=st.integers(0, 5),
    bad=st.sampled_from([float('nan'), float('inf'), -float('inf')]),
    path=st.sampled_from(list(PATHS)),
)
def test_non_finite_values_stay_in_their_row(rows, cols, bad_row, bad, path):
    bad_row %= rows
    weight = torch.nn.Parameter(_tensor((rows, cols, 3), torch.float32, 0))
    start = weight.detach().clone()
    grad = _tensor((rows, cols, 3), torch.float32, 1)
    grad[bad_row, 0, 0] = bad
    weight.grad = grad
    SGDGC([weight], lr=0.1, momentum=0.9, weight_decay=1e-2, **PATHS[path]).step()
    others = [r for r in range(rows) if r != bad_row]
    assert torch.isfinite(weight.detach()[others]).all()
    expected = start.double() - 0.1 * project(grad.double() + 1e-2 * start.double(), 0)
    assert_close(weight.detach()[others].double(), expected[others], rtol=2e-5, atol=2e-6)
    assert not torch.isfinite(weight.detach()[bad_row]).all()


@FUZZ
@given(shape=shapes, out_dim=st.integers(0, 4))
def test_centralize_properties(shape, out_dim):
    g = _tensor(shape, torch.float64, 3)
    if g.dim() <= 1:
        assert torch.equal(centralize(g), g)
        return
    out_dim %= g.dim()
    c = centralize(g, out_dim)
    assert_close(c, project(g, out_dim))
    assert_close(centralize(c, out_dim), c)  # P is idempotent
    assert float(torch.linalg.vector_norm(c)) <= float(torch.linalg.vector_norm(g)) + 1e-12


@pytest.mark.parametrize('path', list(PATHS))
def test_params_without_grad_are_skipped(path):
    a = torch.nn.Parameter(torch.randn(3, 4))
    b = torch.nn.Parameter(torch.randn(3, 4))
    opt = SGDGC([a, b], lr=0.1, momentum=0.9, **PATHS[path])
    a.grad = torch.randn(3, 4)
    b_before = b.detach().clone()
    opt.step()
    assert torch.equal(b.detach(), b_before) and b.grad is None
    assert 'momentum_buffer' not in opt.state[b]
