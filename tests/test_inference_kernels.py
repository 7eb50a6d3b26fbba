"""Each fused inference kernel against a plain NumPy computation of the same layer.

The oracles are written here from the definitions (convolutions from `npmobilenet.ops.reference`,
the slow tap-by-tap NumPy convolutions that share no code with any kernel), and every kernel is
run both serial and parallel, through OpenBLAS's SGEMM and through the Numba matrix product. The
convolution kernels are the tiles of `npmobilenet.ops` with their epilogues (bias, activation,
residual, SE); training's tests (test_ops_*.py) run the same tiles without one.
"""
import re

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npmobilenet.inference import kernels, tiling
from npmobilenet.inference.threads import numba_threads
from npmobilenet.ops import conv as conv_ops
from npmobilenet.ops import reference, register_tile
from npmobilenet.ops.blas import find_blas
from npmobilenet.ops.vector16 import has_avx2

RTOL = 1e-5


# -- oracles ------------------------------------------------------------------------------------
def relu(v):
    return np.maximum(v, 0)


def relu6(v):
    return np.clip(v, 0, 6)


def hardswish(v):
    return v * np.clip(v + 3, 0, 6) / 6


def hardsigmoid(v):
    return np.clip(v + 3, 0, 6) / 6


ACTIVATION = {None: lambda v: v, "relu": relu, "relu6": relu6, "hardswish": hardswish}


def assert_close(actual, expected, what):
    expected = np.asarray(expected, np.float64)
    err = float(np.abs(np.asarray(actual, np.float64) - expected).max() / max(1e-12, np.abs(expected).max()))
    print(f"{what}: max relative difference {err:.2e}")
    assert actual.shape == expected.shape, what
    assert err < RTOL, f"{what}: max relative difference {err:.2e}"


def data(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@st.composite
def windows(draw, max_channels=40, max_size=12, kernels=(1, 2, 3, 5, 7)):
    """A KxK window (dilation 1, what fused inference runs): shapes, stride, asymmetric padding,
    activation; half the examples over 3 input channels with a 3x3 kernel (the stem's path)."""
    kh, kw = (3, 3) if draw(st.booleans()) else (draw(st.sampled_from(kernels)), draw(st.sampled_from(kernels)))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pt, pb, pl, pr = (draw(st.integers(0, 3)) for _ in range(4))
    h = draw(st.integers(max(1, kh - pt - pb), max_size))
    w = draw(st.integers(max(1, kw - pl - pr), max_size))
    return dict(n=draw(st.integers(1, 3)), h=h, w=w, channels=draw(st.integers(1, max_channels)), kernel=(kh, kw),
                stride=(sh, sw), padding=(pt, pb, pl, pr), activation=draw(st.sampled_from(list(ACTIVATION))),
                parallel=draw(st.booleans()))


def oracle_padding(padding):
    pt, pb, pl, pr = padding
    return ((pt, pb), (pl, pr))


BACKENDS = [pytest.param(True, id="blas"), pytest.param(False, id="numba-matmul")]
# the register tile of ops.register_tile, where the CPU has AVX-512 or AVX2 (else not drawn)
PACKED = st.sampled_from([False, True] if register_tile.available() else [False])


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_blas", BACKENDS)
@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
@pytest.mark.parametrize("activation", [None, "relu", "relu6", "hardswish"])
def test_pointwise_conv(use_blas, parallel, activation):
    rng = np.random.default_rng(0)
    # 2 * 9 * 7 = 126 rows: the tiling rule cuts them in two (and 21 > 16 output channels)
    x, w, b = data(rng, 2, 9, 7, 13), data(rng, 13, 21), data(rng, 21)
    y = kernels.pointwise_conv(x, w, b, activation, parallel=parallel, use_blas=use_blas)
    expected = ACTIVATION[activation](reference.pointwise_conv2d(x.astype(np.float64), w.astype(np.float64)) + b)
    assert_close(y, expected, f"pointwise {activation}")


@pytest.mark.parametrize("use_blas", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 5, 5, 24, 40), (3, 16, 16, 20, 140), (1, 7, 7, 160, 960)])
def test_pointwise_residual_and_gate(use_blas, shape):
    # large layers (row tiles), wide small layers (column halves: the gate is applied first)
    n, h, w_, cin, cout = shape
    rng = np.random.default_rng(1)
    x, w, b = data(rng, n, h, w_, cin), data(rng, cin, cout), data(rng, cout)
    residual, gate = data(rng, n, h, w_, cout), rng.random((n, cin)).astype(np.float32)
    x64 = x.astype(np.float64)
    y = kernels.pointwise_conv(x, w, b, None, residual=residual, use_blas=use_blas)
    assert_close(y, reference.pointwise_conv2d(x64, w.astype(np.float64)) + b + residual, "pointwise + residual")
    y = kernels.pointwise_conv(x, w, b, None, residual=residual, gate=gate, use_blas=use_blas)
    gated = x64 * gate[:, None, None, :]
    assert_close(y, reference.pointwise_conv2d(gated, w.astype(np.float64)) + b + residual, "gated pointwise + residual")
    x_before = x.copy()
    kernels.pointwise_conv(x, w, b, "hardswish", gate=gate, use_blas=use_blas)
    assert np.array_equal(x, x_before), "the public wrapper must not modify its input"


