"""Pointwise (1x1) convolution (BLAS) against the NumPy reference, finite differences and adjoints."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradcheck import check_op_adjoints, check_op_finite_differences
from npmobilenet.ops import conv2d, pointwise_conv2d, pointwise_conv2d_backward, reference
from test_ops_depthwise import assert_matches

shapes = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.integers(1, 8), st.integers(1, 8))


def _problem(shape, dtype, seed=0):
    n, h, w, cin, cout = shape
    rng = np.random.default_rng(seed)
    return rng, rng.standard_normal((n, h, w, cin)).astype(dtype), rng.standard_normal((cin, cout)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=shapes)
def test_forward_and_gradients_match_reference(dtype, shape):
    rng, x, w = _problem(shape, dtype)
    y = pointwise_conv2d(x, w)
    assert y.dtype == dtype
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    assert_matches(y, reference.pointwise_conv2d(x64, w64), w.shape[0], "y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw = pointwise_conv2d_backward(dy, x, w)
    assert dx.dtype == dtype and dw.dtype == dtype
    dx_ref, dw_ref = reference.pointwise_conv2d_backward(dy.astype(np.float64), x64, w64)
    assert_matches(dx, dx_ref, w.shape[1], "dx")
    assert_matches(dw, dw_ref, x.shape[0] * x.shape[1] * x.shape[2], "dw")


@given(shape=shapes)
def test_gradients_match_finite_differences_and_adjoints(shape):
    rng, x, w = _problem(shape, np.float64, seed=1)
    check_op_finite_differences(pointwise_conv2d, pointwise_conv2d_backward, x, w, {}, rng)
    check_op_adjoints(pointwise_conv2d, pointwise_conv2d_backward, x, w, {}, rng)


def test_equals_a_1x1_standard_convolution_and_accepts_strided_views():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 5, 8))[:, ::2, :, ::2]  # (2, 3, 5, 4), not contiguous
    w = rng.standard_normal((6, 4)).T  # (4, 6), transposed
    assert not (x.flags.c_contiguous or w.flags.c_contiguous)
    np.testing.assert_allclose(pointwise_conv2d(x, w), conv2d(x, w[None, None]))
    dy = rng.standard_normal((2, 3, 5, 6))
    for got, want in zip(pointwise_conv2d_backward(dy, x, w), reference.pointwise_conv2d_backward(dy, x, w)):
        np.testing.assert_allclose(got, want)
