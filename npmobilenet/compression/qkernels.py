"""Integer-only kernels for int8 inference (Jacob et al., 2018; TFLite's reference kernels).

Every tensor `t` is stored as int8 `q` with a real value `r = s_t * (q - z_t)`: a float scale and an
int zero point, fixed before inference. A convolution's real output is

    r_y = s_x * s_w[c] * sum (q_x - z_x) * q_w        (weights symmetric: z_w = 0)

so its int8 output is

    q_y = z_y + M[c] * acc[c],   acc[c] = b_q[c] + sum (q_x - z_x) * q_w   (int32)
    M[c] = s_x * s_w[c] / s_y                                             (Jacob et al., Eq. 5)

and M, a real number fixed per layer, is stored as an int32 `multiplier` M0 in [2^30, 2^31) and a
power-of-two `shift` (M = M0 * 2^(shift - 31); shift > 0 shifts left). `M * acc` is then computed
with integers only, as gemmlowp does: a rounding doubling high multiply by M0 and a rounding right
shift (`multiply_by_quantized_multiplier`, TFLite's MultiplyByQuantizedMultiplier). Products are
int8 x int8 (the zero-point-corrected input fits in int16), sums int32.

Layout: activations NHWC `(N, H, W, C)` int8; weights standard `(KH, KW, Cin, Cout)`, depthwise
`(KH, KW, C)`, pointwise and linear `(Cin, Cout)`, int8; bias, multiplier, shift int32 `(Cout,)`.
Padding taps contribute nothing: they hold the real value 0, i.e. q = z_x.

The public wrappers in `npmobilenet.compression.quantize` validate; these kernels see only clean
C-contiguous arrays and ints. Each convolution is a serial row kernel `_*_rows` (one range of
output rows) plus a parallel driver that splits the rows into chunks with `prange` (disjoint
writes); the slow reference they are tested against bit for bit is `npmobilenet.ops.reference_int8`.
"""
import numba
import numpy as np

from npmobilenet import config
from npmobilenet.compression import qdepthwise_vnni, vnni
from npmobilenet.compression.vnni import (
    add16, broadcast16, copy16_unsigned, dpbusd, dpwssd, load16, load16_int8, load16_part, load64_int8, lookup32,
    lookup64, mul16, multiply16, requantize16, requantize16_layer, requantize16_right, splat16, splat64, store16,
    store16_int8, store64_int8, sub16, unsigned64,
)
from npmobilenet.config import njit_inline, njit_parallel, njit_serial, njit_serial_strict
from npmobilenet.ops.depthwise_rows import _interior_columns

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
ADD_LEFT_SHIFT = 20  # TFLite's quantized Add: 20 bits of headroom before summing


# -- fixed-point requantization (gemmlowp fixedpoint.h, TFLite common.h) --------------------------
@njit_serial
def saturating_rounding_doubling_high_mul(a, b):
    """The high 32 bits of 2*a*b, rounded to nearest: round(a * b / 2^31) for int32 a, b.

    gemmlowp's SaturatingRoundingDoublingHighMul: the only overflow (a = b = -2^31) saturates.
    """
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = np.int64(a) * np.int64(b)
    nudge = np.int64(1 << 30) if ab >= 0 else np.int64(1 - (1 << 30))
    t = ab + nudge
    # C's integer division truncates toward zero, where Python's // and >> floor.
    return (t >> 31) if t >= 0 else -((-t) >> 31)


@njit_serial
def rounding_divide_by_pot(x, exponent):
    """x / 2^exponent rounded to nearest, ties away from zero (gemmlowp's RoundingDivideByPOT)."""
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


@njit_serial
def multiply_by_quantized_multiplier(x, multiplier, shift):
    """x * M for M = multiplier * 2^(shift - 31), in integers (TFLite's MultiplyByQuantizedMultiplier).

    A left shift (M >= 1) is applied before the high multiply, saturated to int32; a right shift
    after it, with rounding.
    """
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    v = np.int64(x) << left
    if v > INT32_MAX:
        v = np.int64(INT32_MAX)
    elif v < INT32_MIN:
        v = np.int64(INT32_MIN)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(v, np.int64(multiplier)), right)


@njit_serial
def _requantize_store(acc, multiplier, shift, zy, lo, hi):
    """q_y = clamp(z_y + M * acc, lo, hi): the int8 output of one accumulator."""
    v = multiply_by_quantized_multiplier(acc, multiplier, shift) + zy
    if v < lo:
        v = lo
    elif v > hi:
        v = hi
    return v


def _rows_call(rows_kernel, parallel_driver, args, rows, macs):
    """(kernel, args) that runs `rows_kernel(*args, 0, rows)` serially, or, when the work pays for
    threads (the one threshold in npmobilenet.config), `parallel_driver(*args, chunks)` over
    chunks of rows."""
    if config.choose_kernel(False, True, macs):
        return parallel_driver, (*args, min(rows, 4 * numba.get_num_threads()))
    return rows_kernel, (*args, 0, rows)


def _run_rows(rows_kernel, parallel_driver, args, rows, macs):
    kernel, args = _rows_call(rows_kernel, parallel_driver, args, rows, macs)
    kernel(*args)


# -- standard convolution: x (N, H, W, Cin), w (KH, KW, Cin, Cout) -> y (N, Ho, Wo, Cout) ---------
@njit_inline
def _gather_field(xf, h, wd, cin, n, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, zx, flip, dst, o):
    # pixel (n, oh, ow)'s receptive field from x (flat, NHWC) into dst[o:o + KH*KW*Cin] (int8),
    # taps in (i, j, ci) order, padding taps z_x (the real value 0); every byte + 128 (its sign
    # bit flipped: vpdpbusd's unsigned bytes) where `flip`. A kernel row inside the image
    # (dilation 1) is one contiguous run of KW * Cin bytes (the stem: 9), copied 64 bytes at a time
    # with masked loads and stores where `flip` (the VNNI path: AVX-512 BW masks bytes), else by a
    # plain loop (without BW a masked byte load or store is one tested access per byte: the stem's
    # gather took 200 ns a pixel on the Zen 3 machine); else one inside-or-padding test per tap.
    run = kw * cin
    sign = np.int8(-128) if flip else np.int8(0)
    pad_byte = np.int8(zx ^ sign)
    padding = splat64(pad_byte)
    iw0 = ow * sw - pl
    columns_inside = dw == 1 and iw0 >= 0 and iw0 + kw <= wd
    for i in range(kh):
        ih = oh * sh - pt + i * dh
        if ih < 0 or ih >= h:
            if flip:
                for e in range(0, run, 64):
                    store64_int8(dst, o + e, padding, min(64, run - e))
            else:
                for e in range(run):
                    dst[_U(o + e)] = pad_byte
        elif columns_inside:
            src = ((n * h + ih) * wd + iw0) * cin
            if flip:
                for e in range(0, run, 64):
                    count = min(64, run - e)
                    store64_int8(dst, o + e, unsigned64(load64_int8(xf, src + e, count)), count)
            else:
                for e in range(run):
                    dst[_U(o + e)] = xf[_U(src + e)]
        else:
            for j in range(kw):
                iw = iw0 + j * dw
                if iw >= 0 and iw < wd:
                    src = ((n * h + ih) * wd + iw) * cin
                    for ci in range(cin):
                        dst[_U(o + j * cin + ci)] = np.int8(xf[_U(src + ci)] ^ sign)
                else:
                    for ci in range(cin):
                        dst[_U(o + j * cin + ci)] = pad_byte
        o += run


