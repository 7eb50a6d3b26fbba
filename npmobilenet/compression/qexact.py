"""The exact float32 paths of int8 inference (`qmodel.integer_only = False`).

The integer kernels' sums (`qkernels.py`) are integers. float32 represents every integer up to
2^24 exactly, so a sum of integer products whose absolute values add up to less than 2^24 comes
out exact from float32 arithmetic in any order, with or without fused multiply-adds. With |q_x - z_x| <= 255 and
|q_w| <= max|w|, a sum over K taps is exact when K * 255 * max|w| < 2^24 (K <= 518 taps at
max|w| = 127): every stem convolution, and a pointwise one in chunks of K. So those int8 layers
can run on the float tiles of npmobilenet.ops (the ones fused inference and training run: SGEMM
tiles, the stem's direct taps or gathered receptive fields times SGEMM) and still give exactly
the integer accumulators, which one vectorised requantization turns into int8: bit for bit the
reference's result (tested), 3-4x faster than the scalar integer loops were. They serve CPUs
without AVX-512 VNNI only (`QConv.exact_path`); depthwise layers no longer take this path: the
16-lane integer kernel measured 1.4-2x faster than its float twin (since removed) on
MobileNet's 3x3 and 5x5 layers.
"""
import numpy as np
from numba import prange

from npmobilenet import config
from npmobilenet.compression.qkernels import INT32_MAX, INT32_MIN
from npmobilenet.config import njit_serial, serial_and_parallel
from npmobilenet.ops.blas import matmul, sgemm_address, single_threaded_blas
from npmobilenet.ops.conv import conv_tile, tile_pixels, workspace_shape
from npmobilenet.ops.epilogue import IDENTITY


EXACT = 1 << 24


def exact_chunk(zx, weight):
    """The most taps whose integer products sum exactly in float32 for input zero point `zx`."""
    step = max(127 - int(zx), int(zx) + 128) * max(1, int(np.max(np.abs(weight.astype(np.int32)))))
    return (EXACT - 1) // step


@njit_serial
def _requantize_row(acc, bias, multiplier, shift, zy, lo, hi, y):
    """y[c] = clamp(z_y + M[c] * (acc[c] + bias[c]), lo, hi) for one row: `_requantize_store`'s
    integer arithmetic (acc: exact integers, float32 or int32) written as selects, not branches,
    so that the loop vectorises."""
    for c in range(y.shape[0]):
        s = np.int64(shift[c])
        left = s if s > 0 else np.int64(0)
        right = -s if s < 0 else np.int64(0)
        v = (np.int64(np.int32(acc[c])) + bias[c]) << left
        v = min(max(v, np.int64(INT32_MIN)), np.int64(INT32_MAX))
        m = np.int64(multiplier[c])
        ab = v * m
        t = ab + (np.int64(1 << 30) if ab >= 0 else np.int64(1 - (1 << 30)))
        high = (t >> 31) if t >= 0 else -((-t) >> 31)
        high = np.int64(INT32_MAX) if (v == INT32_MIN and m == INT32_MIN) else high
        mask = (np.int64(1) << right) - 1
        threshold = (mask >> 1) + (np.int64(1) if high < 0 else np.int64(0))
        q = (high >> right) + (np.int64(1) if (high & mask) > threshold else np.int64(0)) + zy
        y[c] = min(max(q, np.int64(lo)), np.int64(hi))


@njit_serial
def _to_float_rows(x, zx, xf, p0, p1):
    """xf[p] = q_x[p] - z_x as float32, rows p0..p1-1 of 2-D arrays."""
    for p in range(p0, p1):
        for c in range(x.shape[1]):
            xf[p, c] = np.float32(np.int32(x[p, c]) - zx)


