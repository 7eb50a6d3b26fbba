"""The VNNI depthwise kernel (four taps of a kernel row per vpdpbusd) against the integer oracle,
bit for bit: every unrolled copy (3x3 and 5x5 at strides 1 and 2) and the generic one, border
pixels and rows in the padding, partial last blocks, input rows reused across output rows and
images, any row split, the parallel driver, and the operand intrinsics it is built on."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npmobilenet.compression import qdepthwise_vnni, qkernels, vnni
from npmobilenet.compression.qops import quantize_multipliers
from npmobilenet.ops import reference_int8 as qreference

needs_vnni = pytest.mark.skipif(not vnni.has_vnni(), reason="this CPU has no AVX-512 VNNI (avx512vnni, avx512bw)")


def _int8(rng, shape):
    return rng.integers(-128, 128, shape, dtype=np.int8)


def _case(rng, n, h, w, c, kh, kw):
    x, weight = _int8(rng, (n, h, w, c)), rng.integers(-127, 128, (kh, kw, c), dtype=np.int8)
    bias = rng.integers(-20000, 20000, c).astype(np.int32)
    # the sums' spread is about sqrt(KH KW) * 74 * 73 (uniform int8 x and w): M maps it to about 40
    multiplier, shift = quantize_multipliers(rng.uniform(0.5, 2.0, c) * 40 / (np.sqrt(kh * kw) * 74 * 73))
    return x, weight, bias, multiplier, shift


def _run(x, zx, weight, bias, multiplier, shift, zy, lo, hi, stride, padding, out_hw, rows=None):
    y = np.zeros((x.shape[0], *out_hw, x.shape[3]), np.int8)
    args = (x, *qdepthwise_vnni.pack(weight, zx, bias, multiplier, shift, stride), np.int32(zy), np.int32(lo),
            np.int32(hi), stride[0], stride[1], padding[0], padding[2], y)
    for start, end in rows or [(0, y.shape[0] * y.shape[1])]:
        qdepthwise_vnni._depthwise_int8_vnni_rows(*args, start, end)
    return y, args


def _out_hw(h, w, kh, kw, stride, padding):
    t, b, l, r = padding
    return (h + t + b - kh) // stride[0] + 1, (w + l + r - kw) // stride[1] + 1


@needs_vnni
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(1, 13), w=st.integers(1, 13), c=st.integers(1, 40),
       kernel=st.sampled_from([(3, 3), (5, 5), (3, 5), (7, 7), (1, 4), (2, 8)]), sh=st.integers(1, 2),
       sw=st.integers(1, 2), pads=st.tuples(*[st.integers(0, 3)] * 4), zx=st.integers(-128, 127),
       zy=st.integers(-128, 127), seed=st.integers(0, 2**16))
def test_matches_the_reference_bit_for_bit(n, h, w, c, kernel, sh, sw, pads, zx, zy, seed):
    kh, kw = kernel
    out_hw = _out_hw(h, w, kh, kw, (sh, sw), pads)
    if min(out_hw) < 1:
        return
    rng = np.random.default_rng(seed)
    x, weight, bias, multiplier, shift = _case(rng, n, h, w, c, kh, kw)
    for lo, hi in ((-128, 127), (max(zy, -128), 127)):           # plain, and a ReLU's clamp
        y, _ = _run(x, zx, weight, bias, multiplier, shift, zy, lo, hi, (sh, sw), pads, out_hw)
        expected = qreference.depthwise_conv2d(x, zx, weight, bias, multiplier, shift, zy, lo, hi, (sh, sw), pads,
                                               (1, 1))
        assert np.array_equal(y, expected)


@needs_vnni
def test_every_copy_is_taken_with_left_and_right_shifts():
    # the four unrolled copies and the generic one (a 3x5 kernel, and every masked channel tail);
    # widths whose last block is partial; rows and columns wholly in the padding (padding wider
    # than the kernel); channels 16 + 8; some M > 1 (left shifts)
    rng = np.random.default_rng(3)
    for kh, kw, stride, pads, w in ((3, 3, (1, 1), (1, 1, 1, 1), 20), (3, 3, (1, 1), (1, 1, 1, 1), 19),
                                     (5, 5, (1, 1), (2, 2, 2, 2), 21), (3, 3, (2, 2), (0, 1, 0, 1), 20),
                                     (5, 5, (2, 2), (1, 2, 1, 2), 23), (3, 5, (1, 2), (1, 1, 2, 2), 17),
                                     (3, 3, (1, 1), (4, 4, 5, 5), 6)):
        x, weight, bias, multiplier, shift = _case(rng, 2, 9, w, 24, kh, kw)
        multiplier[::3], shift[::3] = quantize_multipliers(np.full(8, 3.0))       # M = 3: shifts left
        out_hw = _out_hw(9, w, kh, kw, stride, pads)
        assert out_hw[1] % (4 // stride[1]) or w == 20                             # mostly partial last blocks
        y, _ = _run(x, 5, weight, bias, multiplier, shift, -3, -128, 127, stride, pads, out_hw)
        expected = qreference.depthwise_conv2d(x, 5, weight, bias, multiplier, shift, -3, -128, 127, stride, pads,
                                               (1, 1))
        assert np.array_equal(y, expected)
        assert len(np.unique(expected)) > 50                                        # not all clamped


@needs_vnni
def test_row_splits_and_the_parallel_driver_give_the_same_bits():
    rng = np.random.default_rng(5)
    x, weight, bias, multiplier, shift = _case(rng, 2, 11, 14, 40, 3, 3)
    out_hw = _out_hw(11, 14, 3, 3, (1, 1), (1, 1, 1, 1))
    whole, args = _run(x, -9, weight, bias, multiplier, shift, 4, -128, 127, (1, 1), (1, 1, 1, 1), out_hw)
    pieces, _ = _run(x, -9, weight, bias, multiplier, shift, 4, -128, 127, (1, 1), (1, 1, 1, 1), out_hw,
                     rows=[(0, 1), (1, 10), (10, 11), (11, 22)])
    assert np.array_equal(pieces, whole)
    for chunks in (1, 3, 22):
        y = np.zeros_like(whole)
        qdepthwise_vnni._depthwise_int8_vnni_parallel(*args[:-1], y, chunks)
        assert np.array_equal(y, whole)


def test_which_layers_it_runs(monkeypatch):
    w3 = np.zeros((3, 3, 8), np.int8)
    monkeypatch.setenv("NPMOBILENET_NO_VNNI", "0")
    assert qdepthwise_vnni.applies(w3, (1, 1)) is vnni.has_vnni()
    assert not qdepthwise_vnni.applies(w3, (2, 2))           # dilated kernels stay portable
    assert qdepthwise_vnni.applies(w3, (1, 1), (3, 2)) is vnni.has_vnni()
    assert not qdepthwise_vnni.applies(w3, (1, 1), (1, 3))   # windows of 4 columns: width strides 1 and 2
    monkeypatch.setenv("NPMOBILENET_NO_VNNI", "1")
    assert not qdepthwise_vnni.applies(w3, (1, 1))


@needs_vnni
def test_narrow_maps_where_most_pixels_are_border_pixels():
    # 5x5 on 7x7 and 14x14, 3x3 on 7x7, 1x1 and 2x3 maps; asymmetric padding; strides; a masked
    # channel tail; two images, whose rows a call's operand rows must not mix up; row splits
    rng = np.random.default_rng(21)
    for h, w, k, stride, pads in ((7, 7, 5, (1, 1), (2, 2, 2, 2)), (14, 14, 5, (1, 1), (2, 2, 2, 2)),
                                  (7, 7, 3, (1, 1), (1, 1, 1, 1)), (1, 1, 3, (1, 1), (1, 1, 1, 1)),
                                  (2, 3, 5, (1, 1), (2, 2, 2, 2)), (8, 6, 5, (2, 2), (1, 2, 2, 1)),
                                  (5, 5, 3, (2, 1), (0, 2, 1, 0))):
        x, weight, bias, multiplier, shift = _case(rng, 2, h, w, 40, k, k)
        out_hw = _out_hw(h, w, k, k, stride, pads)
        expected = qreference.depthwise_conv2d(x, -4, weight, bias, multiplier, shift, 6, -128, 127, stride, pads,
                                               (1, 1))
        rows = 2 * out_hw[0]
        for split in ([(0, rows)], [(0, 1), (1, rows - 1), (rows - 1, rows)]):
            y, _ = _run(x, -4, weight, bias, multiplier, shift, 6, -128, 127, stride, pads, out_hw,
                        rows=[(a, b) for a, b in split if b > a])
            assert np.array_equal(y, expected)


@needs_vnni
def test_the_layer_call_uses_it_and_agrees_with_the_portable_kernel(monkeypatch):
    rng = np.random.default_rng(9)
    x, weight, bias, multiplier, shift = _case(rng, 1, 16, 16, 33, 3, 3)
    args = (x, 2, weight, bias, multiplier, shift, 1, -128, 127, (1, 1), (1, 1, 1, 1), (1, 1), (1, 16, 16, 33))
    monkeypatch.setenv("NPMOBILENET_NO_VNNI", "0")
    kernel, _ = qkernels.depthwise_conv2d_int8_call(*args[:-1], np.zeros(args[-1], np.int8))
    assert kernel in (qdepthwise_vnni._depthwise_int8_vnni_rows, qdepthwise_vnni._depthwise_int8_vnni_parallel)
    fast = qkernels.depthwise_conv2d_int8(*args)
    monkeypatch.setenv("NPMOBILENET_NO_VNNI", "1")
    assert np.array_equal(qkernels.depthwise_conv2d_int8(*args), fast)


@numba.njit
def _operands(x, pad, index, step, indices, count, out):
    vnni.store16(out, 0, vnni.columns4(x, index, step, count))
    vnni.store16(out, 16, vnni.columns4_padded(x, pad, indices[0], indices[1], indices[2], indices[3], count))


@needs_vnni
def test_operands_interleave_four_columns_per_channel():
    x = np.arange(-128, 128, dtype=np.int64).astype(np.int8)
    pad = np.full(16, -7, np.int8)
    for count in (16, 11):
        out = np.zeros(32, np.int32)
        _operands(x, pad, 5, 40, np.array([100, -1, 3, 200]), count, out)
        lanes = out.view(np.uint8).reshape(2, 16, 4)
        for t, start in enumerate((5, 45, 85, 125)):
            column = x[start:start + 16].astype(np.int64)
            column[count:] = 0
            assert np.array_equal(lanes[0, :, t], (column + 128) % 256)
        for t, start in enumerate((100, -1, 3, 200)):
            column = (x[start:start + 16] if start >= 0 else pad).astype(np.int64)
            column[count:] = 0
            assert np.array_equal(lanes[1, :, t], (column + 128) % 256)


@needs_vnni
def test_the_kernel_is_compiled_to_vpdpbusd():
    # a fresh, uncached compilation: Numba shows no assembly for code loaded from its cache
    kernel = numba.njit(qdepthwise_vnni._depthwise_int8_vnni_rows.py_func)
    rng = np.random.default_rng(17)
    x, weight, bias, multiplier, shift = _case(rng, 1, 6, 6, 16, 3, 3)
    y = np.zeros((1, 6, 6, 16), np.int8)
    kernel(x, *qdepthwise_vnni.pack(weight, 0, bias, multiplier, shift, (1, 1)), np.int32(0), np.int32(-128),
           np.int32(127), 1, 1, 1, 1, y, 0, 6)
    assert np.array_equal(y, qreference.depthwise_conv2d(x, 0, weight, bias, multiplier, shift, 0, -128, 127, (1, 1),
                                                         (1, 1, 1, 1), (1, 1)))
    asm = kernel.inspect_asm(kernel.signatures[0])
    assert "vpdpbusd" in asm and "zmm" in asm


@needs_vnni
def test_a_depthwise_layer_packs_its_weight_once_per_input_zero_point(monkeypatch):
    # op by op (record=True, or a call while another holds the plan), a layer's calls reuse its packing
    from npmobilenet.compression.qops import QConv
    monkeypatch.setenv("NPMOBILENET_NO_VNNI", "0")
    rng = np.random.default_rng(8)
    x, weight, bias, multiplier, shift = _case(rng, 1, 9, 10, 20, 3, 3)
    op = QConv("dw", ("x",), "y", "depthwise", weight, np.ones(20, np.float32), bias, multiplier, shift, -128, 127,
               padding=(1, 1, 1, 1))
    y1, y2 = np.zeros((1, 9, 10, 20), np.int8), np.zeros((1, 9, 10, 20), np.int8)
    [(kernel, args1)] = op.calls([x], {"x": 3, "y": -5}, y1)
    [(_, args2)] = op.calls([x], {"x": 3, "y": -5}, y2)
    assert args1[2] is args2[2]                                  # the same packed words
    kernel(*args1)
    expected = qreference.depthwise_conv2d(x, 3, weight, bias, multiplier, shift, -5, -128, 127, (1, 1), (1, 1, 1, 1),
                                           (1, 1))
    assert np.array_equal(y1, expected)
    assert op.calls([x], {"x": 4, "y": -5}, y2)[0][1][2] is not args1[2]    # another zero point: packed afresh