@njit_serial
def _im2col_int8_rows(x, zx, kh, kw, sh, sw, pt, pl, dilation_h, dilation_w, cols, row_start, row_end):
    # x (N, H, W, Cin) int8 -> cols (N, Ho, Wo, KH * KW * Cin) int8, output rows (n, oh) in
    # [row_start, row_end): each pixel's receptive field (`_gather_field`)
    n_, h, wd, cin = x.shape
    ho, wo, taps = cols.shape[1], cols.shape[2], cols.shape[3]
    xf, cf = x.reshape(-1), cols.reshape(-1)
    for row in range(row_start, row_end):
        n = row // ho
        oh = row % ho
        for ow in range(wo):
            _gather_field(xf, h, wd, cin, n, oh, ow, kh, kw, sh, sw, pt, pl, dilation_h, dilation_w, zx, False, cf,
                          (row * wo + ow) * taps)


@njit_parallel
def _im2col_int8_parallel(x, zx, kh, kw, sh, sw, pt, pl, dilation_h, dilation_w, cols, chunks):
    rows = cols.shape[0] * cols.shape[1]
    for c in numba.prange(chunks):
        _im2col_int8_rows(x, zx, kh, kw, sh, sw, pt, pl, dilation_h, dilation_w, cols,
                          c * rows // chunks, (c + 1) * rows // chunks)


def conv2d_int8_calls(x, zx, w, bias, multiplier, shift, zy, lo, hi, stride, padding, dilation, cols, y):
    """[(kernel, args)] of `conv2d_int8` into y (N, Ho, Wo, Cout): with a packed kernel (VNNI's or
    the pairs', `vnni.packed_enabled()`) one call, whose kernel reads the receptive fields from x
    (cols unused: may be None); else through cols (N, Ho, Wo, KH*KW*Cin) int8, the fields
    gathered, then the portable pointwise kernel over them."""
    kh, kw, cin, cout = w.shape
    n, ho, wo, _ = y.shape
    if vnni.packed_enabled():
        # the receptive fields read as the kernel makes its words: no gathered copy (cols unused)
        w2d, y2d = w.reshape(kh * kw * cin, cout), y.reshape(n * ho * wo, cout)
        args = (x.reshape(-1, cin), *vnni_arguments(w2d, zx, bias, multiplier, shift), np.int32(zy), np.int32(lo),
                np.int32(hi), NO_RESIDUAL, NO_ADD, conv_field(x.shape, kh, kw, stride, padding, dilation, (ho, wo), zx),
                y2d)
        return [_rows_call(*packed_kernels(), args, n * ho * wo, y.size * kh * kw * cin)]
    (sh, sw), (pt, _, pl, _), (dilation_h, dilation_w) = stride, padding, dilation
    args = (x, np.int8(zx), kh, kw, sh, sw, pt, pl, dilation_h, dilation_w, cols)
    return [_rows_call(_im2col_int8_rows, _im2col_int8_parallel, args, n * ho, cols.size),
            pointwise_int8_call(cols.reshape(n * ho * wo, -1), zx, w.reshape(kh * kw * cin, cout), bias, multiplier,
                                shift, zy, lo, hi, y.reshape(n * ho * wo, cout))]


def conv2d_int8(x, zx, w, bias, multiplier, shift, zy, lo, hi, stride, padding, dilation, out_shape):
    """Standard convolution in int8 (clean arrays; see the module docstring). Returns y int8.

    The VNNI kernel over the KH*KW*Cin taps of each output pixel's receptive field (padding z_x),
    read from x as it makes its words; without VNNI the fields gathered first (im2col), then
    `pointwise_int8`."""
    kh, kw, cin, _ = w.shape
    y = np.empty(out_shape, np.int8)
    cols = None if vnni.packed_enabled() else np.empty((*out_shape[:3], kh * kw * cin), np.int8)
    for kernel, args in conv2d_int8_calls(x, zx, w, bias, multiplier, shift, zy, lo, hi, stride, padding, dilation, cols, y):
        kernel(*args)
    return y


# -- depthwise convolution: x (N, H, W, C), w (KH, KW, C) -> y (N, Ho, Wo, C) ---------------------
# The portable kernel; on AVX-512 VNNI, undilated layers of width stride 1 or 2 run `qdepthwise_vnni` (four taps per
# vpdpbusd) instead, with the same integers.
@njit_serial
def any_left_shift(shift):
    """Whether some channel's M is >= 1 (shift > 0): only then does requantization shift left."""
    for c in range(shift.shape[0]):
        if shift[c] > 0:
            return True
    return False


@njit_serial
def _depthwise_int8_rows(x, zx, w, bias, multiplier, shift, zy, lo, hi, sh, sw, pt, pl, dilation_h, dilation_w, y, row_start, row_end):
    # 16 channels at a time in int32 lanes (vnni.py's vector type: generic LLVM vector code, which
    # every CPU runs, in one 512-bit register where there is one), the taps summed in registers,
    # requantized there and stored; the tail of the channels masked. The paths are spelled out
    # (3x3 interior, 3x3 edge, any interior, any border): one helper with a per-tap check flag
    # for all but the 3x3 interior ran 1.3-1.5x slower on MobileNet's layers.
    n_, h, wd, channels = x.shape
    kh, kw, _ = w.shape
    _, ho, wo, _ = y.shape
    zx16 = splat16(zx)
    left = any_left_shift(shift)
    for row in range(row_start, row_end):
        n = row // ho
        oh = row % ho
        for c0 in range(0, channels, 16):
            count = min(16, channels - c0)
            b, m, s = load16_part(bias, c0, count), load16_part(multiplier, c0, count), load16_part(shift, c0, count)
            if kh == 3 and kw == 3 and dilation_h == 1 and dilation_w == 1 and oh * sh - pt >= 0 and oh * sh - pt + 2 < h:
                # the common case, 3x3 with all three input rows inside: the nine weight vectors
                # held in registers, and no tap checks away from the left and right edges
                w0, w1, w2 = load16_int8(w, c0, count), load16_int8(w, channels + c0, count), load16_int8(w, 2 * channels + c0, count)
                w3, w4, w5 = load16_int8(w, 3 * channels + c0, count), load16_int8(w, 4 * channels + c0, count), load16_int8(w, 5 * channels + c0, count)
                w6, w7, w8 = load16_int8(w, 6 * channels + c0, count), load16_int8(w, 7 * channels + c0, count), load16_int8(w, 8 * channels + c0, count)
                r0 = (n * h + oh * sh - pt) * wd * channels + c0
                r1, r2 = r0 + wd * channels, r0 + 2 * wd * channels
                for ow in range(wo):
                    iw = ow * sw - pl
                    if iw >= 0 and iw + 2 < wd:
                        p0 = iw * channels
                        p1, p2 = p0 + channels, p0 + 2 * channels
                        acc = add16(b, mul16(sub16(load16_int8(x, r0 + p0, count), zx16), w0))
                        acc = add16(acc, mul16(sub16(load16_int8(x, r0 + p1, count), zx16), w1))
                        acc = add16(acc, mul16(sub16(load16_int8(x, r0 + p2, count), zx16), w2))
                        acc = add16(acc, mul16(sub16(load16_int8(x, r1 + p0, count), zx16), w3))
                        acc = add16(acc, mul16(sub16(load16_int8(x, r1 + p1, count), zx16), w4))
                        acc = add16(acc, mul16(sub16(load16_int8(x, r1 + p2, count), zx16), w5))
                        acc = add16(acc, mul16(sub16(load16_int8(x, r2 + p0, count), zx16), w6))
                        acc = add16(acc, mul16(sub16(load16_int8(x, r2 + p1, count), zx16), w7))
                        acc = add16(acc, mul16(sub16(load16_int8(x, r2 + p2, count), zx16), w8))
                        q = requantize16_layer(acc, m, s, left, zy, lo, hi)
                        store16_int8(y, ((n * ho + oh) * wo + ow) * channels + c0, q, count)
                        continue
                    acc = b
                    for i in range(3):
                        for j in range(3):
                            if iw + j >= 0 and iw + j < wd:
                                xv = sub16(load16_int8(x, r0 + (i * wd + iw + j) * channels, count), zx16)
                                acc = add16(acc, mul16(xv, load16_int8(w, (i * 3 + j) * channels + c0, count)))
                    q = requantize16_layer(acc, m, s, left, zy, lo, hi)
                    store16_int8(y, ((n * ho + oh) * wo + ow) * channels + c0, q, count)
                continue
            rows_inside = dilation_h == 1 and dilation_w == 1 and oh * sh - pt >= 0 and oh * sh - pt + kh <= h
            for ow in range(wo):
                iw0 = ow * sw - pl
                if rows_inside and iw0 >= 0 and iw0 + kw <= wd:
                    # every tap inside (V3's 5x5 away from the border): no tests per tap
                    acc = b
                    for i in range(kh):
                        p = ((n * h + oh * sh - pt + i) * wd + iw0) * channels + c0
                        for j in range(kw):
                            xv = sub16(load16_int8(x, p + j * channels, count), zx16)
                            acc = add16(acc, mul16(xv, load16_int8(w, (i * kw + j) * channels + c0, count)))
                    q = requantize16_layer(acc, m, s, left, zy, lo, hi)
                    store16_int8(y, ((n * ho + oh) * wo + ow) * channels + c0, q, count)
                    continue
                acc = b
                for i in range(kh):
                    ih = oh * sh - pt + i * dilation_h
                    if ih < 0 or ih >= h:
                        continue  # padding: real value 0
                    for j in range(kw):
                        iw = ow * sw - pl + j * dilation_w
                        if iw < 0 or iw >= wd:
                            continue
                        # V1 paper, Eq. 3: each channel filtered by its own kernel.
                        xv = sub16(load16_int8(x, ((n * h + ih) * wd + iw) * channels + c0, count), zx16)
                        acc = add16(acc, mul16(xv, load16_int8(w, (i * kw + j) * channels + c0, count)))
                q = requantize16_layer(acc, m, s, left, zy, lo, hi)
                store16_int8(y, ((n * ho + oh) * wo + ow) * channels + c0, q, count)


@njit_parallel
def _depthwise_int8_parallel(x, zx, w, bias, multiplier, shift, zy, lo, hi, sh, sw, pt, pl, dilation_h, dilation_w, y, chunks):
    rows = y.shape[0] * y.shape[1]
    for c in numba.prange(chunks):
        _depthwise_int8_rows(x, zx, w, bias, multiplier, shift, zy, lo, hi, sh, sw, pt, pl, dilation_h, dilation_w, y,
                             c * rows // chunks, (c + 1) * rows // chunks)


def depthwise_conv2d_int8_call(x, zx, w, bias, multiplier, shift, zy, lo, hi, stride, padding, dilation, y,
                               packed=None):
    """(kernel, args) of `depthwise_conv2d_int8` into y (N, Ho, Wo, C) int8. With VNNI, `packed`:
    `qdepthwise_vnni.pack` of these arguments when the caller keeps it (else packed here)."""
    (sh, sw), (pt, _, pl, _), (dilation_h, dilation_w) = stride, padding, dilation
    if qdepthwise_vnni.applies(w, dilation, stride):
        if packed is None:
            packed = qdepthwise_vnni.pack(w, zx, bias, multiplier, shift, stride)
        args = (x, *packed, np.int32(zy), np.int32(lo), np.int32(hi), sh, sw, pt, pl, y)
        return _rows_call(qdepthwise_vnni._depthwise_int8_vnni_rows, qdepthwise_vnni._depthwise_int8_vnni_parallel,
                          args, y.shape[0] * y.shape[1], y.size * w.shape[0] * w.shape[1])
    args = (x, np.int32(zx), w, bias, multiplier, shift, np.int32(zy), np.int32(lo), np.int32(hi), sh, sw, pt, pl,
            dilation_h, dilation_w, y)
    return _rows_call(_depthwise_int8_rows, _depthwise_int8_parallel, args, y.shape[0] * y.shape[1],
                      y.size * w.shape[0] * w.shape[1])


def depthwise_conv2d_int8(x, zx, w, bias, multiplier, shift, zy, lo, hi, stride, padding, dilation, out_shape):
    """Depthwise convolution in int8 (clean arrays). Returns y int8 `(N, Ho, Wo, C)`."""
    y = np.empty(out_shape, np.int8)
    kernel, args = depthwise_conv2d_int8_call(x, zx, w, bias, multiplier, shift, zy, lo, hi, stride, padding, dilation, y)
    kernel(*args)
    return y


# -- pointwise convolution / linear: x (P, Cin), w (Cin, Cout) -> y (P, Cout) ---------------------
_U = np.uint64  # an index Numba cannot prove non-negative is made unsigned: no wraparound select


@njit_serial
def _pointwise_int8_rows(x, zx, w, bias, multiplier, shift, zy, lo, hi, y, row_start, row_end):
    # Four pixels at a time share every weight row they read; the inner loop runs along a
    # contiguous weight row (int8 -> int32 multiply-adds, which LLVM vectorises). The sums are
    # requantized 16 channels at a time in int32 lanes (vnni.py's generic vector code, as the
    # depthwise kernel does), not one channel at a time in scalar int64 arithmetic.
    cin, cout = w.shape
    acc0 = np.empty(cout, np.int32)
    acc1 = np.empty(cout, np.int32)
    acc2 = np.empty(cout, np.int32)
    acc3 = np.empty(cout, np.int32)
    left = any_left_shift(shift)
    p = row_start
    while p < row_end:
        count = min(4, row_end - p)
        up = _U(p)
        q1, q2, q3 = _U(p + min(1, count - 1)), _U(p + min(2, count - 1)), _U(p + min(3, count - 1))
        for co in range(cout):
            acc0[co] = bias[co]
            acc1[co] = bias[co]
            acc2[co] = bias[co]
            acc3[co] = bias[co]
        for ci in range(cin):
            x0 = np.int32(x[up, ci]) - zx
            x1 = np.int32(x[q1, ci]) - zx  # past the last row, rows repeat (and are not stored)
            x2 = np.int32(x[q2, ci]) - zx
            x3 = np.int32(x[q3, ci]) - zx
            for co in range(cout):
                wv = np.int32(w[ci, co])
                acc0[co] += x0 * wv
                acc1[co] += x1 * wv
                acc2[co] += x2 * wv
                acc3[co] += x3 * wv
        for c0 in range(0, cout, 16):
            lanes = min(16, cout - c0)
            m, s = load16_part(multiplier, c0, lanes), load16_part(shift, c0, lanes)
            store16_int8(y, p * cout + c0, requantize16_layer(load16_part(acc0, c0, lanes), m, s, left, zy, lo, hi),
                         lanes)
            if count > 1:
                store16_int8(y, (p + 1) * cout + c0,
                             requantize16_layer(load16_part(acc1, c0, lanes), m, s, left, zy, lo, hi), lanes)
            if count > 2:
                store16_int8(y, (p + 2) * cout + c0,
                             requantize16_layer(load16_part(acc2, c0, lanes), m, s, left, zy, lo, hi), lanes)
            if count > 3:
                store16_int8(y, (p + 3) * cout + c0,
                             requantize16_layer(load16_part(acc3, c0, lanes), m, s, left, zy, lo, hi), lanes)
        p += count


@njit_parallel
def _pointwise_int8_parallel(x, zx, w, bias, multiplier, shift, zy, lo, hi, y, chunks):
    rows = y.shape[0]
    for c in numba.prange(chunks):
        _pointwise_int8_rows(x, zx, w, bias, multiplier, shift, zy, lo, hi, y, c * rows // chunks, (c + 1) * rows // chunks)


# AVX-512 VNNI (vnni.py): a register tile of 8 pixels x 16 output channels of int32 accumulators
# over the whole Cin, each step one 64-byte load of packed weights and 8 vpdpbusd, their 4 input
# bytes broadcast from x + 128 (u8); then, pixel by pixel from a 512-byte scratch, requantized
# 16 lanes at a time (vnni.requantize16) and stored as int8: only the int8 results reach y.
# The x + 128 words of 64 pixels are made once and reused by every 16-channel column block, whose
# packed weights (16 bytes per input channel) stay in L1.
VNNI_TILE_ROWS = 8
VNNI_CHUNK_ROWS = 64


@njit_inline
def _store_rows(acc, rows, m, s, left, zy, lo, hi, residual, add, y, at, cout, count):
    # the epilogue of the packed kernels' tiles: rows 0..rows-1 of acc (16 sums each) requantized
    # and stored as int8 at y.flat[at + r * cout], count channels; with a residual (not 0 rows), the
    # quantized add of each and the residual's same elements (`add`: `add_params`) stored instead
    for r in range(rows):
        q = requantize16_layer(load16(acc, 16 * r), m, s, left, zy, lo, hi)
        if residual.shape[0] > 0:
            scale20 = splat16(1 << ADD_LEFT_SHIFT)
            b = load16_int8(residual, at + r * cout, count)
            ra = multiply16(mul16(sub16(q, splat16(zy)), scale20), splat16(add[1]), splat16(add[2]))
            rb = multiply16(mul16(sub16(b, splat16(add[0])), scale20), splat16(add[3]), splat16(add[4]))
            q = requantize16(add16(ra, rb), splat16(add[6]), splat16(add[7]), add[5], -128, 127)
        store16_int8(y, at + r * cout, q, count)


@njit_serial
def _dot_row(x_words, words, a0, groups, width, c0):
    # a0 + sum_k x_words[k] . words[k, c0:c0+16]: four accumulators, so that a vpdpbusd need not
    # wait for the previous one's result; int32 sums modulo 2^32 in any order give the same bits
    zero = splat16(0)
    a1, a2, a3 = zero, zero, zero
    k = 0
    while k + 4 <= groups:
        a0 = dpbusd(a0, broadcast16(x_words, k), load16(words, k * width + c0))
        a1 = dpbusd(a1, broadcast16(x_words, k + 1), load16(words, (k + 1) * width + c0))
        a2 = dpbusd(a2, broadcast16(x_words, k + 2), load16(words, (k + 2) * width + c0))
        a3 = dpbusd(a3, broadcast16(x_words, k + 3), load16(words, (k + 3) * width + c0))
        k += 4
    while k < groups:
        a0 = dpbusd(a0, broadcast16(x_words, k), load16(words, k * width + c0))
        k += 1
    return add16(add16(a0, a1), add16(a2, a3))


@njit_serial
def _pointwise_int8_vnni_block(x, words, start, multipliers, shifts, left, zy, lo, hi, residual, add, field, y, row_start,
                               row_end, col_start, col_end):
    # x: (P, Cin) int8, words: packed w (ceil(Cin/4) * width,) int32 -> y: (P, Cout) int8, from the
    # per-channel constants of `vnni_arguments` (padded to width: the accumulators' start, the
    # multipliers, the shifts; `left`: some shift is > 0). With a residual (P, Cout) int8 (none: 0
    # rows), y is the quantized add of the requantized output and the residual (`_add_int8`'s
    # integers; `add`: `add_params`), the output never stored. Output channels
    # col_start..col_end-1 (multiples of 16, col_end at most the padded width). With a `field`
    # (`conv_field`, not empty), a standard convolution: x is its input (N*H*W, Cin), row p of y
    # output pixel p, and its K = KH*KW*Cin inputs are its receptive field, read from x as the
    # words are made (no gathered copy, as `_im2col_int8_rows` writes).
    cin, cout = x.shape[1], y.shape[1]
    width = start.shape[0]
    groups = words.shape[0] // width
    # the chunk's input words, whole tiles of rows (the tile reads rows past the chunk's last); their
    # bytes past Cin meet zero weights, so need no zeroing (a zeroed 64-row buffer, made per tile,
    # had cost a one-pixel layer of K = 576 most of its time)
    chunk_rows = -(-min(VNNI_CHUNK_ROWS, row_end - row_start) // VNNI_TILE_ROWS) * VNNI_TILE_ROWS
    x_u8 = np.empty(chunk_rows * groups * 4 + 16, np.uint8)      # 16 bytes for `_field_words`' last copy
    x_words, x_i8, x_flat = x_u8.view(np.int32), x_u8.view(np.int8), x.reshape(x.size)
    acc = np.empty(VNNI_TILE_ROWS * 16, np.int32)
    for p0 in range(row_start, row_end, VNNI_CHUNK_ROWS):
        rows = min(VNNI_CHUNK_ROWS, row_end - p0)
        if field.shape[0] > 0:
            _field_words(x, field, x_u8, p0, rows, groups)
        elif cin == groups * 4:
            # rows of words and of x hold the same bytes (plus 128): the chunk is one contiguous
            # copy, 64 bytes at a time (the last piece masked)
            count = rows * cin
            e = 0
            while e + 64 <= count:
                store64_int8(x_i8, e, unsigned64(load64_int8(x_flat, p0 * cin + e, 64)), 64)
                e += 64
            if e < count:
                store64_int8(x_i8, e, unsigned64(load64_int8(x_flat, p0 * cin + e, count - e)), count - e)
        else:
            for r in range(rows):
                for ci in range(cin):
                    x_u8[_U(r * groups * 4 + ci)] = np.uint8(np.int32(x[_U(p0 + r), _U(ci)]) + 128)
        for c0 in range(col_start, min(col_end, cout), 16):       # not the packing's padding past Cout
            m, s, count = load16(multipliers, c0), load16(shifts, c0), min(16, cout - c0)
            # rows past the chunk's last hold stale words: computed, never stored
            for r0 in range(0, rows, VNNI_TILE_ROWS):
                if rows == 1:
                    # one pixel (a fully connected layer at batch 1: SE, the classifier): four
                    # chains of sums over the input groups, not one, and no idle rows (1.7-2x
                    # faster on 144 to 1280 channels)
                    store16(acc, 0, _dot_row(x_words, words, load16(start, c0), groups, width, c0))
                    r0 = 0
                else:
                    a0 = load16(start, c0)
                    a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0
                    x0 = r0 * groups
                    for k in range(groups):
                        wk = load16(words, k * width + c0)
                        a0 = dpbusd(a0, broadcast16(x_words, x0 + k), wk)
                        a1 = dpbusd(a1, broadcast16(x_words, x0 + groups + k), wk)
                        a2 = dpbusd(a2, broadcast16(x_words, x0 + 2 * groups + k), wk)
                        a3 = dpbusd(a3, broadcast16(x_words, x0 + 3 * groups + k), wk)
                        a4 = dpbusd(a4, broadcast16(x_words, x0 + 4 * groups + k), wk)
                        a5 = dpbusd(a5, broadcast16(x_words, x0 + 5 * groups + k), wk)
                        a6 = dpbusd(a6, broadcast16(x_words, x0 + 6 * groups + k), wk)
                        a7 = dpbusd(a7, broadcast16(x_words, x0 + 7 * groups + k), wk)
                    store16(acc, 0, a0)
                    store16(acc, 16, a1)
                    store16(acc, 32, a2)
                    store16(acc, 48, a3)
                    store16(acc, 64, a4)
                    store16(acc, 80, a5)
                    store16(acc, 96, a6)
                    store16(acc, 112, a7)
                _store_rows(acc, min(VNNI_TILE_ROWS, rows - r0), m, s, left, zy, lo, hi, residual, add, y,
                            (p0 + r0) * cout + c0, cout, count)


@njit_serial
def _pointwise_int8_vnni_rows(x, words, start, multipliers, shifts, left, zy, lo, hi, residual, add, field, y, row_start,
                              row_end):
    _pointwise_int8_vnni_block(x, words, start, multipliers, shifts, left, zy, lo, hi, residual, add, field, y,
                               row_start, row_end, 0, start.shape[0])


@njit_parallel
def _pointwise_int8_vnni_parallel(x, words, start, multipliers, shifts, left, zy, lo, hi, residual, add, field, y,
                                  chunks):
    rows = y.shape[0]
    for c in numba.prange(chunks):
        _pointwise_int8_vnni_rows(x, words, start, multipliers, shifts, left, zy, lo, hi, residual, add, field, y,
                                  c * rows // chunks, (c + 1) * rows // chunks)


# AVX2 without VNNI: the same tiles on int16 pairs (`vnni.dpwssd`, vpmaddwd: 16 multiply-adds per 8
# lanes, exact). vpmaddubsw, AVX2's byte instruction (32 per 8 lanes), saturates its pairs' int16
# sums (2 * 255 * 127 > 2^15), as ONNX Runtime's int8 kernels do on such CPUs (`peer.py`); these
# integers must be the reference pipeline's. The words are x's int16 pairs (x itself: the start
# is b - z_x colsum) and the weight's (`vnni.pack_pairs`). A tile of 5 pixels by 16 channels: 10
# accumulators of two 8-lane halves, the weight's halves, an input and a product in 14 of the 16
# registers (6 pixels spilled an accumulator). Same arguments and results as the VNNI kernel.
PAIRS_TILE_ROWS = 5


@njit_serial
def _dot_row_pairs(x_words, words, a0, pairs, width, c0):
    # `_dot_row` on int16 pairs
    zero = splat16(0)
    a1, a2, a3 = zero, zero, zero
    k = 0
    while k + 4 <= pairs:
        a0 = dpwssd(a0, broadcast16(x_words, k), load16(words, k * width + c0))
        a1 = dpwssd(a1, broadcast16(x_words, k + 1), load16(words, (k + 1) * width + c0))
        a2 = dpwssd(a2, broadcast16(x_words, k + 2), load16(words, (k + 2) * width + c0))
        a3 = dpwssd(a3, broadcast16(x_words, k + 3), load16(words, (k + 3) * width + c0))
        k += 4
    while k < pairs:
        a0 = dpwssd(a0, broadcast16(x_words, k), load16(words, k * width + c0))
        k += 1
    return add16(add16(a0, a1), add16(a2, a3))


@njit_serial
def _pointwise_int8_pairs_block(x, words, start, multipliers, shifts, left, zy, lo, hi, residual, add, field, y,
                                row_start, row_end, col_start, col_end):
    # `_pointwise_int8_vnni_block` on int16 pairs: words packed by `vnni.pack_pairs`, start b - z_x colsum
    cin, cout = x.shape[1], y.shape[1]
    width = start.shape[0]
    pairs = words.shape[0] // width
    stride = 2 * pairs                                          # int16s per row of input words
    chunk_rows = -(-min(VNNI_CHUNK_ROWS, row_end - row_start) // PAIRS_TILE_ROWS) * PAIRS_TILE_ROWS
    x16 = np.zeros(chunk_rows * stride, np.int16)       # rows past a chunk's last: computed, never stored
    x_words, x_flat = x16.view(np.int32), x.reshape(x.size)
    groups = -(-stride // 4)
    # a standard convolution's fields: gathered as the VNNI kernel's bytes (x + 128), then widened
    fields = np.empty(chunk_rows * groups * 4 + 16 if field.shape[0] > 0 else 0, np.uint8)
    acc = np.empty(PAIRS_TILE_ROWS * 16, np.int32)
    for p0 in range(row_start, row_end, VNNI_CHUNK_ROWS):
        rows = min(VNNI_CHUNK_ROWS, row_end - p0)
        if field.shape[0] > 0:
            # (bytes past a field's K are left as they were: they meet zero weights)
            _field_words(x, field, fields, p0, rows, groups)
            for r in range(rows):
                for j in range(stride):
                    x16[_U(r * stride + j)] = np.int16(fields[_U(r * groups * 4 + j)]) - 128
        else:
            for r in range(rows):
                for ci in range(cin):
                    x16[_U(r * stride + ci)] = x_flat[_U((p0 + r) * cin + ci)]
        for c0 in range(col_start, min(col_end, cout), 16):
            m, s, count = load16(multipliers, c0), load16(shifts, c0), min(16, cout - c0)
            for r0 in range(0, rows, PAIRS_TILE_ROWS):
                if rows == 1:
                    store16(acc, 0, _dot_row_pairs(x_words, words, load16(start, c0), pairs, width, c0))
                else:
                    a0 = load16(start, c0)
                    a1, a2, a3, a4 = a0, a0, a0, a0
                    x0 = r0 * pairs
                    for k in range(pairs):
                        wk = load16(words, k * width + c0)
                        a0 = dpwssd(a0, broadcast16(x_words, x0 + k), wk)
                        a1 = dpwssd(a1, broadcast16(x_words, x0 + pairs + k), wk)
                        a2 = dpwssd(a2, broadcast16(x_words, x0 + 2 * pairs + k), wk)
                        a3 = dpwssd(a3, broadcast16(x_words, x0 + 3 * pairs + k), wk)
                        a4 = dpwssd(a4, broadcast16(x_words, x0 + 4 * pairs + k), wk)
                    store16(acc, 0, a0)
                    store16(acc, 16, a1)
                    store16(acc, 32, a2)
                    store16(acc, 48, a3)
                    store16(acc, 64, a4)
                _store_rows(acc, min(PAIRS_TILE_ROWS, rows - r0), m, s, left, zy, lo, hi, residual, add, y,
                            (p0 + r0) * cout + c0, cout, count)


@njit_serial
def _pointwise_int8_pairs_rows(x, words, start, multipliers, shifts, left, zy, lo, hi, residual, add, field, y,
                               row_start, row_end):
    _pointwise_int8_pairs_block(x, words, start, multipliers, shifts, left, zy, lo, hi, residual, add, field, y,
                                row_start, row_end, 0, start.shape[0])


@njit_parallel
def _pointwise_int8_pairs_parallel(x, words, start, multipliers, shifts, left, zy, lo, hi, residual, add, field, y,
                                   chunks):
    rows = y.shape[0]
    for c in numba.prange(chunks):
        _pointwise_int8_pairs_rows(x, words, start, multipliers, shifts, left, zy, lo, hi, residual, add, field, y,
                                   c * rows // chunks, (c + 1) * rows // chunks)


def packed_kernels():
    """(rows kernel, parallel driver) on a packed weight for this CPU: VNNI's or the pairs'
    (`vnni.packed_enabled()`)."""
    if vnni.vnni_enabled():
        return _pointwise_int8_vnni_rows, _pointwise_int8_vnni_parallel
    return _pointwise_int8_pairs_rows, _pointwise_int8_pairs_parallel


def vnni_arguments(w, zx, bias, multiplier, shift, pairs=None):
    """(words, start, multipliers, shifts, left) of the packed kernel this CPU runs (`packed_kernels`)
    for w (Cin, Cout) int8, once per layer rather than per call or tile: the packed weight
    (`vnni.packed_weight`: quads of bytes for VNNI, int16 pairs for the pairs kernel), and padded to
    its width the accumulators' start b - (128 + z_x) colsum (the VNNI kernel feeds x + 128, see
    vnni.py) or b - z_x colsum (the pairs kernel feeds x), the multipliers and shifts; `left`
    (int32): whether some shift is > 0. `pairs`: for the pairs kernel (True) or VNNI's (False),
    whatever the CPU runs; None: the kernel it runs."""
    pairs = not vnni.vnni_enabled() if pairs is None else pairs
    words, colsum = vnni.packed_weight(w, vnni.pack_pairs if pairs else vnni.pack_weight)
    width, cout = colsum.shape[0], w.shape[1]
    start, multipliers, shifts = (np.zeros(width, np.int32) for _ in range(3))
    # int32 arithmetic modulo 2^32, as the kernel's sums are
    offset = 0 if pairs else 128
    start[:cout] = (bias.astype(np.int64) - (offset + int(zx)) * colsum[:cout].astype(np.int64)).astype(np.int32)
    multipliers[:cout], shifts[:cout] = multiplier, shift
    return words, start, multipliers, shifts, np.int32(bool(np.any(shift > 0)))


NO_RESIDUAL = np.zeros((0, 1), np.int8)
NO_ADD = np.zeros(8, np.int32)
NO_FIELD = np.zeros(0, np.int64)


def conv_field(x_shape, kh, kw, stride, padding, dilation, out_hw, zx):
    """The VNNI kernel's `field` for a standard convolution of x (N, H, W, Cin): (H, W, KH, KW,
    stride, top and left padding, dilation, Ho, Wo, z_x) as int64."""
    (sh, sw), (pt, _, pl, _), (dh, dw) = stride, padding, dilation
    return np.array([x_shape[1], x_shape[2], kh, kw, sh, sw, pt, pl, dh, dw, out_hw[0], out_hw[1], zx], np.int64)


@njit_serial
def _field_words(x, field, x_u8, p0, rows, groups):
    # the VNNI kernel's input words for output pixels p0..p0+rows-1 of a standard convolution:
    # each pixel's receptive field from x (N*H*W, Cin), plus 128. Taken an output row's run of
    # pixels at a time: the pixels whose field lies wholly inside x (dilation 1, KW*Cin <= 64)
    # copy their KH rows in a loop of their own, three instructions a row (the stem: 9 bytes);
    # the others go through `_gather_field`, in another loop after it (one loop through
    # `_gather_field` for every pixel took the stem's words 140 us per 224x224 image, these two
    # loops 84). Where a kernel row is at most 16 bytes, each is one plain 16-byte copy whose
    # bytes past the row are overwritten by the next row, the next pixel's words (written after
    # it: the border pixels' gathers come last) or, at the field's end, meet zero weights (the
    # masked 64-byte copies, on this CPU, took most of those 84 us); x_u8 has 16 bytes to spare.
    h, wd, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo, zx = (field[0], field[1], field[2], field[3], field[4], field[5],
                                                         field[6], field[7], field[8], field[9], field[10], field[11],
                                                         field[12])
    cin = x.shape[1]
    xf, words = x.reshape(x.size), x_u8.view(np.int8)
    run, stride, step = kw * cin, groups * 4, dh * wd * cin
    lo, hi = _interior_columns(wd, wo, kw, sw, pl, 1)     # output columns whose kernel rows lie inside x
    n, q = p0 // (ho * wo), p0 % (ho * wo)
    oh, ow = q // wo, q % wo
    r = 0
    while r < rows:
        count = min(rows - r, wo - ow)          # pixels of output row oh in this chunk
        ih0 = oh * sh - pt
        inside = dw == 1 and run <= 64 and ih0 >= 0 and ih0 + (kh - 1) * dh < h
        a = max(lo, ow) if inside else ow
        b = max(a, min(hi, ow + count)) if inside else ow
        for c in range(a, b):
            src, o = ((n * h + ih0) * wd + c * sw - pl) * cin, (r + c - ow) * stride
            if run <= 16 and src + (kh - 1) * step + 16 <= xf.size:      # the last copy's 16 bytes inside x
                for i in range(kh):
                    copy16_unsigned(words, o, xf, src)
                    src += step
                    o += run
            else:
                for i in range(kh):
                    store64_int8(words, o, unsigned64(load64_int8(xf, src, run)), run)
                    src += step
                    o += run
        for c in range(ow, ow + count):
            if c < a or c >= b:
                _gather_field(xf, h, wd, cin, n, oh, c, kh, kw, sh, sw, pt, pl, dh, dw, zx, True, words,
                              (r + c - ow) * stride)
        r += count
        ow += count
        if ow == wo:
            ow, oh = 0, oh + 1
            if oh == ho:
                oh, n = 0, n + 1


@njit_serial_strict
def quantize_images(x, scale, zero_point, y):
    """y = clip(round(x / s) + z, -128, 127), rounding half to even, x float32 and y int8 (flat): the
    one float step at an int8 model's input, in NumPy's arithmetic (an IEEE division: no fast-math,
    whose reciprocal multiply would round otherwise); a NaN gives 0, as NumPy's cast does."""
    s, z = np.float32(scale), np.float32(zero_point)
    lo, hi = np.float32(-128), np.float32(127)
    for i in range(x.shape[0]):
        v = np.rint(x[i] / s) + z
        if v != v:
            v = np.float32(0)
        y[i] = np.int8(min(max(v, lo), hi))


def add_params(zb, ma, sa, mb, sb, zo, my, so):
    """`add` of the fused residual: the conv output a (zero point: the conv's z_y) and the
    residual b, each rescaled (ma, sa), (mb, sb), summed, requantized (my, so) to zero point zo."""
    return np.array([zb, ma, sa, mb, sb, zo, my, so], np.int32)


def pointwise_int8_call(x2d, zx, w, bias, multiplier, shift, zy, lo, hi, y, residual=None, add=None):
    """(kernel, args): `kernel(*args)` writes `pointwise_int8`'s result into y (P, Cout) int8. A
    `residual` (P, Cout) int8 with its `add_params` makes y the quantized add of the two (the
    packed kernels only: `vnni.packed_enabled()`)."""
    rows = x2d.shape[0]
    requant = (bias, multiplier, shift, np.int32(zy), np.int32(lo), np.int32(hi))
    if vnni.packed_enabled():
        residual = NO_RESIDUAL if residual is None else residual
        args = (x2d, *vnni_arguments(w, zx, bias, multiplier, shift), *requant[3:], residual,
                NO_ADD if add is None else add, NO_FIELD, y)
        return _rows_call(*packed_kernels(), args, rows, rows * w.size)
    if residual is not None:
        raise ValueError("the residual add is fused into the packed kernels only (VNNI's, the int16 pairs')")
    args = (x2d, np.int32(zx), w, *requant, y)
    return _rows_call(_pointwise_int8_rows, _pointwise_int8_parallel, args, rows, rows * w.size)


def pointwise_int8(x2d, zx, w, bias, multiplier, shift, zy, lo, hi):
    """A 1x1 convolution over pixels, or a linear layer: x (P, Cin) int8 -> y (P, Cout) int8.

    On a CPU with AVX-512 VNNI (unless NPMOBILENET_NO_VNNI=1) the VNNI kernel, on the weight packed
    once (`vnni.packed_weight`); else with AVX2 (unless NPMOBILENET_NO_PAIRS=1) the int16-pair
    kernel, on the weight packed in pairs; elsewhere the portable one. All give the same bits."""
    y = np.empty((x2d.shape[0], w.shape[1]), np.int8)
    kernel, args = pointwise_int8_call(x2d, zx, w, bias, multiplier, shift, zy, lo, hi, y)
    kernel(*args)
    return y


# -- elementwise and reductions -------------------------------------------------------------------
@njit_serial
def _lookup_int8(x, table, y):
    # A 256-entry table indexed by q + 128: any elementwise function of one int8 tensor.
    for i in range(x.size):
        y[i] = table[np.int32(x[i]) + 128]


@njit_serial
def _lookup_int8_vbmi(x, table, y):
    # The same with AVX-512 VBMI (vnni.lookup64): the table held in four registers, 64 values per
    # step (two byte permutes and a select), the tail masked.
    t0, t1 = load64_int8(table, 0, 64), load64_int8(table, 64, 64)
    t2, t3 = load64_int8(table, 128, 64), load64_int8(table, 192, 64)
    for i in range(0, x.size, 64):
        count = min(64, x.size - i)
        store64_int8(y, i, lookup64(t0, t1, t2, t3, load64_int8(x, i, count)), count)


@njit_serial
def _lookup_int8_avx2(x, table, y):
    # The same with AVX2 (vnni.lookup32: 32 values per step, the table as 16 sub-tables of 16
    # looked up by vpshufb), the tail by the scalar loop.
    size = x.size
    i = 0
    while i + 32 <= size:
        lookup32(table, x, y, i)
        i += 32
    for j in range(i, size):
        y[j] = table[np.int32(x[j]) + 128]


def lookup_int8_call(x, table, y):
    """(kernel, args) of `lookup_int8` into y (x's shape, int8): the VBMI kernel where the CPU has
    it and VNNI is enabled, else the AVX2 one where the pairs kernels run (`vnni.pairs_enabled()`;
    NPMOBILENET_NO_VNNI=1 and NPMOBILENET_NO_PAIRS=1 keep every int8 kernel portable)."""
    if vnni.vnni_enabled() and vnni.has_vbmi():
        kernel = _lookup_int8_vbmi
    elif vnni.pairs_enabled():
        kernel = _lookup_int8_avx2
    else:
        kernel = _lookup_int8
    return kernel, (x.reshape(-1), table, y.reshape(-1))


def lookup_int8(x, table):
    """y = table[x + 128] elementwise: x int8 (any shape), table int8 (256,)."""
    y = np.empty(x.shape, np.int8)
    kernel, args = lookup_int8_call(np.ascontiguousarray(x), table, y)
    kernel(*args)
    return y


@njit_serial
def _add_int8(a, za, ma, sa, b, zb, mb, sb, left_shift, zy, my, sy, lo, hi, y):
    # TFLite's quantized Add: both inputs brought to a common scale 2*max(s_a, s_b) / 2^left_shift
    # (20 fractional bits of headroom), summed in int32, then requantized to the output scale.
    # 16 values at a time (vnni.py's vectors); |(q - z) 2^20| < 2^28 and each rescaled term is
    # at most half of it, so every step fits int32 lanes.
    za16, zb16, scale = splat16(za), splat16(zb), splat16(1 << left_shift)
    ma16, sa16, mb16, sb16, my16, sy16 = splat16(ma), splat16(sa), splat16(mb), splat16(sb), splat16(my), splat16(sy)
    for i in range(0, a.size, 16):
        count = min(16, a.size - i)
        ra = multiply16(mul16(sub16(load16_int8(a, i, count), za16), scale), ma16, sa16)
        rb = multiply16(mul16(sub16(load16_int8(b, i, count), zb16), scale), mb16, sb16)
        store16_int8(y, i, requantize16(add16(ra, rb), my16, sy16, zy, lo, hi), count)


def add_int8_call(a, za, ma, sa, b, zb, mb, sb, left_shift, zy, my, sy, lo, hi, y):
    """(kernel, args) of `add_int8` into y (a's shape, int8)."""
    i32 = np.int32
    return _add_int8, (a.reshape(-1), i32(za), i32(ma), i32(sa), b.reshape(-1), i32(zb), i32(mb), i32(sb),
                       i32(left_shift), i32(zy), i32(my), i32(sy), i32(lo), i32(hi), y.reshape(-1))


def add_int8(a, za, ma, sa, b, zb, mb, sb, left_shift, zy, my, sy, lo=-128, hi=127):
    """Residual add of two int8 tensors of one shape, each with its own (multiplier, shift)."""
    y = np.empty(a.shape, np.int8)
    kernel, args = add_int8_call(np.ascontiguousarray(a), za, ma, sa, np.ascontiguousarray(b), zb, mb, sb, left_shift,
                                 zy, my, sy, lo, hi, y)
    kernel(*args)
    return y


@njit_serial
def _mean_int8(x, zx, multiplier, shift, zy, y):
    # x: (N, HW, C) -> y: (N, C). The sum over HW of (q - z) is exact in int32 (HW * 255 < 2^31);
    # the multiplier carries s_x / (HW * s_y), so the division by HW is part of the requantization.
    n_, hw, channels = x.shape
    acc = np.empty(channels, np.int32)
    for n in range(n_):
        for c in range(channels):
            acc[c] = 0
        for p in range(hw):
            for c in range(channels):
                acc[c] += np.int32(x[n, p, c]) - zx
        for c in range(channels):
            y[n, c] = _requantize_store(acc[c], multiplier, shift, zy, -128, 127)


def mean_int8_call(x, zx, multiplier, shift, zy, y):
    """(kernel, args) of `mean_int8` into y (N, C) int8."""
    n, h, w, c = x.shape
    return _mean_int8, (x.reshape(n, h * w, c), np.int32(zx), np.int32(multiplier), np.int32(shift), np.int32(zy), y)


def mean_int8(x, zx, multiplier, shift, zy):
    """Global average pool in int8: x (N, H, W, C) -> y (N, C)."""
    y = np.empty((x.shape[0], x.shape[3]), np.int8)
    kernel, args = mean_int8_call(np.ascontiguousarray(x), zx, multiplier, shift, zy, y)
    kernel(*args)
    return y


@njit_serial
def _channel_scale_int8(x, zx, g, zg, multiplier, shift, zy, y):
    # Squeeze-and-excitation's y = x * s per image and channel (TFLite's quantized Mul):
    # r_y = s_x s_g (q_x - z_x)(q_g - z_g), so q_y = z_y + M (q_x - z_x)(q_g - z_g), M = s_x s_g / s_y.
    # 16 channels at a time (vnni.py's vectors); |(q_x - z_x)(q_g - z_g)| <= 255^2 fits int32 lanes.
    n_, hw, channels = x.shape
    zx16, zg16, m16, s16 = splat16(zx), splat16(zg), splat16(multiplier), splat16(shift)
    for n in range(n_):
        for p in range(hw):
            row = (n * hw + p) * channels
            for c0 in range(0, channels, 16):
                count = min(16, channels - c0)
                gate = sub16(load16_int8(g, n * channels + c0, count), zg16)
                prod = mul16(sub16(load16_int8(x, row + c0, count), zx16), gate)
                if shift > 0:
                    q = requantize16(prod, m16, s16, zy, -128, 127)
                else:
                    q = requantize16_right(prod, m16, s16, zy, -128, 127)
                store16_int8(y, row + c0, q, count)


def channel_scale_int8_call(x, zx, g, zg, multiplier, shift, zy, y):
    """(kernel, args) of `channel_scale_int8` into y (x's shape, int8)."""
    n, h, w, c = x.shape
    return _channel_scale_int8, (x.reshape(n, h * w, c), np.int32(zx), g, np.int32(zg), np.int32(multiplier),
                                 np.int32(shift), np.int32(zy), y.reshape(n, h * w, c))


def channel_scale_int8(x, zx, g, zg, multiplier, shift, zy):
    """x (N, H, W, C) int8 times a per-image, per-channel gate g (N, C) int8 -> y (N, H, W, C) int8."""
    y = np.empty(x.shape, np.int8)
    kernel, args = channel_scale_int8_call(np.ascontiguousarray(x), zx, np.ascontiguousarray(g), zg, multiplier, shift,
                                           zy, y)
    kernel(*args)
    return y
