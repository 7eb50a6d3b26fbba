"""The AVX-512 VNNI int8 pointwise kernel: bit for bit against the reference and the portable kernel
(odd shapes, extreme values, clamps, any row split), vpdpbusd in its machine code, the packed
weight layout, and the NPMOBILENET_NO_VNNI switch."""
import gc

import numba
import numpy as np
import pytest

from npmobilenet.compression import qkernels, vnni
from npmobilenet.compression.qops import quantize_multipliers
from npmobilenet.ops import reference_int8 as qreference

needs_vnni = pytest.mark.skipif(not vnni.has_vnni(), reason="this CPU has no AVX-512 VNNI (avx512vnni, avx512bw)")

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _int8(rng, shape):
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def _requant_args(rng, cout, cin):
    bias = rng.integers(-5000, 5000, cout).astype(np.int32)
    multiplier, shift = quantize_multipliers(np.exp(rng.uniform(np.log(1e-4), np.log(0.05), cout)) / np.sqrt(cin))
    zy = int(rng.integers(-128, 128))
    lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2))
    return bias, multiplier, shift, zy, lo, hi


def _vnni_serial(x, zx, w, bias, multiplier, shift, zy, lo, hi, row_start=0, row_end=None):
    """The VNNI row kernel called directly, whatever NPMOBILENET_NO_VNNI says."""
    y = np.zeros((x.shape[0], w.shape[1]), np.int8)
    row_end = x.shape[0] if row_end is None else row_end
    constants = qkernels.vnni_arguments(w, zx, bias, multiplier, shift, pairs=False)
    qkernels._pointwise_int8_vnni_rows(x, *constants, np.int32(zy), np.int32(lo), np.int32(hi), qkernels.NO_RESIDUAL,
                                       qkernels.NO_ADD, qkernels.NO_FIELD, y, row_start, row_end)
    return y


