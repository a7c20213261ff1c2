import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from mmgc.ops import centralize, centralize_, gc_direction_means, gc_update_directions, reduce_dims
from tests.reference import project

SHAPES_AND_DIMS = [
    ((6, 5), 0),  # Linear
    ((4, 3, 7), 0),  # Conv1d
    ((8, 3, 3, 3), 0),  # Conv2d
    ((4, 2, 3, 3, 3), 0),  # Conv3d
    ((3, 8, 4, 4), 1),  # ConvTranspose2d: (in, out, kh, kw)
    ((8, 1, 3, 3), 0),  # depthwise
    ((5, 1, 1, 1), 0),  # a single input per output unit
    ((4, 3, 3, 3), -1),  # negative dim
]


@pytest.mark.parametrize(('shape', 'dim'), SHAPES_AND_DIMS)
def test_centralize_matches_projection(shape, dim):
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    expected = project(grad, dim)
    assert_close(centralize(grad, dim), expected)
    inplace = grad.clone()
    assert centralize_(inplace, dim) is inplace
    assert_close(inplace, expected)
    # each output unit's vector now has zero mean
    dims = reduce_dims(grad.dim(), dim)
    assert_close(inplace.sum(dim=dims), torch.zeros(grad.shape[dim], dtype=grad.dtype))


def test_single_input_per_unit_is_zeroed():
    grad = torch.randn(5, 1, 1, 1)
    assert torch.count_nonzero(centralize(grad)) == 0


def test_vectors_and_empty_tensors_are_untouched():
    bias = torch.randn(7)
    assert_close(centralize(bias), bias)
    assert centralize(bias) is not bias
    empty = torch.empty(0, 3, 3, 3)
    assert centralize_(empty).shape == (0, 3, 3, 3)
    empty_inputs = torch.empty(4, 0)
    assert centralize(empty_inputs).shape == (4, 0)


def test_non_contiguous_input():
    base = torch.randn(6, 8, dtype=torch.float64)
    grad = base.t()  # (8, 6), non-contiguous
    assert not grad.is_contiguous()
    assert_close(centralize(grad, 0), project(grad.contiguous(), 0))


@pytest.mark.parametrize('dim', [2, -3])
def test_out_of_range_dim(dim):
    with pytest.raises(ValueError, match=rf'gc_dim={dim} is out of range for a 2-D weight'):
        centralize(torch.randn(3, 4), dim)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize('maximize', [False, True])
@pytest.mark.parametrize('weight_decay', [0.0, 0.1, torch.tensor(0.1)])
def test_update_directions_and_their_means(maximize, weight_decay, dtype):
    """``gc_update_directions`` is ``P(±g + wd w)``; ``gc_direction_means``
    is what ``P`` removes from ``±g + wd w``; neither touches the gradients."""
    g = torch.Generator().manual_seed(2)
    shapes, dims = [(4, 3, 3), (3, 5, 2), (0, 3), (4, 0)], [0, 1, 0, 0]
    params = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    grads = [torch.randn_like(p) for p in params]
    grads_before = [x.clone() for x in grads]
    out = gc_update_directions(params, grads, dims, weight_decay=weight_decay, maximize=maximize)
    means = gc_direction_means(params, grads, dims, weight_decay=weight_decay, maximize=maximize)
    wd = float(weight_decay)
    for p, grad, dim, d, mean in zip(params, grads_before, dims, out, means):
        direction = (-grad if maximize else grad) + wd * p
        assert_close(d, project(direction, dim))
        assert mean.shape == tuple(n if i == dim else 1 for i, n in enumerate(p.shape))
        tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else {}
        assert_close(direction - mean, project(direction, dim), **tol)
    for grad, before in zip(grads, grads_before):
        assert torch.equal(grad, before)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(shape=st.lists(st.integers(0, 5), max_size=5).map(tuple), out_dim=st.integers(0, 4))
def test_centralize_properties(shape, out_dim):
    """Random shapes (hypothesis, derandomized): ``P`` of the reference,
    idempotent, never lengthening; 0-D and 1-D tensors are left alone."""
    g = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    if g.dim() <= 1:
        assert torch.equal(centralize(g), g)
        return
    out_dim %= g.dim()
    c = centralize(g, out_dim)
    assert_close(c, project(g, out_dim))
    assert_close(centralize(c, out_dim), c)  # P is idempotent
    assert float(torch.linalg.vector_norm(c)) <= float(torch.linalg.vector_norm(g)) + 1e-12


@pytest.mark.parametrize('maximize', [False, True])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_directions_are_formed_in_float32(dtype, maximize):
    """For float16/bfloat16, P(±g + wd w) is formed in float32 and rounded
    once: it equals the float64 projection rounded to the dtype (up to one
    rounding of float32's), even where the gradient's mean is 100 times its
    centred part, and it keeps the gradient's dtype."""
    g = torch.Generator().manual_seed(5)
    shapes, dims = [(6, 4, 3), (3, 5, 2)], [0, 1]
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    grads = []
    for shape, dim in zip(shapes, dims):
        centred = project(torch.randn(shape, generator=g, dtype=torch.float64), dim)
        unit = [1] * len(shape)
        unit[dim] = shape[dim]
        grads.append(
            (centred + 100 * torch.randn(unit, generator=g, dtype=torch.float64)).to(dtype)
        )
    out = gc_update_directions(params, grads, dims, weight_decay=0.1, maximize=maximize)
    eps = torch.finfo(dtype).eps
    for p, grad, dim, d in zip(params, grads, dims, out):
        assert d.dtype == dtype
        exact = project((-grad.double() if maximize else grad.double()) + 0.1 * p.double(), dim)
        assert_close(d.double(), exact.to(dtype).double(), rtol=eps, atol=0)
