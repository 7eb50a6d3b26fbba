"""The int8 pointwise kernel on int16 pairs (AVX2's vpmaddwd, where there is no VNNI): bit for bit
against the reference (odd shapes, extreme values, one-pixel rows, any row and channel split, a
standard convolution's receptive fields, the fused residual add), vpmaddwd in its machine code,
the pair layout, the NPMOBILENET_NO_PAIRS switch; and the AVX2 table lookup."""
import numba
import numpy as np
import pytest

from npmobilenet.compression import qkernels, vnni
from npmobilenet.compression.qops import quantize_multipliers
from npmobilenet.ops import reference_int8 as qreference
from npmobilenet.ops.vector16 import has_avx2
from test_vnni import _int8, _requant_args

needs_avx2 = pytest.mark.skipif(not has_avx2(), reason="this CPU has no AVX2")


def _pairs(x, zx, w, bias, multiplier, shift, zy, lo, hi, residual=qkernels.NO_RESIDUAL, add=qkernels.NO_ADD,
           field=qkernels.NO_FIELD, y=None, ranges=None):
    """The pairs block kernel called directly, over `ranges` [(rows, columns)] (the whole by default)."""
    constants = qkernels.vnni_arguments(w, zx, bias, multiplier, shift, pairs=True)
    y = np.zeros((x.shape[0], w.shape[1]), np.int8) if y is None else y
    for (r0, r1), (c0, c1) in ranges or [((0, y.shape[0]), (0, constants[1].shape[0]))]:
        qkernels._pointwise_int8_pairs_block(x, *constants, np.int32(zy), np.int32(lo), np.int32(hi), residual, add,
                                             field, y, r0, r1, c0, c1)
    return y