def test_pointwise_rejects_bad_arguments():
    x, w, b = np.zeros((1, 4, 4, 3), np.float32), np.zeros((3, 5), np.float32), np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="w must be"):
        kernels.pointwise_conv(x, np.zeros((4, 5), np.float32), b)
    with pytest.raises(ValueError, match="activation must be one of"):
        kernels.pointwise_conv(x, w, b, "gelu")
    with pytest.raises(ValueError, match="residual add is fused only into a linear"):
        kernels.pointwise_conv(x, w, b, "relu", residual=np.zeros((1, 4, 4, 5), np.float32))
    with pytest.raises(ValueError, match="gate must have shape"):
        kernels.pointwise_conv(x, w, b, gate=np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="x must be a float array"):
        kernels.pointwise_conv(x.astype(np.int32), w, b)


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
@pytest.mark.parametrize("kernel_size, stride, padding", [
    (3, 1, 1), (3, 2, 1), (5, 1, 2), (5, 2, 2),
    (3, 2, (0, 1, 0, 1)),       # TensorFlow's asymmetric 'same' padding at stride 2
    (7, 1, 3),                  # another size: the general (tap-by-tap) path
])
def test_depthwise_conv(parallel, kernel_size, stride, padding):
    rng = np.random.default_rng(2)
    # odd sizes and a channel count that is not a multiple of the vector width
    x, w, b = data(rng, 2, 11, 9, 19), data(rng, kernel_size, kernel_size, 19), data(rng, 19)
    pt, pb, pl, pr = (padding,) * 4 if np.isscalar(padding) else padding
    expected = reference.depthwise_conv2d(x.astype(np.float64), w.astype(np.float64), stride=stride,
                                          padding=((pt, pb), (pl, pr))) + b
    for activation in (None, "relu6", "hardswish"):
        y, sums = kernels.depthwise_conv(x, w, b, activation, stride, padding, with_row_sums=True, parallel=parallel)
        want = ACTIVATION[activation](expected)
        assert_close(y, want, f"depthwise {kernel_size}x{kernel_size}/{stride} {activation}")
        assert_close(sums, want.sum(axis=2), "depthwise row sums")


def test_depthwise_tiny_input_is_all_border():
    # every tap of a 5x5 kernel on a 2x3 input lands partly in the padding
    rng = np.random.default_rng(3)
    x, w, b = data(rng, 1, 2, 3, 8), data(rng, 5, 5, 8), data(rng, 8)
    y = kernels.depthwise_conv(x, w, b, "relu", 1, 2)
    expected = relu(reference.depthwise_conv2d(x.astype(np.float64), w.astype(np.float64), padding=2) + b)
    assert_close(y, expected, "depthwise on a 2x3 input")


def test_squeeze_excite_gate():
    rng = np.random.default_rng(4)
    activation = rng.standard_normal((3, 6, 5, 24))
    w1, b1, w2, b2 = data(rng, 24, 8), data(rng, 8), data(rng, 8, 24), data(rng, 24)
    gate = kernels.squeeze_excite_gate(activation.sum(axis=2), 6 * 5, w1, b1, w2, b2)
    squeezed = activation.mean(axis=(1, 2))                      # V3 paper, sec. 5.3
    expected = hardsigmoid(relu(squeezed @ w1 + b1) @ w2 + b2)
    assert_close(gate, expected, "SE gate")


