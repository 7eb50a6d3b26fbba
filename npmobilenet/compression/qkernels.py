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
from npmobilenet.config import njit_parallel, njit_serial

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


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


def _run_rows(rows_kernel, parallel_driver, args, rows, macs):
    """Run `rows_kernel(*args, 0, rows)` serially, or, when the work pays for threads (the one
    threshold in npmobilenet.config), `parallel_driver(*args, chunks)` over chunks of rows."""
    if config.choose_kernel(False, True, macs):
        parallel_driver(*args, min(rows, 4 * numba.get_num_threads()))
    else:
        rows_kernel(*args, 0, rows)


# -- standard convolution: x (N, H, W, Cin), w (KH, KW, Cin, Cout) -> y (N, Ho, Wo, Cout) ---------
@njit_serial
def _conv2d_int8_rows(x, zx, w, bias, multiplier, shift, zy, lo, hi, sh, sw, pt, pl, dilation_h, dilation_w, y, row_start, row_end):
    n_, h, wd, cin = x.shape
    kh, kw, _, cout = w.shape
    _, ho, wo, _ = y.shape
    acc = np.empty(cout, np.int32)
    for row in range(row_start, row_end):
        n = row // ho
        oh = row % ho
        for ow in range(wo):
            for co in range(cout):
                acc[co] = bias[co]
            for i in range(kh):
                ih = oh * sh - pt + i * dilation_h
                if ih < 0 or ih >= h:
                    continue  # padding: real value 0
                for j in range(kw):
                    iw = ow * sw - pl + j * dilation_w
                    if iw < 0 or iw >= wd:
                        continue
                    for ci in range(cin):
                        xv = np.int32(x[n, ih, iw, ci]) - zx
                        for co in range(cout):
                            acc[co] += xv * np.int32(w[i, j, ci, co])
            for co in range(cout):
                y[n, oh, ow, co] = _requantize_store(acc[co], multiplier[co], shift[co], zy, lo, hi)


