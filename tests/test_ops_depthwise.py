"""Depthwise convolution kernels against the NumPy reference, finite differences and adjoints."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradcheck import check_op_adjoints, check_op_finite_differences, check_serial_and_parallel_agree
from npmobilenet import config
from npmobilenet.ops import depthwise, depthwise_conv2d, depthwise_conv2d_backward, reference


@st.composite
def geometries(draw, max_channels=8, max_size=12):
    """A random convolution problem: shapes, kernel 1..7, stride, dilation, symmetric or asymmetric padding.

    Half the examples are MobileNet-like (square 3x3 or 5x5 kernel, stride 1 or 2, dilation 1)
    so the specialised paths of the kernels are drawn often, not by luck.
    """
    if draw(st.booleans()):
        k = draw(st.sampled_from([3, 3, 5]))
        kh = kw = k
        dh = dw = 1
        stride = draw(st.sampled_from([1, 1, 2]))
    else:
        kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
        # dilation small enough that the dilated kernel fits in max_size
        dh = draw(st.integers(1, max(1, min(3, (max_size - 1) // max(kh - 1, 1)))))
        dw = draw(st.integers(1, max(1, min(3, (max_size - 1) // max(kw - 1, 1)))))
        stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    side = st.integers(0, 3)
    padding = draw(st.one_of(
        side,
        st.tuples(side, side),
        st.tuples(st.tuples(side, side), st.tuples(side, side)),
    ))
    (pt, pb), (pl, pr) = _sides(padding)
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - pt - pb), max_size))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - pl - pr), max_size))
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, max_channels))
    return dict(x_shape=(n, h, w, c), w_shape=(kh, kw, c), stride=stride, padding=padding, dilation=(dh, dw))


def _sides(padding):
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    if isinstance(padding[0], int):
        return (padding[0], padding[0]), (padding[1], padding[1])
    return padding


def _problem(g, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(g["x_shape"]).astype(dtype)
    w = rng.standard_normal(g["w_shape"]).astype(dtype)
    geometry = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"])
    return rng, x, w, geometry


def assert_matches(actual, expected, terms, what):
    """`actual` equals `expected` (float64 oracle) to the rounding of a `terms`-long float sum."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    eps = np.finfo(actual.dtype).eps
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    assert err <= 4 * eps * terms * scale, f"{what}: max |difference| {err:.3g} ({actual.dtype}, {terms} terms)"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(g=geometries())
def test_forward_and_gradients_match_reference(dtype, g):
    rng, x, w, geometry = _problem(g, dtype)
    y = depthwise_conv2d(x, w, **geometry)
    assert y.dtype == dtype
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    kh, kw, _ = w.shape
    assert_matches(y, reference.depthwise_conv2d(x64, w64, **geometry), kh * kw, "y")

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw = depthwise_conv2d_backward(dy, x, w, **geometry)
    assert dx.dtype == dtype and dw.dtype == dtype
    dx_ref, dw_ref = reference.depthwise_conv2d_backward(dy.astype(np.float64), x64, w64, **geometry)
    assert_matches(dx, dx_ref, kh * kw, "dx")
    assert_matches(dw, dw_ref, y.shape[0] * y.shape[1] * y.shape[2], "dw")


@given(g=geometries(max_channels=4, max_size=8))
def test_gradients_match_finite_differences(g):
    rng, x, w, geometry = _problem(g, np.float64, seed=1)
    check_op_finite_differences(depthwise_conv2d, depthwise_conv2d_backward, x, w, geometry, rng)


@given(g=geometries())
def test_adjoint_identities(g):
    rng, x, w, geometry = _problem(g, np.float64, seed=2)
    check_op_adjoints(depthwise_conv2d, depthwise_conv2d_backward, x, w, geometry, rng)


@given(g=geometries())
def test_serial_and_parallel_builds_agree(g):
    rng, x, w, geometry = _problem(g, np.float64, seed=3)
    check_serial_and_parallel_agree(depthwise_conv2d, depthwise_conv2d_backward, x, w, geometry, rng)


def test_parallel_builds_really_ran_in_parallel(monkeypatch):
    if config.get_num_threads() < 2:
        pytest.skip("one Numba thread")
    monkeypatch.setattr(config, "PARALLEL_MIN_MACS", 0)
    x = np.ones((2, 6, 6, 3))
    w = np.ones((3, 3, 3))
    dy = np.ones((2, 3, 3, 3))
    depthwise_conv2d(x, w, stride=2, padding=1)
    depthwise_conv2d_backward(dy, x, w, stride=2, padding=1)
    for kernel in (depthwise._depthwise_forward_parallel, depthwise._depthwise_backward_input_strided_parallel,
                   depthwise._depthwise_backward_weight_parallel):
        assert kernel.signatures, f"{kernel.py_func.__qualname__} never compiled"
        assert kernel.targetoptions["parallel"]