@pytest.mark.parametrize("cin, cout", [(1, 1), (2, 16), (5, 17), (32, 16), (61, 47), (9, 1024), (3, 2040)])
def test_pair_words_hold_2_input_by_16_output_channels(cin, cout):
    rng = np.random.default_rng(cin * 100 + cout)
    w = _int8(rng, (cin, cout))
    words, colsum = vnni.pack_pairs(w)
    pairs, width = -(-cin // 2), -(-cout // 16) * 16
    width += 16 if width % 1024 == 0 else 0          # rows of words never a multiple of 4 KiB
    assert words.dtype == np.int32 and words.shape == (pairs * width,)
    halves = words.view(np.int16).reshape(pairs, width, 2)   # half j of word [k, c]: w[2k + j, c]
    padded = np.zeros((pairs * 2, width), np.int16)
    padded[:cin, :cout] = w
    assert np.array_equal(halves.transpose(0, 2, 1).reshape(pairs * 2, width), padded)
    assert np.array_equal(colsum, padded.astype(np.int64).sum(axis=0))
    # kept once per array and packing: the pairs beside VNNI's quads, neither taken for the other
    assert vnni.packed_weight(w, vnni.pack_pairs)[0] is vnni.packed_weight(w, vnni.pack_pairs)[0]
    assert np.array_equal(vnni.packed_weight(w, vnni.pack_pairs)[0], words)
    assert np.array_equal(vnni.packed_weight(w)[0], vnni.pack_weight(w)[0])


@needs_avx2
@pytest.mark.parametrize("xv, wv, zx", [(-128, -128, 127), (127, -128, -128), (-128, 127, -128), (127, 127, 127)])
def test_extreme_inputs_weights_and_zero_points(xv, wv, zx):
    # |x - z_x| = 255 and |w| = 128 on every tap, over 1001 taps: accumulators near +-2^25
    rows, cin, cout = 19, 1001, 33
    x = np.full((rows, cin), xv, np.int8)
    x[::3, ::7] = -xv - 1
    w = np.full((cin, cout), wv, np.int8)
    bias, multiplier, shift = np.zeros(cout, np.int32), *quantize_multipliers(np.full(cout, 100 / (cin * 255 * 128)))
    for zy, lo, hi in ((0, -128, 127), (9, -5, 6)):
        args = (bias, multiplier, shift, zy, lo, hi)
        expected = qreference.pointwise(x, zx, w, *args)
        assert np.array_equal(_pairs(x, zx, w, *args), expected)
        assert lo > -128 or len(np.unique(expected)) > 1


@needs_avx2
@pytest.mark.parametrize("rows, cin, cout", [(1, 5, 16), (1, 1280, 1000), (1, 576, 1024), (3, 7, 33), (64, 96, 24),
                                             (130, 17, 40), (203, 45, 150)])
def test_matches_the_reference_for_any_row_and_channel_split(rows, cin, cout):
    rng = np.random.default_rng(rows * cin + cout)
    x, w = _int8(rng, (rows, cin)), _int8(rng, (cin, cout))
    zx = int(rng.integers(-128, 128))
    args = _requant_args(rng, cout, cin)
    expected = qreference.pointwise(x, zx, w, *args)
    assert np.array_equal(_pairs(x, zx, w, *args), expected)
    assert len(np.unique(expected)) > 1
    width = qkernels.vnni_arguments(w, zx, *args[:3], pairs=True)[1].shape[0]
    cuts = sorted({0, min(rows, 1), rows // 2 + 1, rows} & set(range(rows + 1)))
    ranges = [((a, b), (c, min(c + 16, width))) for a, b in zip(cuts, cuts[1:]) for c in range(0, width, 16)]
    assert np.array_equal(_pairs(x, zx, w, *args, ranges=ranges), expected)


@needs_avx2
def test_parallel_driver_and_public_function_give_the_same_bits(monkeypatch):
    monkeypatch.setenv("NPMOBILENET_NO_PAIRS", "0")
    rng = np.random.default_rng(13)
    rows, cin, cout = 203, 45, 40
    x, w = _int8(rng, (rows, cin)), _int8(rng, (cin, cout))
    args = _requant_args(rng, cout, cin)
    expected = qreference.pointwise(x, -7, w, *args)
    bias, multiplier, shift, zy, lo, hi = args
    constants = qkernels.vnni_arguments(w, -7, bias, multiplier, shift, pairs=True)
    for chunks in (1, 3, 8, rows):
        y = np.zeros_like(expected)
        qkernels._pointwise_int8_pairs_parallel(x, *constants, np.int32(zy), np.int32(lo), np.int32(hi),
                                                qkernels.NO_RESIDUAL, qkernels.NO_ADD, qkernels.NO_FIELD, y, chunks)
        assert np.array_equal(y, expected)
    if not vnni.vnni_enabled():
        assert vnni.pairs_enabled() and vnni.packed_enabled()
        assert qkernels.packed_kernels()[0] is qkernels._pointwise_int8_pairs_rows
        assert np.array_equal(qkernels.pointwise_int8(x, -7, w, *args), expected)


@needs_avx2
def test_fused_residual_add_matches_the_reference_add():
    rng = np.random.default_rng(21)
    rows, cin, cout = 77, 24, 40
    x, w, residual = _int8(rng, (rows, cin)), _int8(rng, (cin, cout)), _int8(rng, (rows, cout))
    args = _requant_args(rng, cout, cin)
    zy = args[3]
    (ma, mb, my), (sa, sb, sy) = quantize_multipliers(np.array([0.4, 0.7, 0.9]) / (1 << 20) * np.array([1, 1, 1 << 20]))
    zb, zo = 5, -3
    add = qkernels.add_params(zb, ma, sa, mb, sb, zo, my, sy)
    conv = qreference.pointwise(x, 2, w, *args)
    expected = qreference.add(conv, zy, ma, sa, residual, zb, mb, sb, qkernels.ADD_LEFT_SHIFT, zo, my, sy)
    assert len(np.unique(expected)) > 1
    assert np.array_equal(_pairs(x, 2, w, *args, residual=residual, add=add), expected)


@needs_avx2
@pytest.mark.parametrize("cin, k, stride, padding, dilation", [(3, 3, 2, (0, 1, 0, 1), 1), (24, 3, 1, (1, 1, 1, 1), 1),
                                                              (5, 5, 2, (2, 1, 1, 2), 1), (4, 3, 1, (2, 2, 2, 2), 2),
                                                              (2, 3, 1, (0, 0, 0, 0), 1), (8, 2, 1, (0, 1, 0, 1), 1)])
def test_standard_convolution_reads_its_receptive_fields_in_the_kernel(cin, k, stride, padding, dilation, monkeypatch):
    # the fields gathered as the VNNI kernel's bytes and widened to pairs, for any range of output
    # pixels (inside an output row, across images)
    monkeypatch.setenv("NPMOBILENET_NO_PAIRS", "0")
    rng = np.random.default_rng(cin * k)
    x, w = _int8(rng, (2, 9, 11, cin)), _int8(rng, (k, k, cin, 24))
    bias, multiplier, shift, zy, lo, hi = _requant_args(rng, 24, k * k * cin)
    geometry = ((stride, stride), padding, (dilation, dilation))
    expected = qreference.conv2d(x, -3, w, bias, multiplier, shift, zy, lo, hi, *geometry)
    out_hw = expected.shape[1:3]
    field = qkernels.conv_field(x.shape, k, k, *geometry[:1], padding, geometry[2], out_hw, -3)
    rows = expected.shape[0] * out_hw[0] * out_hw[1]
    y = np.zeros((rows, 24), np.int8)
    ranges = [((a, b), (0, 32)) for a, b in ((0, 7), (7, rows // 2 + 3), (rows // 2 + 3, rows))]
    _pairs(x.reshape(-1, cin), -3, w.reshape(-1, 24), bias, multiplier, shift, zy, lo, hi, field=field, y=y,
           ranges=ranges)
    assert np.array_equal(y.reshape(expected.shape), expected)
    if not vnni.vnni_enabled():
        got = qkernels.conv2d_int8(x, -3, w, bias, multiplier, shift, zy, lo, hi, *geometry, expected.shape)
        assert np.array_equal(got, expected)


@needs_avx2
def test_the_kernel_is_compiled_to_vpmaddwd():
    # a fresh, uncached compilation: Numba shows no assembly for code loaded from its cache
    kernel = numba.njit(qkernels._pointwise_int8_pairs_block.py_func)
    rng = np.random.default_rng(17)
    x, w = _int8(rng, (9, 8)), _int8(rng, (8, 16))
    bias, multiplier, shift, zy, lo, hi = _requant_args(rng, 16, 8)
    y = np.zeros((9, 16), np.int8)
    kernel(x, *qkernels.vnni_arguments(w, 1, bias, multiplier, shift, pairs=True), np.int32(zy), np.int32(lo),
           np.int32(hi), qkernels.NO_RESIDUAL, qkernels.NO_ADD, qkernels.NO_FIELD, y, 0, 9, 0, 16)
    assert np.array_equal(y, qreference.pointwise(x, 1, w, bias, multiplier, shift, zy, lo, hi))
    asm = kernel.inspect_asm(kernel.signatures[0])
    assert "vpmaddwd" in asm and "ymm" in asm


def test_the_switch_forces_the_portable_kernel(monkeypatch):
    def refuse(*args):
        raise AssertionError("the pairs kernel ran under NPMOBILENET_NO_PAIRS=1")

    monkeypatch.setattr(qkernels, "_pointwise_int8_pairs_rows", refuse)
    monkeypatch.setattr(qkernels, "_pointwise_int8_pairs_parallel", refuse)
    monkeypatch.setenv("NPMOBILENET_NO_PAIRS", "1")
    assert not vnni.pairs_enabled() and vnni.packed_enabled() == vnni.vnni_enabled()
    rng = np.random.default_rng(1)
    x, w = _int8(rng, (10, 7)), _int8(rng, (7, 5))
    args = _requant_args(rng, 5, 7)
    assert np.array_equal(qkernels.pointwise_int8(x, 3, w, *args), qreference.pointwise(x, 3, w, *args))
    monkeypatch.setenv("NPMOBILENET_NO_PAIRS", "0")
    assert vnni.pairs_enabled() == (has_avx2() and not vnni.vnni_enabled())


@needs_avx2
@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 100, 4099])
def test_lookup_32_values_a_step_matches_the_table(size):
    # vpshufb on the low nibble over 16 sub-tables, chosen by the high nibble; the tail scalar
    rng = np.random.default_rng(size)
    table = _int8(rng, (256,))
    x = _int8(rng, (size,))
    x[:min(size, 4)] = [-128, 127, 0, -1][:min(size, 4)]
    y = np.zeros(size, np.int8)
    qkernels._lookup_int8_avx2(x, table, y)
    assert np.array_equal(y, table[x.astype(np.int32) + 128])
    if vnni.pairs_enabled() and not vnni.vnni_enabled():
        kernel, _ = qkernels.lookup_int8_call(x, table, y)
        assert kernel is qkernels._lookup_int8_avx2