@njit_parallel
def _conv2d_int8_parallel(x, zx, w, bias, multiplier, shift, zy, lo, hi, sh, sw, pt, pl, dilation_h, dilation_w, y, chunks):
    rows = y.shape[0] * y.shape[1]
    for c in numba.prange(chunks):
        _conv2d_int8_rows(x, zx, w, bias, multiplier, shift, zy, lo, hi, sh, sw, pt, pl, dilation_h, dilation_w, y,
                          c * rows // chunks, (c + 1) * rows // chunks)


def conv2d_int8(x, zx, w, bias, multiplier, shift, zy, lo, hi, stride, padding, dilation, out_shape):
    """Standard convolution in int8 (clean arrays; see the module docstring). Returns y int8."""
    y = np.empty(out_shape, np.int8)
    (sh, sw), (pt, _, pl, _), (dilation_h, dilation_w) = stride, padding, dilation
    rows = out_shape[0] * out_shape[1]
    args = (x, np.int32(zx), w, bias, multiplier, shift, np.int32(zy), np.int32(lo), np.int32(hi), sh, sw, pt, pl, dilation_h, dilation_w, y)
    _run_rows(_conv2d_int8_rows, _conv2d_int8_parallel, args, rows, y.size * w.shape[0] * w.shape[1] * w.shape[2])
    return y


# -- depthwise convolution: x (N, H, W, C), w (KH, KW, C) -> y (N, Ho, Wo, C) ---------------------
@njit_serial
def _depthwise_int8_rows(x, zx, w, bias, multiplier, shift, zy, lo, hi, sh, sw, pt, pl, dilation_h, dilation_w, y, row_start, row_end):
    n_, h, wd, c_ = x.shape
    kh, kw, channels = w.shape
    _, ho, wo, _ = y.shape
    acc = np.empty(channels, np.int32)
    for row in range(row_start, row_end):
        n = row // ho
        oh = row % ho
        for ow in range(wo):
            for c in range(channels):
                acc[c] = bias[c]
            for i in range(kh):
                ih = oh * sh - pt + i * dilation_h
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    iw = ow * sw - pl + j * dilation_w
                    if iw < 0 or iw >= wd:
                        continue
                    # V1 paper, Eq. 3: each channel filtered by its own kernel.
                    for c in range(channels):
                        acc[c] += (np.int32(x[n, ih, iw, c]) - zx) * np.int32(w[i, j, c])
            for c in range(channels):
                y[n, oh, ow, c] = _requantize_store(acc[c], multiplier[c], shift[c], zy, lo, hi)


@njit_parallel
def _depthwise_int8_parallel(x, zx, w, bias, multiplier, shift, zy, lo, hi, sh, sw, pt, pl, dilation_h, dilation_w, y, chunks):
    rows = y.shape[0] * y.shape[1]
    for c in numba.prange(chunks):
        _depthwise_int8_rows(x, zx, w, bias, multiplier, shift, zy, lo, hi, sh, sw, pt, pl, dilation_h, dilation_w, y,
                             c * rows // chunks, (c + 1) * rows // chunks)


def depthwise_conv2d_int8(x, zx, w, bias, multiplier, shift, zy, lo, hi, stride, padding, dilation, out_shape):
    """Depthwise convolution in int8 (clean arrays). Returns y int8 `(N, Ho, Wo, C)`."""
    y = np.empty(out_shape, np.int8)
    (sh, sw), (pt, _, pl, _), (dilation_h, dilation_w) = stride, padding, dilation
    rows = out_shape[0] * out_shape[1]
    args = (x, np.int32(zx), w, bias, multiplier, shift, np.int32(zy), np.int32(lo), np.int32(hi), sh, sw, pt, pl, dilation_h, dilation_w, y)
    _run_rows(_depthwise_int8_rows, _depthwise_int8_parallel, args, rows, y.size * w.shape[0] * w.shape[1])
    return y


# -- pointwise convolution / linear: x (P, Cin), w (Cin, Cout) -> y (P, Cout) ---------------------
_U = np.uint64  # an index Numba cannot prove non-negative is made unsigned: no wraparound select


@njit_serial
def _pointwise_int8_rows(x, zx, w, bias, multiplier, shift, zy, lo, hi, y, row_start, row_end):
    # Four pixels at a time share every weight row they read; the inner loop runs along a
    # contiguous weight row (int8 -> int32 multiply-adds, which LLVM vectorises).
    cin, cout = w.shape
    acc0 = np.empty(cout, np.int32)
    acc1 = np.empty(cout, np.int32)
    acc2 = np.empty(cout, np.int32)
    acc3 = np.empty(cout, np.int32)
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
        for co in range(cout):
            y[up, co] = _requantize_store(acc0[co], multiplier[co], shift[co], zy, lo, hi)
        if count > 1:
            for co in range(cout):
                y[q1, co] = _requantize_store(acc1[co], multiplier[co], shift[co], zy, lo, hi)
        if count > 2:
            for co in range(cout):
                y[q2, co] = _requantize_store(acc2[co], multiplier[co], shift[co], zy, lo, hi)
        if count > 3:
            for co in range(cout):
                y[q3, co] = _requantize_store(acc3[co], multiplier[co], shift[co], zy, lo, hi)
        p += count


@njit_parallel
def _pointwise_int8_parallel(x, zx, w, bias, multiplier, shift, zy, lo, hi, y, chunks):
    rows = y.shape[0]
    for c in numba.prange(chunks):
        _pointwise_int8_rows(x, zx, w, bias, multiplier, shift, zy, lo, hi, y, c * rows // chunks, (c + 1) * rows // chunks)


def pointwise_int8(x2d, zx, w, bias, multiplier, shift, zy, lo, hi):
    """A 1x1 convolution over pixels, or a linear layer: x (P, Cin) int8 -> y (P, Cout) int8."""
    rows, cout = x2d.shape[0], w.shape[1]
    y = np.empty((rows, cout), np.int8)
    args = (x2d, np.int32(zx), w, bias, multiplier, shift, np.int32(zy), np.int32(lo), np.int32(hi), y)
    _run_rows(_pointwise_int8_rows, _pointwise_int8_parallel, args, rows, rows * w.size)
    return y


# -- elementwise and reductions -------------------------------------------------------------------
@njit_serial
def _lookup_int8(x, table, y):
    # A 256-entry table indexed by q + 128: any elementwise function of one int8 tensor.
    for i in range(x.size):
        y[i] = table[np.int32(x[i]) + 128]


def lookup_int8(x, table):
    """y = table[x + 128] elementwise: x int8 (any shape), table int8 (256,)."""
    y = np.empty(x.size, np.int8)
    _lookup_int8(x.reshape(-1), table, y)
    return y.reshape(x.shape)


@njit_serial
def _add_int8(a, za, ma, sa, b, zb, mb, sb, left_shift, zy, my, sy, lo, hi, y):
    # TFLite's quantized Add: both inputs brought to a common scale 2*max(s_a, s_b) / 2^left_shift
    # (20 fractional bits of headroom), summed in int32, then requantized to the output scale.
    for i in range(a.size):
        ra = multiply_by_quantized_multiplier((np.int64(a[i]) - za) << left_shift, ma, sa)
        rb = multiply_by_quantized_multiplier((np.int64(b[i]) - zb) << left_shift, mb, sb)
        y[i] = _requantize_store(ra + rb, my, sy, zy, lo, hi)


def add_int8(a, za, ma, sa, b, zb, mb, sb, left_shift, zy, my, sy, lo=-128, hi=127):
    """Residual add of two int8 tensors of one shape, each with its own (multiplier, shift)."""
    y = np.empty(a.size, np.int8)
    _add_int8(a.reshape(-1), za, ma, sa, b.reshape(-1), zb, mb, sb, left_shift, zy, my, sy, lo, hi, y)
    return y.reshape(a.shape)


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


def mean_int8(x, zx, multiplier, shift, zy):
    """Global average pool in int8: x (N, H, W, C) -> y (N, C)."""
    n, h, w, c = x.shape
    y = np.empty((n, c), np.int8)
    _mean_int8(x.reshape(n, h * w, c), np.int32(zx), np.int32(multiplier), np.int32(shift), np.int32(zy), y)
    return y


@njit_serial
def _channel_scale_int8(x, zx, g, zg, multiplier, shift, zy, y):
    # Squeeze-and-excitation's y = x * s per image and channel (TFLite's quantized Mul):
    # r_y = s_x s_g (q_x - z_x)(q_g - z_g), so q_y = z_y + M (q_x - z_x)(q_g - z_g), M = s_x s_g / s_y.
    n_, hw, channels = x.shape
    for n in range(n_):
        for p in range(hw):
            for c in range(channels):
                prod = (np.int32(x[n, p, c]) - zx) * (np.int32(g[n, c]) - zg)
                y[n, p, c] = _requantize_store(prod, multiplier, shift, zy, -128, 127)


def channel_scale_int8(x, zx, g, zg, multiplier, shift, zy):
    """x (N, H, W, C) int8 times a per-image, per-channel gate g (N, C) int8 -> y (N, H, W, C) int8."""
    n, h, w, c = x.shape
    y = np.empty((n, h * w, c), np.int8)
    _channel_scale_int8(x.reshape(n, h * w, c), np.int32(zx), g, np.int32(zg), np.int32(multiplier),
                        np.int32(shift), np.int32(zy), y)
    return y.reshape(x.shape)