@pytest.mark.parametrize("channels, squeeze", [(24, 8), (72, 24), (120, 32), (8, 8)])
def test_squeeze_excite_tiles_any_order(channels, squeeze):
    # SE runs in two phases of PARTS tiles (each part's share of the hidden units, then each
    # part's channels of the gate), whichever thread takes which: the parts of a phase in any
    # order give the same bits, and the gate is SE's (8 channels: one part empty)
    from npmobilenet.inference.tiles import PARTS, expand_parts, squeeze_excite_tile
    rng = np.random.default_rng(11)
    n, rows, cols = 2, 7, 6
    activation = rng.standard_normal((n, rows, cols, channels))
    sums = activation.sum(axis=2).astype(np.float32)
    w1, b1, w2, b2 = data(rng, channels, squeeze), data(rng, squeeze), data(rng, squeeze, channels), data(rng, channels)
    parts = expand_parts(w2)
    assert parts.shape[:2] == (PARTS, squeeze) and parts.shape[2] % 16 == 0
    np.testing.assert_array_equal(np.concatenate(list(parts), axis=1)[:, :channels], w2)
    gates = []
    for order in (range(n * PARTS), reversed(range(n * PARTS))):
        order = list(order)
        partials, gate = np.full((n * PARTS, squeeze), np.nan, np.float32), np.full((n, channels), np.nan, np.float32)
        for phase in (0, 1):
            for t in order:
                squeeze_excite_tile(sums, rows * cols, w1, b1, parts, b2, partials, gate, t, phase)
        gates.append(gate)
    np.testing.assert_array_equal(gates[0], gates[1])
    expected = hardsigmoid(relu(activation.mean(axis=(1, 2)) @ w1 + b1) @ w2 + b2)
    assert_close(gates[0], expected, "SE gate in parts")
    assert_close(kernels.squeeze_excite_gate(sums, rows * cols, w1, b1, w2, b2), expected, "SE gate")


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
def test_conv2d_stem(parallel):
    rng = np.random.default_rng(5)
    x, w, b = data(rng, 2, 33, 30, 3), data(rng, 3, 3, 3, 16), data(rng, 16)
    y = kernels.conv2d(x, w, b, "hardswish", stride=2, padding=1, parallel=parallel)
    expected = hardswish(reference.conv2d(x.astype(np.float64), w.astype(np.float64), stride=2, padding=1) + b)
    assert_close(y, expected, "stem conv")
    # asymmetric padding; and a kernel that is not 3x3 over 3 channels (the general path)
    x = data(rng, 1, 5, 30, 3)
    y = kernels.conv2d(x, w, b, None, stride=1, padding=(0, 1, 2, 0), parallel=parallel)
    expected = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=((0, 1), (2, 0))) + b
    assert_close(y, expected, "asymmetric padding")
    x, w = data(rng, 2, 9, 8, 4), data(rng, 2, 5, 4, 7)
    y = kernels.conv2d(x, w, b[:7], "relu", stride=(1, 2), padding=(1, 0, 2, 1), parallel=parallel)
    expected = relu(reference.conv2d(x.astype(np.float64), w.astype(np.float64), stride=(1, 2),
                                     padding=((1, 0), (2, 1))) + b[:7])
    assert_close(y, expected, "2x5 conv over 4 channels")


@given(g=windows(), cin=st.sampled_from([3, 3, 1, 5, 24, 32]), use_blas=st.booleans(), packed=PACKED)
def test_conv2d_tile_matches_reference(g, cin, use_blas, packed):
    # the stem's direct taps (3x3 over 3 channels) and the gathered-block GEMM path (any other)
    rng = np.random.default_rng(7)
    cout = g["channels"]
    x, w, b = data(rng, g["n"], g["h"], g["w"], cin), data(rng, *g["kernel"], cin, cout), data(rng, cout)
    y = kernels.conv2d(x, w, b, g["activation"], g["stride"], g["padding"], parallel=g["parallel"], use_blas=use_blas,
                       packed=packed)
    expected = reference.conv2d(x.astype(np.float64), w.astype(np.float64), stride=g["stride"],
                                padding=oracle_padding(g["padding"]))
    assert_close(y, ACTIVATION[g["activation"]](expected + b), f"conv {g}")


@given(g=windows(max_channels=80))
def test_depthwise_tile_matches_reference(g):
    rng = np.random.default_rng(8)
    c = g["channels"]
    x, w, b = data(rng, g["n"], g["h"], g["w"], c), data(rng, *g["kernel"], c), data(rng, c)
    y, sums = kernels.depthwise_conv(x, w, b, g["activation"], g["stride"], g["padding"], with_row_sums=True,
                                     parallel=g["parallel"])
    expected = ACTIVATION[g["activation"]](reference.depthwise_conv2d(
        x.astype(np.float64), w.astype(np.float64), stride=g["stride"], padding=oracle_padding(g["padding"])) + b)
    assert_close(y, expected, f"depthwise {g}")
    assert_close(sums, expected.sum(axis=2), "row sums")