# -- the packed layout (any CPU) -------------------------------------------------------------------
@pytest.mark.parametrize("cin, cout", [(1, 1), (4, 16), (5, 17), (32, 16), (61, 47), (9, 1024), (3, 2040)])
def test_packed_words_hold_4_input_by_16_output_channels(cin, cout):
    rng = np.random.default_rng(cin * 100 + cout)
    w = _int8(rng, (cin, cout))
    words, colsum = vnni.pack_weight(w)
    groups, width = -(-cin // 4), -(-cout // 16) * 16
    width += 16 if width % 1024 == 0 else 0          # rows of words never a multiple of 4 KiB
    assert words.dtype == np.int32 and words.shape == (groups * width,)
    packed = words.view(np.int8).reshape(groups, width, 4)  # byte j of word [k, c]: w[4k + j, c]
    padded = np.zeros((groups * 4, width), np.int8)
    padded[:cin, :cout] = w
    assert np.array_equal(packed.transpose(0, 2, 1).reshape(groups * 4, width), padded)
    assert np.array_equal(colsum, padded.astype(np.int64).sum(axis=0))


def test_a_weight_is_packed_once_and_a_new_array_afresh():
    rng = np.random.default_rng(0)
    w = _int8(rng, (9, 20))
    first = vnni.packed_weight(w)
    assert vnni.packed_weight(w) is first
    del w, first
    gc.collect()
    assert not vnni._PACKED  # the entry went with its array
    for _ in range(20):  # new arrays (which may reuse a freed id) get their own packing
        w = _int8(rng, (9, 20))
        assert np.array_equal(vnni.packed_weight(w)[0], vnni.pack_weight(w)[0])


def test_the_switch_forces_the_portable_kernel(monkeypatch):
    called = []

    def refuse(*args):
        called.append(args)
        raise AssertionError("the VNNI kernel ran under NPMOBILENET_NO_VNNI=1")

    monkeypatch.setattr(qkernels, "_pointwise_int8_vnni_rows", refuse)
    monkeypatch.setattr(qkernels, "_pointwise_int8_vnni_parallel", refuse)
    monkeypatch.setenv("NPMOBILENET_NO_VNNI", "1")
    assert not vnni.vnni_enabled()
    rng = np.random.default_rng(1)
    x, w = _int8(rng, (10, 7)), _int8(rng, (7, 5))
    args = _requant_args(rng, 5, 7)
    assert np.array_equal(qkernels.pointwise_int8(x, 3, w, *args), qreference.pointwise(x, 3, w, *args))
    monkeypatch.setenv("NPMOBILENET_NO_VNNI", "0")
    if vnni.has_vnni():
        with pytest.raises(AssertionError):
            qkernels.pointwise_int8(x, 3, w, *args)
        assert called


# -- the kernel (VNNI CPUs) ------------------------------------------------------------------------
# (random shapes, bit for bit against the reference: test_compression_quantize.py, with the portable kernel)
@needs_vnni
@pytest.mark.parametrize("xv, wv, zx", [(-128, -128, 127), (127, -128, -128), (-128, 127, -128), (127, 127, 127),
                                        (-128, -128, -128), (127, -128, 127)])
def test_extreme_inputs_weights_and_zero_points(xv, wv, zx):
    # |x - z_x| = 255 and |w| = 128 on every tap, over 1001 taps: accumulators near +-2^25
    rows, cin, cout = 19, 1001, 33
    x = np.full((rows, cin), xv, np.int8)
    x[::3, ::7] = -xv - 1  # some taps of the other sign
    w = np.full((cin, cout), wv, np.int8)
    # M maps the largest |accumulator| to about 100: the outputs are not all clamped
    bias, multiplier, shift = np.zeros(cout, np.int32), *quantize_multipliers(np.full(cout, 100 / (cin * 255 * 128)))
    for zy, lo, hi in ((0, -128, 127), (-128, 0, 127), (9, -5, 6)):
        args = (bias, multiplier, shift, zy, lo, hi)
        expected = qreference.pointwise(x, zx, w, *args)
        assert np.array_equal(_vnni_serial(x, zx, w, *args), expected)
        assert lo > -128 or len(np.unique(expected)) > 1  # the unclamped case is not trivial


@numba.njit
def _requantize_vectors(acc, multiplier, shift, zy, lo, hi, y):
    for c0 in range(0, acc.shape[0], 16):
        q = vnni.requantize16(vnni.load16(acc, c0), vnni.load16(multiplier, c0), vnni.load16(shift, c0), zy, lo, hi)
        vnni.store16_int8(y, c0, q, min(16, acc.shape[0] - c0))


@needs_vnni
def test_vector_requantization_matches_the_reference():
    # every shift TFLite uses, left ones saturating, multipliers including 0, 2^30 and the
    # extremes of int32 (v = m = -2^31 is the one overflow of the high multiply)
    rng = np.random.default_rng(7)
    lanes = 16 * 4096
    acc = rng.integers(INT32_MIN, INT32_MAX, lanes, endpoint=True).astype(np.int32)
    acc[::5] = rng.integers(-3000, 3000, acc[::5].size)
    acc[:4] = [INT32_MIN, INT32_MAX, 0, -1]
    multiplier = rng.integers(INT32_MIN, INT32_MAX, lanes, endpoint=True).astype(np.int32)
    multiplier[:8] = [INT32_MIN, INT32_MIN, 0, 1 << 30, INT32_MAX, INT32_MAX, -1, INT32_MIN]
    shift = rng.integers(-31, 31, lanes).astype(np.int32)
    for zy, lo, hi in ((0, -128, 127), (-128, -128, 127), (17, -20, 90)):
        y = np.zeros(lanes + 16, np.int8)  # 16 bytes more, that the masked store leaves alone
        _requantize_vectors(acc, multiplier, shift, zy, lo, hi, y)
        assert np.array_equal(y[:lanes], qreference.to_int8(acc, multiplier, shift, zy, lo, hi))
        assert not y[lanes:].any()
        _requantize_vectors(acc[:-5], multiplier[:-5], shift[:-5], zy, lo, hi, y)  # a last vector of 11 lanes
        assert np.array_equal(y[lanes - 16:], np.r_[y[lanes - 16:lanes - 5], y[lanes - 5:lanes], np.zeros(16, np.int8)])


@needs_vnni
def test_the_packed_weight_path_matches_the_portable_kernel(monkeypatch):
    rng = np.random.default_rng(11)
    for rows, cin, cout in ((130, 96, 24), (64, 32, 16), (73, 61, 150), (8, 960, 160)):
        x, w = _int8(rng, (rows, cin)), _int8(rng, (cin, cout))
        zx = int(rng.integers(-128, 128))
        args = _requant_args(rng, cout, cin)
        monkeypatch.setenv("NPMOBILENET_NO_VNNI", "1")
        portable = qkernels.pointwise_int8(x, zx, w, *args)
        monkeypatch.setenv("NPMOBILENET_NO_VNNI", "0")
        assert vnni.vnni_enabled()
        assert np.array_equal(qkernels.pointwise_int8(x, zx, w, *args), portable)
        assert np.array_equal(qkernels.pointwise_int8(x, zx, w, *args), portable)  # packed weight reused


@needs_vnni
def test_row_splits_and_parallel_driver_give_the_same_bits():
    rng = np.random.default_rng(13)
    rows, cin, cout = 203, 45, 40
    x, w = _int8(rng, (rows, cin)), _int8(rng, (cin, cout))
    args = _requant_args(rng, cout, cin)
    serial = _vnni_serial(x, -7, w, *args)
    assert np.array_equal(serial, qreference.pointwise(x, -7, w, *args))
    pieces = np.zeros_like(serial)
    for start, end in ((0, 5), (5, 70), (70, 71), (71, rows)):
        pieces[start:end] = _vnni_serial(x, -7, w, *args, start, end)[start:end]
    assert np.array_equal(pieces, serial)
    bias, multiplier, shift, zy, lo, hi = args
    constants = qkernels.vnni_arguments(w, -7, bias, multiplier, shift, pairs=False)
    for chunks in (1, 3, 8, rows):
        y = np.zeros_like(serial)
        qkernels._pointwise_int8_vnni_parallel(x, *constants, np.int32(zy), np.int32(lo), np.int32(hi),
                                               qkernels.NO_RESIDUAL, qkernels.NO_ADD, qkernels.NO_FIELD, y, chunks)
        assert np.array_equal(y, serial)


@needs_vnni
def test_the_kernel_is_compiled_to_vpdpbusd():
    # a fresh, uncached compilation: Numba shows no assembly for code loaded from its cache
    kernel = numba.njit(qkernels._pointwise_int8_vnni_rows.py_func)
    rng = np.random.default_rng(17)
    x, w = _int8(rng, (9, 8)), _int8(rng, (8, 16))
    bias, multiplier, shift, zy, lo, hi = _requant_args(rng, 16, 8)
    y = np.zeros((9, 16), np.int8)
    kernel(x, *qkernels.vnni_arguments(w, 1, bias, multiplier, shift, pairs=False), np.int32(zy), np.int32(lo),
           np.int32(hi), qkernels.NO_RESIDUAL, qkernels.NO_ADD, qkernels.NO_FIELD, y, 0, 9)
    assert np.array_equal(y, qreference.pointwise(x, 1, w, bias, multiplier, shift, zy, lo, hi))
    asm = kernel.inspect_asm(kernel.signatures[0])
    assert "vpdpbusd" in asm and "zmm" in asm


@needs_vnni
@pytest.mark.parametrize("cin, cout", [(5, 16), (24, 40), (61, 47), (144, 576), (576, 1024), (1280, 1000)])
def test_one_pixel_sums_in_four_chains_match_the_reference(cin, cout):
    # a fully connected layer at batch 1: four chains over the input groups (their remainder too),
    # or, where a row of packed words is 4 KiB (width 1024), the 8-row tile
    rng = np.random.default_rng(cin + cout)
    x, w = _int8(rng, (1, cin)), _int8(rng, (cin, cout))
    args = _requant_args(rng, cout, cin)
    expected = qreference.pointwise(x, 3, w, *args)
    assert np.array_equal(_vnni_serial(x, 3, w, *args), expected)
    assert len(np.unique(expected)) > 1
    # rows split so that a chunk of one row follows a longer one
    x3 = _int8(rng, (3, cin))
    expected = qreference.pointwise(x3, 3, w, *args)
    pieces = np.zeros_like(expected)
    for start, end in ((0, 2), (2, 3)):
        pieces[start:end] = _vnni_serial(x3, 3, w, *args, start, end)[start:end]
    assert np.array_equal(pieces, expected)


@needs_vnni
@pytest.mark.parametrize("cin, k, stride, padding, dilation", [(3, 3, 2, (0, 1, 0, 1), 1), (24, 3, 1, (1, 1, 1, 1), 1),
                                                              (5, 5, 2, (2, 1, 1, 2), 1), (4, 3, 1, (2, 2, 2, 2), 2),
                                                              (2, 3, 1, (0, 0, 0, 0), 1), (8, 2, 1, (0, 1, 0, 1), 1)])
def test_standard_convolution_reads_its_receptive_fields_in_the_kernel(cin, k, stride, padding, dilation, monkeypatch):
    # no gathered copy: the VNNI kernel makes its words from x, for any range of output pixels
    # (ranges that start and end inside an output row and cross from one image to the next);
    # kernel rows of up to 16 bytes (the stem's 9; 6; 16) copied 16 bytes at a time, but for the
    # last pixels, whose 16 bytes would pass the end of x (no padding at the bottom right)
    monkeypatch.setenv("NPMOBILENET_NO_VNNI", "0")
    rng = np.random.default_rng(cin * k)
    x, w = _int8(rng, (2, 9, 11, cin)), _int8(rng, (k, k, cin, 24))
    bias, multiplier, shift, zy, lo, hi = _requant_args(rng, 24, k * k * cin)
    geometry = ((stride, stride), padding, (dilation, dilation))
    expected = qreference.conv2d(x, -3, w, bias, multiplier, shift, zy, lo, hi, *geometry)
    y = np.zeros(expected.shape, np.int8)
    [(kernel, args)] = qkernels.conv2d_int8_calls(x, -3, w, bias, multiplier, shift, zy, lo, hi, *geometry, None, y)
    rows = y.shape[0] * y.shape[1] * y.shape[2]
    serial_args = args[:-1] if kernel is qkernels._pointwise_int8_vnni_parallel else args[:-2]
    for start, end in ((0, 7), (7, rows // 2 + 3), (rows // 2 + 3, rows)):
        qkernels._pointwise_int8_vnni_rows(*serial_args, start, end)
    assert np.array_equal(y, expected)
