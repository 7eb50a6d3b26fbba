"""Standard convolution (im2col + BLAS) against the NumPy reference, finite differences and adjoints."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradcheck import check_op_adjoints, check_op_finite_differences, check_serial_and_parallel_agree
from npmobilenet import config
from npmobilenet.ops import conv, conv2d, conv2d_backward, reference
from test_ops_depthwise import assert_matches, geometries


@st.composite
def problems(draw, max_channels=8, max_size=12):
    g = draw(geometries(max_channels=max_channels, max_size=max_size))
    cout = draw(st.integers(1, max_channels))
    g["w_shape"] = g["w_shape"] + (cout,)
    return g


def _problem(g, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(g["x_shape"]).astype(dtype)
    w = rng.standard_normal(g["w_shape"]).astype(dtype)
    return rng, x, w, dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(g=problems())
def test_forward_and_gradients_match_reference(dtype, g):
    rng, x, w, geometry = _problem(g, dtype)
    y = conv2d(x, w, **geometry)
    assert y.dtype == dtype
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    kh, kw, cin, cout = w.shape
    assert_matches(y, reference.conv2d(x64, w64, **geometry), kh * kw * cin, "y")

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw = conv2d_backward(dy, x, w, **geometry)
    assert dx.dtype == dtype and dw.dtype == dtype
    dx_ref, dw_ref = reference.conv2d_backward(dy.astype(np.float64), x64, w64, **geometry)
    assert_matches(dx, dx_ref, kh * kw * cout, "dx")
    assert_matches(dw, dw_ref, y.shape[0] * y.shape[1] * y.shape[2], "dw")


@given(g=problems(max_channels=3, max_size=7))
def test_gradients_match_finite_differences(g):
    rng, x, w, geometry = _problem(g, np.float64, seed=1)
    check_op_finite_differences(conv2d, conv2d_backward, x, w, geometry, rng)


@given(g=problems())
def test_adjoint_identities(g):
    rng, x, w, geometry = _problem(g, np.float64, seed=2)
    check_op_adjoints(conv2d, conv2d_backward, x, w, geometry, rng)


@given(g=problems())
def test_serial_and_parallel_builds_agree(g):
    rng, x, w, geometry = _problem(g, np.float64, seed=3)
    check_serial_and_parallel_agree(conv2d, conv2d_backward, x, w, geometry, rng)
    if config.get_num_threads() > 1:
        assert conv._im2col_parallel.signatures


def test_mobilenet_stem_and_non_contiguous_inputs():
    # the stem: 3x3, stride 2, TF SAME padding (0, 1) on a 3-channel image, float32
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 12, 14)).astype(np.float32).transpose(0, 2, 3, 1)  # (2, 12, 14, 3) strided
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32).transpose(1, 2, 3, 0)  # (3, 3, 3, 16) strided
    assert not (x.flags.c_contiguous or w.flags.c_contiguous)
    geometry = dict(stride=2, padding=((0, 1), (0, 1)))
    y = conv2d(x, w, **geometry)
    assert y.shape == (2, 6, 7, 16)  # TF SAME: ceil(12/2) x ceil(14/2)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    assert_matches(y, reference.conv2d(x64, w64, **geometry), 27, "y")
    dy = rng.standard_normal((2, 7, 6, 16)).astype(np.float32).transpose(0, 2, 1, 3)
    dx, dw = conv2d_backward(dy, x, w, **geometry)
    dx_ref, dw_ref = reference.conv2d_backward(dy.astype(np.float64), x64, w64, **geometry)
    assert_matches(dx, dx_ref, 9 * 16, "dx")
    assert_matches(dw, dw_ref, 2 * 6 * 7, "dw")


def test_kernel_larger_than_unpadded_input_and_one_pixel_output():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 2, 3))
    w = rng.standard_normal((4, 5, 3, 2))
    geometry = dict(padding=((1, 1), (2, 1)))  # padded 4x5: exactly one output pixel
    y = conv2d(x, w, **geometry)
    assert y.shape == (2, 1, 1, 2)
    np.testing.assert_allclose(y, reference.conv2d(x, w, **geometry))
    dy = rng.standard_normal(y.shape)
    for got, want in zip(conv2d_backward(dy, x, w, **geometry), reference.conv2d_backward(dy, x, w, **geometry)):
        np.testing.assert_allclose(got, want)


def test_known_values():
    # a 1x1 convolution is a matrix product per pixel; a 2x2 kernel of ones sums each window
    x = np.arange(8.0).reshape(1, 2, 2, 2)
    np.testing.assert_allclose(conv2d(x, np.eye(2)[None, None] * 3), 3 * x)
    y = conv2d(x, np.ones((2, 2, 2, 1)))
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == 28.0