@pytest.mark.skipif(not register_tile.available(), reason="the depthwise register tile needs AVX-512, or AVX2 and FMA")
@given(n=st.integers(1, 2), h=st.integers(1, 20), w=st.integers(1, 30), channels=st.integers(1, 72),
       stride=st.tuples(st.integers(1, 2), st.integers(1, 2)), padding=st.tuples(*[st.integers(0, 3)] * 4),
       activation=st.sampled_from(list(ACTIVATION)), kernel=st.sampled_from([3, 5]))
def test_depthwise_register_tile_matches_reference(n, h, w, channels, stride, padding, activation, kernel):
    # ops.depthwise_avx512, 3x3 and 5x5: output rows in register blocks of 8 pixels (the last
    # block overlapping), borders and narrow rows by clamped taps or (5x5, stride 1) from
    # zero-padded input rows in one block; channel counts ending in a 16-lane, 8-lane or masked
    # vector; strides 1 and 2 each way; serial and parallel bit for bit
    pt, pb, pl, pr = padding
    h, w = max(h, kernel - pt - pb), max(w, kernel - pl - pr)
    rng = np.random.default_rng(14)
    x, wt, b = data(rng, n, h, w, channels), data(rng, kernel, kernel, channels), data(rng, channels)
    y, sums = kernels.depthwise_conv(x, wt, b, activation, stride, padding, with_row_sums=True, packed=True)
    expected = ACTIVATION[activation](reference.depthwise_conv2d(
        x.astype(np.float64), wt.astype(np.float64), stride=stride, padding=((pt, pb), (pl, pr))) + b)
    assert_close(y, expected, f"{kernel}x{kernel} depthwise register tile")
    assert_close(sums, expected.sum(axis=2), "its row sums")
    serial = kernels.depthwise_conv(x, wt, b, activation, stride, padding, parallel=False, packed=True)
    assert np.array_equal(serial, y)


def test_depthwise_register_tile_takes_5x5_and_3x3_kernels():
    from npmobilenet.inference.layers import FusedDepthwise
    from npmobilenet.ops import depthwise_avx512

    x, b = np.zeros((1, 8, 8, 4), np.float32), np.zeros(4, np.float32)
    if register_tile.available():
        with pytest.raises(ValueError, match="packed=True takes a 5x5 kernel, or a 3x3 one at strides 1 and 2"):
            kernels.depthwise_conv(x, np.zeros((3, 3, 4), np.float32), b, stride=3, packed=True)
        with pytest.raises(ValueError, match="packed=True takes a 5x5 kernel"):
            kernels.depthwise_conv(x, np.zeros((7, 7, 4), np.float32), b, packed=True)

    def layer(kernel, stride=(1, 1), dilation=(1, 1), packed=None):
        return FusedDepthwise("dw", ("x",), ("y",), np.zeros((*kernel, 4), np.float32), b, None, stride, (1, 1, 1, 1),
                              dilation, packed=packed)

    for kernel, stride, dilation in (((3, 3), (3, 3), (1, 1)), ((3, 3), (1, 1), (2, 2)), ((7, 7), (1, 1), (1, 1))):
        with pytest.raises(ValueError, match=re.escape(f"got {kernel}, stride {stride}, dilation {dilation}")):
            layer(kernel, stride, dilation, packed=True)
        assert not layer(kernel, stride, dilation).packed
    # by default 5x5 and 3x3 layers take it where the register tiles are enabled (AVX-512, AVX2)
    assert layer((5, 5)).packed == depthwise_avx512.enabled() == register_tile.enabled()
    assert layer((3, 3), (2, 2)).packed == depthwise_avx512.enabled()