def _pointwise_int8_exact(x, zx, wf, bias, multiplier, shift, zy, lo, hi, k_chunk, tile_rows, sgemm, y):
    # x: (P, K) int8, wf: (K, M) float32 (the int8 weights) -> y: (P, M) int8; row tiles in parallel,
    # each: x - z_x in float32, products in K-chunks of at most k_chunk (exact), requantized.
    rows, k = x.shape
    m = wf.shape[1]
    for t in prange((rows + tile_rows - 1) // tile_rows):
        p0 = t * tile_rows
        n = min(rows, p0 + tile_rows) - p0
        xf = np.empty((n, k), np.float32)
        _to_float_rows(x[p0:p0 + n], zx, xf, 0, n)
        accf = np.empty((n, m), np.float32)
        if k <= k_chunk:
            matmul(sgemm, xf, 0, n, wf, 0, m, accf)
            for p in range(n):
                _requantize_row(accf[p], bias, multiplier, shift, zy, lo, hi, y[p0 + p])
        else:
            acc = np.zeros((n, m), np.int32)
            for k0 in range(0, k, k_chunk):
                k1 = min(k, k0 + k_chunk)
                matmul(sgemm, xf[:, k0:k1], 0, n, wf[k0:k1], 0, m, accf)
                for p in range(n):
                    for c in range(m):
                        acc[p, c] += np.int32(accf[p, c])
            for p in range(n):
                _requantize_row(acc[p], bias, multiplier, shift, zy, lo, hi, y[p0 + p])


@njit_serial
def _image_row_to_float(x, zx, xf, r):
    """Row r (= n * H + h) of an int8 image batch as float32 q - z_x."""
    n = r // x.shape[1]
    _to_float_rows(x[n, r - n * x.shape[1]], zx, xf[n, r - n * x.shape[1]], 0, x.shape[2])


def _conv2d_int8_exact(x, zx, wf, bias, multiplier, shift, zy, lo, hi, sh, sw, pt, pl, xf, yf, no_bias, cols, tile,
                       sgemm, y):
    # x: (N, H, W, C) int8 -> xf float32 (q - z_x), the float standard-convolution tile (blocks
    # of output pixels; no bias, no activation: zero padding is the real value 0, q = z_x, as the
    # reference has it), requantized.
    for r in prange(x.shape[0] * x.shape[1]):
        _image_row_to_float(x, zx, xf, r)
    pixels = y.shape[0] * y.shape[1] * y.shape[2]
    yf_rows, y_rows = yf.reshape(pixels, yf.shape[3]), y.reshape(pixels, y.shape[3])
    tiles, workers = (pixels + tile - 1) // tile, cols.shape[0]
    for worker in prange(workers):
        for t in range(worker, tiles, workers):
            conv_tile(xf, wf, no_bias, IDENTITY, sh, sw, pt, pl, 1, 1, cols[worker], tile, sgemm, yf, t)
            for p in range(t * tile, min(pixels, (t + 1) * tile)):
                _requantize_row(yf_rows[p], bias, multiplier, shift, zy, lo, hi, y_rows[p])


_pointwise_int8_exact_serial, _pointwise_int8_exact_parallel = serial_and_parallel(_pointwise_int8_exact)
_conv2d_int8_exact_serial, _conv2d_int8_exact_parallel = serial_and_parallel(_conv2d_int8_exact)
_NO_BIAS = np.zeros(0, np.float32)


def pointwise_int8_exact(x2d, zx, wf, k_chunk, bias, multiplier, shift, zy, lo, hi):
    """`pointwise_int8` on the float path: wf is the int8 weight as float32, k_chunk from `exact_chunk`."""
    rows, cout = x2d.shape[0], wf.shape[1]
    y = np.empty((rows, cout), np.int8)
    args = (x2d, np.int32(zx), wf, bias, multiplier, shift, np.int64(zy), np.int64(lo), np.int64(hi),
            int(k_chunk), 128, sgemm_address(), y)
    kernel = config.choose_kernel(_pointwise_int8_exact_serial, _pointwise_int8_exact_parallel, rows * wf.size)
    with single_threaded_blas():
        kernel(*args)
    return y


def conv2d_int8_exact(x, zx, wf, bias, multiplier, shift, zy, lo, hi, stride, padding, out_shape):
    """`conv2d_int8` on the float path (dilation 1; taps * 255 * max|w| < 2^24)."""
    y = np.empty(out_shape, np.int8)
    (sh, sw), (pt, _, pl, _) = stride, padding
    xf = np.empty(x.shape, np.float32)
    yf = np.empty(out_shape, np.float32)
    kh, kw, cin, _ = wf.shape
    tile = tile_pixels(y.size // out_shape[3], cin, kh, kw)
    kernel = config.choose_kernel(_conv2d_int8_exact_serial, _conv2d_int8_exact_parallel, y.size * wf[..., 0].size)
    workers = config.get_num_threads() if kernel is _conv2d_int8_exact_parallel else 1
    cols = np.empty(workspace_shape(workers, tile, kh, kw, cin), np.float32)
    with single_threaded_blas():
        kernel(x, np.int32(zx), np.ascontiguousarray(wf), bias, multiplier, shift, np.int64(zy), np.int64(lo),
               np.int64(hi), sh, sw, pt, pl, xf, yf, _NO_BIAS, cols, tile, sgemm_address(), y)
    return y