# Hypothesis keeps channels <= 8 and widths <= 12, so a row is one run; these cases have several
# runs per row (at the default run length and at a short one), odd output heights (the last row of
# a pair step alone), 64 channels or more (one-pixel runs), and every kernel path.
@pytest.mark.parametrize("tile_elements", [depthwise.TILE_ELEMENTS, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "x_shape, kernel, stride, padding, dilation",
    [
        ((2, 11, 30, 40), (3, 3), 1, 1, 1),  # paired 3x3 rows, several tiles per row
        ((1, 9, 17, 24), (3, 3), 2, ((0, 1), (0, 1)), 1),  # TF SAME at stride 2: asymmetric padding
        ((1, 12, 12, 33), (3, 3), 1, 2, 2),  # dilated 3x3: fused single rows
        ((2, 10, 14, 72), (5, 5), 1, 2, 1),  # V3's 5x5, 64 channels or more: pixel by pixel
        ((1, 10, 14, 72), (5, 5), 2, 2, 1),
        ((2, 10, 14, 24), (5, 5), 1, 2, 1),  # 5x5 over runs of pixels, a kernel row per pass
        ((2, 9, 12, 80), (3, 3), 1, 1, 1),   # paired 3x3 rows, pixel by pixel
        ((1, 8, 30, 16), (3, 3), (1, 2), (1, 0), 1),
    ],
)
def test_multi_tile_rows_match_reference(dtype, tile_elements, x_shape, kernel, stride, padding, dilation,
                                         monkeypatch):
    monkeypatch.setattr(depthwise, "TILE_ELEMENTS", tile_elements)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(kernel + (x_shape[3],)).astype(dtype)
    geometry = dict(stride=stride, padding=padding, dilation=dilation)
    y = depthwise_conv2d(x, w, **geometry)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    assert_matches(y, reference.depthwise_conv2d(x64, w64, **geometry), kernel[0] * kernel[1], "y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw = depthwise_conv2d_backward(dy, x, w, **geometry)
    dx_ref, dw_ref = reference.depthwise_conv2d_backward(dy.astype(np.float64), x64, w64, **geometry)
    assert_matches(dx, dx_ref, kernel[0] * kernel[1], "dx")
    assert_matches(dw, dw_ref, y.shape[0] * y.shape[1] * y.shape[2], "dw")


def test_non_contiguous_inputs():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((2, 5, 9, 14))
    x = base.transpose(0, 2, 1, 3)[:, ::2, :, 1::2]  # (2, 5, 5, 7), strided in every axis
    w = rng.standard_normal((7, 3, 3)).transpose(1, 2, 0)  # (3, 3, 7), channels not contiguous
    dy = rng.standard_normal((2, 10, 5, 7))[:, ::2]  # (2, 5, 5, 7)
    assert not (x.flags.c_contiguous or w.flags.c_contiguous or dy.flags.c_contiguous)
    geometry = dict(stride=1, padding=1)
    np.testing.assert_allclose(depthwise_conv2d(x, w, **geometry), reference.depthwise_conv2d(x, w, **geometry))
    for got, want in zip(depthwise_conv2d_backward(dy, x, w, **geometry),
                         reference.depthwise_conv2d_backward(dy, x, w, **geometry)):
        np.testing.assert_allclose(got, want)


def test_kernel_larger_than_unpadded_input_and_one_pixel_output():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 3, 4))
    w = rng.standard_normal((5, 7, 4))
    # padded 6x9 input, 5x7 kernel: a 2x3 output from taps mostly in the padding
    y = depthwise_conv2d(x, w, padding=((2, 2), (3, 3)))
    assert y.shape == (1, 2, 3, 4)
    np.testing.assert_allclose(y, reference.depthwise_conv2d(x, w, padding=((2, 2), (3, 3))))
    # exactly one output pixel: the kernel covers the whole padded input
    y = depthwise_conv2d(x, w, padding=((1, 2), (2, 2)))
    assert y.shape == (1, 1, 1, 4)
    dy = rng.standard_normal(y.shape)
    dx, dw = depthwise_conv2d_backward(dy, x, w, padding=((1, 2), (2, 2)))
    dx_ref, dw_ref = reference.depthwise_conv2d_backward(dy, x, w, padding=((1, 2), (2, 2)))
    np.testing.assert_allclose(dx, dx_ref)
    np.testing.assert_allclose(dw, dw_ref)
    # 1x1 image, 3x3 kernel, padding 1: only the centre tap sees x
    x = rng.standard_normal((2, 1, 1, 3))
    w = rng.standard_normal((3, 3, 3))
    np.testing.assert_allclose(depthwise_conv2d(x, w, padding=1), x * w[1, 1])


def test_known_values():
    # 3x3 box filter of ones on a ramp: each output is the sum of its 3x3 neighbourhood
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    y = depthwise_conv2d(x, np.ones((3, 3, 1)))
    np.testing.assert_array_equal(y[0, :, :, 0], [[45.0, 54.0], [81.0, 90.0]])
    # channels are independent: channel 1's kernel never sees channel 0
    x = np.zeros((1, 3, 3, 2))
    x[..., 0] = 1.0
    w = np.ones((3, 3, 2))
    np.testing.assert_array_equal(depthwise_conv2d(x, w)[0, 0, 0], [9.0, 0.0])


def test_parallel_build_gives_the_same_result_at_every_thread_count(monkeypatch):
    # the thread count may change between calls of a cached parallel kernel (set_num_threads)
    monkeypatch.setattr(config, "PARALLEL_MIN_MACS", 0)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 9, 10, 12))
    w = rng.standard_normal((3, 3, 12))
    dy = rng.standard_normal((3, 9, 10, 12))
    before = config.get_num_threads()
    results = []
    try:
        for threads in range(1, before + 1):
            config.set_num_threads(threads)
            results.append((depthwise_conv2d(x, w, padding=1),) + depthwise_conv2d_backward(dy, x, w, padding=1))
    finally:
        config.set_num_threads(before)
    want = (reference.depthwise_conv2d(x, w, padding=1),) + reference.depthwise_conv2d_backward(dy, x, w, padding=1)
    for got in results:
        for name, a, b in zip(("y", "dx", "dw"), got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