@pytest.mark.skipif(not register_tile.available(), reason="the depthwise register tile needs AVX-512, or AVX2 and FMA")
def test_packed_3x3_depthwise_layer_runs_the_register_tile_on_wide_and_narrow_maps():
    # 14x14 rows (12 interior pixels: blocks read x, borders by clamped taps) and 7x7 ones (5:
    # every pixel by clamped taps), without a workspace, in the op table's row and through `call`
    from npmobilenet.inference.layers import FusedDepthwise
    from npmobilenet.inference.program import DEPTHWISE_3X3_BLOCKS, RUN, _slot

    rng = np.random.default_rng(16)
    w, b = data(rng, 3, 3, 24), data(rng, 24)
    layer = FusedDepthwise("dw", ("x",), ("y",), w, b, "relu6", (1, 1), (1, 1, 1, 1), packed=True)
    layer.param_offsets = {"weight_tiled": 0, "bias_tiled": 0}
    for size in (7, 14):
        shapes = [(1, size, size, 24)]
        (row,) = layer.program_ops([0, 1, 2], shapes)
        assert row[RUN] == 0 and _slot(row) == DEPTHWISE_3X3_BLOCKS and layer.workspace_shapes(shapes) == []
        x, y = data(rng, 1, size, size, 24), np.empty((1, size, size, 24), np.float32)
        kernel, args = layer.call([x, y], False, 0)
        kernel(*args)
        expected = np.clip(reference.depthwise_conv2d(x.astype(np.float64), w.astype(np.float64), padding=1) + b, 0, 6)
        assert_close(y, expected, f"packed 3x3 on {size}x{size}")


@pytest.mark.skipif(not register_tile.available(), reason="the depthwise register tile needs AVX-512, or AVX2 and FMA")
@pytest.mark.parametrize("dilation", [1, 2])
def test_depthwise_5x5_register_tile_dilated_and_wide(dilation):
    # dilated kernels (LR-ASPP's V3 backbone at output stride 16) go tap by tap; 14x14 rows (two
    # blocks of 8 pixels, overlapping) and 7x7 ones (one block of 7) at V3's channel counts
    from npmobilenet.ops.depthwise_avx512 import DEPTHWISE_5X5_FORWARD, callees_5x5, workspace_elements
    from npmobilenet.ops.epilogue import HARDSWISH

    rng = np.random.default_rng(15)
    for size, channels in ((14, 120), (7, 88), (28, 40)):
        x, wt, b = data(rng, 1, size, size, channels), data(rng, 5, 5, channels), data(rng, channels)
        pad = 2 * dilation
        y = np.empty_like(x)
        workspace = np.empty((3, workspace_elements(size, size, channels, 1, 1, dilation, dilation)), np.float32)
        DEPTHWISE_5X5_FORWARD[1](x, np.ascontiguousarray(wt.reshape(25, channels)), 5, 5, b, HARDSWISH,
                                 np.zeros((0, 1, 1), np.float32), 1, 1, pad, pad, dilation, dilation, y, workspace,
                                 *callees_5x5(1, dilation, dilation))
        expected = hardswish(reference.depthwise_conv2d(x.astype(np.float64), wt.astype(np.float64), padding=pad,
                                                        dilation=dilation) + b)
        assert_close(y, expected, f"5x5 depthwise, dilation {dilation}, {size}x{size}x{channels}")


@given(n=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12), cin=st.integers(1, 40),
       cout=st.integers(1, 300), activation=st.sampled_from(list(ACTIVATION)), parallel=st.booleans(),
       gated=st.booleans(), residual=st.booleans(), packed=PACKED)
def test_pointwise_tile_matches_reference(n, h, w, cin, cout, activation, parallel, gated, residual, packed):
    rng = np.random.default_rng(9)
    x, wt, b = data(rng, n, h, w, cin), data(rng, cin, cout), data(rng, cout)
    gate = rng.random((n, cin)).astype(np.float32) if gated else None
    res = data(rng, n, h, w, cout) if residual else None
    activation = None if residual else activation
    y = kernels.pointwise_conv(x, wt, b, activation, residual=res, gate=gate, parallel=parallel, packed=packed)
    x64 = x.astype(np.float64) * (gate[:, None, None, :] if gated else 1)
    expected = ACTIVATION[activation](reference.pointwise_conv2d(x64, wt.astype(np.float64)) + b)
    assert_close(y, expected + (res if residual else 0), "pointwise")


def test_conv2d_tiles_are_the_same_for_every_thread_count():
    # V4's 3x3 over 32 channels: several tiles, each gathered into its worker's block; the serial
    # build, the parallel build and the Numba product (no BLAS) give identical bits per backend
    rng = np.random.default_rng(10)
    x, w, b = data(rng, 1, 57, 63, 32), data(rng, 3, 3, 32, 24), data(rng, 24)
    assert -(-29 * 32 // conv_ops.tile_pixels(29 * 32, 32, 3, 3)) > 2
    for use_blas in (True, False):
        serial = kernels.conv2d(x, w, b, "relu", 2, 1, parallel=False, use_blas=use_blas)
        parallel = kernels.conv2d(x, w, b, "relu", 2, 1, parallel=True, use_blas=use_blas)
        assert np.array_equal(serial, parallel)
    if register_tile.available():
        serial = kernels.conv2d(x, w, b, "relu", 2, 1, parallel=False, packed=True)
        assert np.array_equal(serial, kernels.conv2d(x, w, b, "relu", 2, 1, parallel=True, packed=True))


@pytest.mark.skipif(not register_tile.available(), reason="the register tile needs AVX-512, or AVX2 and FMA")
@pytest.mark.parametrize("rows, cin, cout", [(300, 96, 576), (49, 960, 160), (17, 24, 40), (9, 7, 8), (130, 144, 24),
                                              (8, 16, 17), (3, 5, 200), (45, 40, 72), (7, 16, 32)])
@pytest.mark.parametrize("activation", [None, "relu6", "hardswish"])
def test_packed_pointwise_every_column_remainder(rows, cin, cout, activation):
    # every way a tile's columns end: pairs of 16-channel slivers, a pair whose second is 8 lanes
    # wide (40 = 32 + 8), one sliver of 16 or of 8 lanes, masked stores; rows not a multiple of 8
    # (a last block of 1-4 rows runs the half-height loop, of 5-7 the full one; AVX2's blocks of 6:
    # 1-3, 4-5); and the weight packing's round trip
    from npmobilenet.ops.register_tile import packed_weight, unpacked_weight

    rng = np.random.default_rng(11)
    x, wt, b = data(rng, 1, rows, 1, cin), data(rng, cin, cout), data(rng, cout)
    assert np.array_equal(unpacked_weight(packed_weight(wt), cin, cout), wt)
    linear = reference.pointwise_conv2d(x.astype(np.float64), wt.astype(np.float64)) + b
    for parallel in (False, True):
        y = kernels.pointwise_conv(x, wt, b, activation, parallel=parallel, packed=True)
        assert_close(y, ACTIVATION[activation](linear), f"packed pointwise {rows}x{cin}->{cout}")
    res = data(rng, 1, rows, 1, cout)
    assert_close(kernels.pointwise_conv(x, wt, b, residual=res, packed=True), linear + res, "packed + residual")


@pytest.mark.skipif(not has_avx2(), reason="the AVX2 register tile needs AVX2 and FMA")
@pytest.mark.parametrize("rows, seg, segs, cout", [(1, 3, 1, 16), (7, 16, 1, 40), (13, 24, 1, 9), (6, 9, 3, 24),
                                                   (25, 12, 3, 200), (4, 96, 1, 576), (2, 5, 2, 24), (5, 9, 3, 24),
                                                   (9, 7, 1, 8), (1, 33, 1, 1000), (3, 40, 1, 120)])
@pytest.mark.parametrize("activation", [None, "relu6", "hardswish"])
def test_avx2_tile_span_matches_reference(rows, seg, segs, cout, activation):
    # ops/matmul_avx2.py called directly (also on AVX-512 machines, where fused inference runs the
    # 8 x 32 tile): blocks of 6 rows (a last one of 1-3 rows sums only those), 16-channel slivers
    # as two 8-lane halves, a last sliver of <= 8 channels in one (alone, or after whole ones, at
    # 1 to 25 rows), masked stores; input rows as
    # `segs` runs of `seg` numbers `gap` apart (a receptive field read in place), and the residual
    from npmobilenet.ops import matmul_avx2
    from npmobilenet.ops.epilogue import ACTIVATIONS

    rng = np.random.default_rng(18)
    gap, xstep = seg + 5, 2 * seg + 1            # runs not contiguous, rows overlapping
    x, wt, b = data(rng, (rows - 1) * xstep + (segs - 1) * gap + seg), data(rng, seg * segs, cout), data(rng, cout)
    fields = np.stack([np.concatenate([x[i * xstep + g * gap:i * xstep + g * gap + seg] for g in range(segs)])
                       for i in range(rows)]).astype(np.float64)
    linear = fields @ wt + b
    packed = register_tile.packed_weight(wt).reshape(-1)
    for residual in (None, data(rng, rows, cout)):
        y = np.full((rows, cout + 3), 7.0, np.float32)      # a row stride past cout: the pad stays
        res = np.zeros(0, np.float32) if residual is None else np.pad(residual, ((0, 0), (0, 3))).reshape(-1)
        act = ACTIVATIONS[None if residual is not None else activation]
        matmul_avx2.product_span(x, 0, xstep, seg, segs, gap, packed, b, act, res, y.reshape(-1), 0, cout + 3, rows,
                                 0, cout)
        expected = linear + residual if residual is not None else ACTIVATION[activation](linear)
        assert_close(y[:, :cout], expected, f"AVX2 tile {rows}x{seg}*{segs}->{cout}")
        assert (y[:, cout:] == 7.0).all()

@pytest.mark.parametrize("use_blas", BACKENDS)
def test_linear_and_pool(use_blas):
    rng = np.random.default_rng(6)
    x, w, b = data(rng, 3, 40), data(rng, 40, 100), data(rng, 100)
    for activation in (None, "hardswish"):
        assert_close(kernels.linear(x, w, b, activation, use_blas=use_blas),
                     ACTIVATION[activation](x.astype(np.float64) @ w + b), f"linear {activation}")
    images = data(rng, 2, 7, 5, 11)
    assert_close(kernels.global_avg_pool(images), images.astype(np.float64).mean(axis=(1, 2)), "global average pool")


@pytest.mark.parametrize("use_blas", BACKENDS)
def test_one_row_views_with_any_row_stride(use_blas):
    # x[None] is C-contiguous with a row stride of 0: the GEMM's leading dimension must still be
    # at least the row's length (OpenBLAS refused it, printed an error and left y unwritten)
    rng = np.random.default_rng(17)
    x, w, b = data(rng, 40), data(rng, 40, 100), data(rng, 100)
    assert x[None].strides[0] == 0
    assert_close(kernels.linear(x[None], w, b, "relu", use_blas=use_blas),
                 np.maximum(x[None].astype(np.float64) @ w + b, 0), "linear on x[None]")


@pytest.mark.parametrize("use_blas", BACKENDS)
@pytest.mark.parametrize("rows", [1, 4, 5, 9])
def test_linear_on_packed_column_blocks(rows, use_blas):
    # up to tiles.GEMV_MAX_ROWS rows a streaming loop, above it SGEMM, both on the column blocks
    # of `linear_blocks` (the last one padded: 100 columns in blocks of 32)
    from npmobilenet.inference import tiles
    rng = np.random.default_rng(rows)
    x, w, b = data(rng, rows, 40), data(rng, 40, 100), data(rng, 100)
    blocks = tiles.linear_blocks(w, tiling.linear_block_cols(100))
    assert blocks.shape == (4, 40, 32) and np.array_equal(np.concatenate(list(blocks), axis=1)[:, :100], w)
    assert_close(kernels.linear(x, w, b, "relu6", use_blas=use_blas),
                 np.clip(x.astype(np.float64) @ w + b, 0, 6), f"linear, {rows} rows")


@pytest.mark.skipif(not register_tile.available(), reason="the register tile needs AVX-512, or AVX2 and FMA")
@pytest.mark.parametrize("activation", [None, "relu", "hardswish"])
def test_packed_linear_is_the_same_bits_for_every_batch(activation):
    # tiles.linear_tile_packed: one register tile for every row count, so each image's outputs
    # are the same bits alone, in a batch of 3 (a half block), of 7 and of 32 (SGEMM's sums and
    # the streaming loop's, between which linear_tile switches at GEMV_MAX_ROWS, differ in the
    # last bits); 1000 columns in blocks of 256, the last of 232 (a sliver of 8 channels)
    rng = np.random.default_rng(19)
    x, w, b = data(rng, 32, 96), data(rng, 96, 1000), data(rng, 1000)
    whole = kernels.linear(x, w, b, activation, packed=True)
    assert_close(whole, ACTIVATION[activation](x.astype(np.float64) @ w + b), "packed linear")
    assert np.array_equal(whole, kernels.linear(x, w, b, activation, parallel=False, packed=True))
    for rows in (1, 3, 7):
        parts = np.concatenate([kernels.linear(x[i:i + rows], w, b, activation, packed=True)
                                for i in range(0, 32, rows)])
        assert np.array_equal(parts, whole), f"batches of {rows}"
    with pytest.raises(ValueError, match="no sigmoid"):
        kernels.linear(x, w, b, "sigmoid", packed=True)

def test_fused_linear_packs_its_weight_once_and_never_for_the_sigmoid():
    # slivers where the register tile runs, column blocks otherwise and for the sigmoid (LR-ASPP's
    # gate), which the tile does not compute; either way one copy of the weight, rebuilt on request
    from npmobilenet.inference.layers import FusedLinear

    rng = np.random.default_rng(20)
    w, b = data(rng, 40, 100), data(rng, 100)

    def layer(activation, packed=None):
        return FusedLinear("fc", ("x",), ("y",), w, b, activation, packed=packed)

    assert layer(None).packed == register_tile.enabled() and not layer("sigmoid").packed
    blocks = layer(None, packed=False)
    assert blocks.weight_names == ("weight_blocks", "bias") and not hasattr(blocks, "_weight")
    assert np.array_equal(blocks.weight, w)
    slivers = layer("relu", packed=True)
    assert slivers.weight_names == ("weight_packed", "bias") and np.array_equal(slivers.weight, w)
    with pytest.raises(ValueError, match="fc: the register tile computes no sigmoid"):
        layer("sigmoid", packed=True)

def test_linear_sigmoid():
    # LR-ASPP's gate: sigmoid(x w), its own epilogue loop; saturates without overflow
    rng = np.random.default_rng(16)
    x, w, b = data(rng, 3, 40), data(rng, 40, 70) * 10, data(rng, 70)
    want = 1 / (1 + np.exp(-(x.astype(np.float64) @ w + b)))
    assert_close(kernels.linear(x, w, b, "sigmoid"), want, "linear sigmoid")
    with pytest.raises(ValueError, match="activation must be one of"):
        kernels.pointwise_conv(data(rng, 1, 2, 2, 4), data(rng, 4, 4), data(rng, 4), "sigmoid")


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("in_size, out_size", [((5, 7), (13, 9)), ((9, 8), (4, 3)), ((1, 1), (3, 5)), ((6, 6), (6, 6))])
def test_resize_matches_reference(parallel, in_size, out_size):
    # the fused tile computes its taps itself; the reference multiplies by interpolation matrices
    rng = np.random.default_rng(17)
    x = data(rng, 2, *in_size, 19)
    assert_close(kernels.resize(x, out_size, parallel=parallel), reference.bilinear_resize(x, out_size), "resize")
    gate = data(rng, 2, 19)
    assert_close(kernels.resize(x, out_size, gate, parallel=parallel),
                 reference.bilinear_resize(x * gate[:, None, None, :], out_size), "gated resize")


def test_resize_tiles_are_the_same_for_every_thread_count():
    rng = np.random.default_rng(18)
    x, gate = data(rng, 2, 17, 13, 40), data(rng, 2, 40)
    assert tiling.resize_tile_rows(200, 40) == 2         # several output rows per tile
    # the parallel build on any number of threads gives the same bits (the fused model's op table
    # calls the tile as the serial build does: tests/test_inference_program.py)
    runs = []
    for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
        with numba_threads(threads):
            runs.append(kernels.resize(x, (61, 200), gate, parallel=True))
    assert all(np.array_equal(runs[0], run) for run in runs)
    # and the serial build too: the tile has no fast-math, so inlined into either it rounds alike
    assert np.array_equal(kernels.resize(x, (61, 200), gate, parallel=False), runs[0])
    with pytest.raises(ValueError, match="gate must be"):
        kernels.resize(x, (4, 4), gate[:1])


def test_blas_is_found_and_single_threaded_restores():
    blas = find_blas()
    if blas is None:
        pytest.skip("no ILP64 OpenBLAS in this numpy (the Numba matrix product is used)")
    before = blas._get_threads()
    with blas.single_threaded():
        assert blas._get_threads() == 1
        with blas.single_threaded():        # re-entrant
            assert blas._get_threads() == 1
        assert blas._get_threads() == 1
    assert blas._get_threads() == before


def test_tiling_rules_depend_on_shapes_only():
    # tiles are what makes results identical across thread counts: check their invariants
    for rows in (1, 7, 49, 196, 511, 512, 3136, 100_000):
        for cin, cout in ((16, 96), (960, 160), (320, 1280), (24, 24)):
            tile_rows, tile_cols = tiling.pointwise_tiles(rows, cin, cout)
            assert 1 <= tile_rows <= max(rows, 1) and 1 <= tile_cols
            tiles = -(-rows // tile_rows) * -(-cout // tile_cols)
            assert tiles >= min(2, rows), (rows, cin, cout)
    assert tiling.linear_block_cols(1000) % 16 == 0
    for pixels in (1, 7, 200, 784, 3136, 12544, 100_000):    # the standard convolution's blocks
        tile = conv_ops.tile_pixels(pixels, 32, 3, 3)
        tiles = -(-pixels // tile)
        assert 1 <= tile <= 128 and (tiles % 2 == 0 or tiles == 1), (pixels, tile)
