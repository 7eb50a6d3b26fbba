"""Fused inference kernels: each computes one layer of a batch-norm-folded MobileNet in one pass.

Layout NHWC float32 throughout; a pointwise convolution sees its activation as a matrix of
`P = N*H*W` rows by `C` channels (a free reshape in NHWC, no transposes anywhere). Batch norm is
already folded into each weight and bias (see `fuse.fold_batch_norm`), so every layer is

    y = act(conv(x, w) + b)          [+ residual]        (activation: none, ReLU, ReLU6, hard-swish)

computed as the convolution of a tile followed, while the tile is still in cache, by its
*epilogue* (bias, activation, residual add): one pass over the output instead of three.

Kernels (each a private `_name` Numba kernel; the public `name` wrapper validates arguments and is
what the tests call; the fused model calls the kernels directly with its planned buffers):

- `pointwise_conv`: 1x1 convolution as a matrix product on row tiles, via OpenBLAS SGEMM called
  from inside the kernel (`blas.py`) or a Numba matrix product; epilogue bias + activation or bias
  + residual (the projection of an inverted residual, V2 paper Fig. 3b); optionally the input is
  first multiplied by squeeze-and-excitation's per-image channel gate, tile by tile, in place
  (SE's scale fused into the projection's read of its input).
- `depthwise_conv`: one KxK filter per channel (V1 paper, Eq. 3) with bias and activation, one
  output row per loop iteration, vectorised over the contiguous channel axis; optionally also the
  per-row channel sums of its output (SE's squeeze, so SE never re-reads the activation).
- `squeeze_excite_gate`: SE's two small fully connected layers on those sums:
  `gate = hardsigmoid(W2 relu(W1 mean + b1) + b2)` (V3 paper, section 5.3).
- `conv2d`: the stem's 3x3 convolution over the 3 colour channels, direct (27 taps unrolled,
  output channels vectorised), bias and activation.
- `global_avg_pool` and `linear` (bias + activation; column blocks in parallel: at batch 1 the
  classifier is a matrix-vector product bound by reading its weights).

Each kernel is a loop over its tiles (row tiles, output rows, images or column blocks, whose
writes are disjoint), and the tile itself is a function of its own (`_pointwise_tile`,
`_depthwise_tile`, ...), which the whole-network executor (`program.py`) calls directly. Every
kernel exists twice, compiled serial and parallel (`prange` over the tiles). The tiling depends
on shapes only, never on the thread count, so every output element is computed by the same
instructions whatever the number of threads: results are bitwise identical across thread counts.
"""
import math

import numpy as np
from numba import prange

from npmobilenet.config import njit_serial, serial_and_parallel
from npmobilenet.inference.blas import sgemm_call

# Activation codes the kernels take (an int, so one compiled kernel serves every activation).
IDENTITY, RELU, RELU6, HARDSWISH = 0, 1, 2, 3
ACTIVATIONS = {None: IDENTITY, "relu": RELU, "relu6": RELU6, "hardswish": HARDSWISH}

_F32 = np.float32
# Indices the compiler cannot prove non-negative are made unsigned (`_U`): Numba wraps negative
# indices around (x[-1] is the last element), a select per index that hides the addresses'
# pattern from the vectoriser. Measured: the stem 2.3x and a loop over columns m0..m1 10x slower
# with signed indices (loops from 0 need nothing: their index is known non-negative).
_U = np.uint64
_EMPTY_ROWS = np.zeros((0, 1), np.float32)       # "no residual" / "no gate"
_EMPTY_SUMS = np.zeros((0, 1, 1), np.float32)    # "no row sums"


# ---------------------------------------------------------------------------------------------
# tile helpers (serial; inlined by LLVM into the kernels)
# ---------------------------------------------------------------------------------------------
@njit_serial
def _matmul_numba(a, p0, p1, w, m0, m1, c):
    """c[p0:p1, m0:m1] = a[p0:p1] @ w[:, m0:m1]. Four rows at a time: each row of w loaded once
    feeds four rows of c (the vectorised loop runs over the contiguous column axis)."""
    k = a.shape[1]
    p = p0
    while p + 4 <= p1:
        c0, c1, c2, c3 = c[p], c[p + 1], c[p + 2], c[p + 3]
        for j in range(m0, m1):
            uj = _U(j)
            c0[uj] = 0
            c1[uj] = 0
            c2[uj] = 0
            c3[uj] = 0
        for q in range(k):
            a0, a1, a2, a3 = a[p, q], a[p + 1, q], a[p + 2, q], a[p + 3, q]
            wq = w[q]
            for j in range(m0, m1):
                uj = _U(j)
                wv = wq[uj]
                c0[uj] += a0 * wv
                c1[uj] += a1 * wv
                c2[uj] += a2 * wv
                c3[uj] += a3 * wv
        p += 4
    while p < p1:
        cp = c[p]
        for j in range(m0, m1):
            cp[_U(j)] = 0
        for q in range(k):
            ap = a[p, q]
            wq = w[q]
            for j in range(m0, m1):
                uj = _U(j)
                cp[uj] += ap * wq[uj]
        p += 1


@njit_serial
def _matmul(sgemm, a, p0, p1, w, m0, m1, c):
    """c[p0:p1, m0:m1] = a[p0:p1] @ w[:, m0:m1], by the OpenBLAS SGEMM at address `sgemm`, or by
    Numba when `sgemm` is 0. a: (P, K), w: (K, M), c: (P, M), all C-contiguous."""
    if p1 <= p0 or m1 <= m0:
        return
    if sgemm != 0:
        sgemm_call(sgemm, a[p0:p1], w[:, m0:m1], c[p0:p1, m0:m1])
    else:
        _matmul_numba(a, p0, p1, w, m0, m1, c)


@njit_serial
def _bias_act(y, p0, p1, m0, m1, bias, act):
    """y[p0:p1, m0:m1] = act(y + bias) in place. y: (P, C), bias: (C,). One loop per activation
    so that each vectorises without a branch inside."""
    zero, three, six, sixth = _F32(0), _F32(3), _F32(6), _F32(1 / 6)
    for p in range(p0, p1):
        row = y[p]
        if act == RELU:
            for c in range(m0, m1):
                uc = _U(c)
                row[uc] = max(row[uc] + bias[uc], zero)
        elif act == RELU6:
            for c in range(m0, m1):
                uc = _U(c)
                row[uc] = min(max(row[uc] + bias[uc], zero), six)
        elif act == HARDSWISH:
            for c in range(m0, m1):
                uc = _U(c)
                v = row[uc] + bias[uc]
                row[uc] = v * min(max(v + three, zero), six) * sixth    # x relu6(x + 3) / 6 (V3, Eq. 2)
        else:
            for c in range(m0, m1):
                uc = _U(c)
                row[uc] += bias[uc]


@njit_serial
def _bias_residual(y, p0, p1, m0, m1, bias, residual):
    """y[p0:p1, m0:m1] += bias + residual in place: the linear bottleneck's projection joined to
    the shortcut (V2 paper, Fig. 3b; no activation after the add)."""
    for p in range(p0, p1):
        row, res = y[p], residual[p]
        for c in range(m0, m1):
            uc = _U(c)
            row[uc] = row[uc] + bias[uc] + res[uc]


@njit_serial
def _scale_by_gate(x, p0, p1, gate, rows_per_image):
    """x[p] *= gate[image of p] for rows p0..p1-1 of x: (P, C); gate: (N, C)."""
    channels = x.shape[1]
    for p in range(p0, p1):
        row, g = x[p], gate[p // rows_per_image]
        for c in range(channels):
            row[c] *= g[c]


# ---------------------------------------------------------------------------------------------
# kernels (bodies written once, compiled serial and parallel below)
# ---------------------------------------------------------------------------------------------
@njit_serial
def _gate_rows_tile(x, gate, rows_per_image, tile_rows, t):
    """Tile t of the gate pre-pass: rows t*tile_rows.. of x scaled by their image's SE gate."""
    _scale_by_gate(x, t * tile_rows, min(x.shape[0], (t + 1) * tile_rows), gate, rows_per_image)


@njit_serial
def _pointwise_tile(x, w, bias, act, residual, gate, rows_per_image, tile_rows, tile_cols, sgemm, y, t):
    """Tile t (row-major over row tiles x column tiles) of a pointwise convolution: multiplied,
    then finished (bias, activation or residual) while in cache. With one column tile, the tile
    first scales its own input rows by the SE gate (no other tile reads them)."""
    rows, cols = x.shape[0], w.shape[1]
    col_tiles = (cols + tile_cols - 1) // tile_cols
    i = t // col_tiles
    p0, m0 = i * tile_rows, (t - i * col_tiles) * tile_cols
    p1, m1 = min(rows, p0 + tile_rows), min(cols, m0 + tile_cols)
    if gate.shape[0] > 0 and col_tiles == 1:
        _scale_by_gate(x, p0, p1, gate, rows_per_image)
    _matmul(sgemm, x, p0, p1, w, m0, m1, y)
    if residual.shape[0] > 0:
        _bias_residual(y, p0, p1, m0, m1, bias, residual)
    else:
        _bias_act(y, p0, p1, m0, m1, bias, act)


def _pointwise_conv(x, w, bias, act, residual, gate, rows_per_image, tile_rows, tile_cols, sgemm, y):
    # x: (P, K), w: (K, M), bias: (M,) -> y: (P, M), P = N*H*W rows of NHWC activations.
    # residual: (P, M) or (0, 1); gate: (N, K) or (0, 1), applied to x in place (x is dead after).
    # Tiles of tile_rows x tile_cols outputs: each is multiplied, then finished while in cache.
    rows, cols = x.shape[0], w.shape[1]
    row_tiles = (rows + tile_rows - 1) // tile_rows
    col_tiles = (cols + tile_cols - 1) // tile_cols
    if gate.shape[0] > 0 and col_tiles > 1:
        # several tiles read each input row: gate all rows first (rows split across threads)
        for t in prange(row_tiles):
            _gate_rows_tile(x, gate, rows_per_image, tile_rows, t)
    for t in prange(row_tiles * col_tiles):
        _pointwise_tile(x, w, bias, act, residual, gate, rows_per_image, tile_rows, tile_cols, sgemm, y, t)


# The 3x3 and 5x5 depthwise rows are written out tap by tap, so that the channel loop is the
# innermost loop, vectorises over the contiguous channel axis and keeps each pixel's running sum
# in a register (a loop over taps around it would store the sum to memory at every tap). Indexing
# the whole arrays (not views per tap) lets the compiler check aliasing once per array. One call
# per output row: a call per pixel would cost more than a 32-channel pixel's arithmetic.
@njit_serial
def _depthwise_3x3_row(x, w, bias, y, n, oh, ih, stride_w, pad_left, ow_lo, ow_hi):
    """y[n, oh, :] = bias + 3x3 taps from input rows ih..ih+2. Columns ow_lo..ow_hi-1 of a row
    whose taps are all inside x index directly; elsewhere indices are clamped into x and the
    taps in the zero padding are multiplied by 0."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    un, uoh = _U(n), _U(oh)
    inside_rows = ih >= 0 and ih + 3 <= height
    # kernel rows clamped into x, and 1 where inside / 0 in the padding
    i0, i1, i2 = _U(min(max(ih, 0), height - 1)), _U(min(max(ih + 1, 0), height - 1)), _U(min(max(ih + 2, 0), height - 1))
    m0, m1, m2 = _F32(0 <= ih < height), _F32(0 <= ih + 1 < height), _F32(0 <= ih + 2 < height)
    for ow in range(y.shape[2]):
        uow = _U(ow)
        iw = ow * stride_w - pad_left
        if inside_rows and ow_lo <= ow < ow_hi:
            j0, j1, j2 = _U(iw), _U(iw + 1), _U(iw + 2)
            for c in range(channels):
                y[un, uoh, uow, c] = (
                    bias[c]
                    + x[un, i0, j0, c] * w[0, 0, c] + x[un, i0, j1, c] * w[0, 1, c] + x[un, i0, j2, c] * w[0, 2, c]
                    + x[un, i1, j0, c] * w[1, 0, c] + x[un, i1, j1, c] * w[1, 1, c] + x[un, i1, j2, c] * w[1, 2, c]
                    + x[un, i2, j0, c] * w[2, 0, c] + x[un, i2, j1, c] * w[2, 1, c] + x[un, i2, j2, c] * w[2, 2, c])
        else:
            j0, j1, j2 = _U(min(max(iw, 0), width - 1)), _U(min(max(iw + 1, 0), width - 1)), _U(min(max(iw + 2, 0), width - 1))
            k0, k1, k2 = _F32(0 <= iw < width), _F32(0 <= iw + 1 < width), _F32(0 <= iw + 2 < width)
            for c in range(channels):
                y[un, uoh, uow, c] = (
                    bias[c]
                    + m0 * (k0 * x[un, i0, j0, c] * w[0, 0, c] + k1 * x[un, i0, j1, c] * w[0, 1, c]
                            + k2 * x[un, i0, j2, c] * w[0, 2, c])
                    + m1 * (k0 * x[un, i1, j0, c] * w[1, 0, c] + k1 * x[un, i1, j1, c] * w[1, 1, c]
                            + k2 * x[un, i1, j2, c] * w[1, 2, c])
                    + m2 * (k0 * x[un, i2, j0, c] * w[2, 0, c] + k1 * x[un, i2, j1, c] * w[2, 1, c]
                            + k2 * x[un, i2, j2, c] * w[2, 2, c]))


@njit_serial
def _depthwise_5x5_row(x, w, bias, y, n, oh, ih, stride_w, pad_left, ow_lo, ow_hi):
    """As `_depthwise_3x3_row` for 5x5 kernels, one pass per kernel row (five taps at a time)."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    un, uoh = _U(n), _U(oh)
    out_w = y.shape[2]
    for ow in range(out_w):
        for c in range(channels):
            y[un, uoh, _U(ow), c] = bias[c]
    for i in range(5):
        if ih + i < 0 or ih + i >= height:
            continue                         # a row of zero padding
        row = _U(ih + i)
        for ow in range(out_w):
            uow = _U(ow)
            iw = ow * stride_w - pad_left
            if ow_lo <= ow < ow_hi:
                j0, j1, j2, j3, j4 = _U(iw), _U(iw + 1), _U(iw + 2), _U(iw + 3), _U(iw + 4)
                for c in range(channels):
                    y[un, uoh, uow, c] += (
                        x[un, row, j0, c] * w[i, 0, c] + x[un, row, j1, c] * w[i, 1, c]
                        + x[un, row, j2, c] * w[i, 2, c] + x[un, row, j3, c] * w[i, 3, c]
                        + x[un, row, j4, c] * w[i, 4, c])
            else:
                j0, j1, j2 = _U(min(max(iw, 0), width - 1)), _U(min(max(iw + 1, 0), width - 1)), _U(min(max(iw + 2, 0), width - 1))
                j3, j4 = _U(min(max(iw + 3, 0), width - 1)), _U(min(max(iw + 4, 0), width - 1))
                k0, k1, k2 = _F32(0 <= iw < width), _F32(0 <= iw + 1 < width), _F32(0 <= iw + 2 < width)
                k3, k4 = _F32(0 <= iw + 3 < width), _F32(0 <= iw + 4 < width)
                for c in range(channels):
                    y[un, uoh, uow, c] += (
                        k0 * x[un, row, j0, c] * w[i, 0, c] + k1 * x[un, row, j1, c] * w[i, 1, c]
                        + k2 * x[un, row, j2, c] * w[i, 2, c] + k3 * x[un, row, j3, c] * w[i, 3, c]
                        + k4 * x[un, row, j4, c] * w[i, 4, c])


@njit_serial
def _depthwise_row(x, w, bias, y, n, oh, ih, stride_w, pad_left):
    """Any kernel size: y[n, oh, :] = bias + the taps inside x, one tap at a time."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = w.shape[0], w.shape[1]
    yrow = y[n, oh]
    for ow in range(y.shape[2]):
        for c in range(channels):
            yrow[ow, c] = bias[c]
    for i in range(kh):
        row = ih + i
        if row < 0 or row >= height:
            continue
        for ow in range(y.shape[2]):
            for j in range(kw):
                iw = ow * stride_w - pad_left + j
                if 0 <= iw < width:
                    for c in range(channels):
                        yrow[ow, c] += x[n, row, iw, c] * w[i, j, c]


@njit_serial
def _activate(y, act):
    """y = act(y) in place, y: (rows, C)."""
    rows, channels = y.shape
    zero, three, six, sixth = _F32(0), _F32(3), _F32(6), _F32(1 / 6)
    if act == RELU:
        for p in range(rows):
            for c in range(channels):
                y[p, c] = max(y[p, c], zero)
    elif act == RELU6:
        for p in range(rows):
            for c in range(channels):
                y[p, c] = min(max(y[p, c], zero), six)
    elif act == HARDSWISH:
        for p in range(rows):
            for c in range(channels):
                v = y[p, c]
                y[p, c] = v * min(max(v + three, zero), six) * sixth


@njit_serial
def _depthwise_tile(x, w, bias, act, stride_h, stride_w, pad_top, pad_left, y, row_sums, r):
    """Output row r (= n * Ho + oh) of a depthwise convolution, its activation, and its sum over
    columns into row_sums[n, oh] when row_sums is not empty."""
    width, channels = x.shape[2], x.shape[3]
    kh, kw = w.shape[0], w.shape[1]
    out_h, out_w = y.shape[1], y.shape[2]
    # output columns whose every tap lands inside the row: 0 <= ow*sw - pad_left and ow*sw - pad_left + kw <= W
    ow_lo = min(out_w, (pad_left + stride_w - 1) // stride_w)
    ow_hi = max(ow_lo, min(out_w, (width - kw + pad_left) // stride_w + 1))
    n = r // out_h
    oh = r - n * out_h
    ih0 = oh * stride_h - pad_top
    if kh == 3 and kw == 3:
        _depthwise_3x3_row(x, w, bias, y, n, oh, ih0, stride_w, pad_left, ow_lo, ow_hi)
    elif kh == 5 and kw == 5:
        _depthwise_5x5_row(x, w, bias, y, n, oh, ih0, stride_w, pad_left, ow_lo, ow_hi)
    else:
        _depthwise_row(x, w, bias, y, n, oh, ih0, stride_w, pad_left)
    yrow = y[n, oh]
    _activate(yrow, act)
    if row_sums.shape[0] > 0:
        sums = row_sums[n, oh]
        for c in range(channels):
            sums[c] = 0
        for ow in range(out_w):
            for c in range(channels):
                sums[c] += yrow[ow, c]


def _depthwise_conv(x, w, bias, act, stride_h, stride_w, pad_top, pad_left, y, row_sums):
    # x: (N, H, W, C), w: (KH, KW, C), bias: (C,) -> y: (N, Ho, Wo, C).
    # row_sums: (N, Ho, C) (sum over ow of y, SE's squeeze) or (0, 1, 1). One output row per tile.
    for r in prange(y.shape[0] * y.shape[1]):
        _depthwise_tile(x, w, bias, act, stride_h, stride_w, pad_top, pad_left, y, row_sums, r)


@njit_serial
def _squeeze_excite_tile(row_sums, count, w_reduce, b_reduce, w_expand, b_expand, hidden, gate, n):
    """Image n's SE gate: gate[n] = hardsigmoid(W2 relu(W1 mean + b1) + b2)."""
    out_h, channels = row_sums.shape[1], row_sums.shape[2]
    squeeze = w_reduce.shape[1]
    zero, three, six, sixth = _F32(0), _F32(3), _F32(6), _F32(1 / 6)
    inv_count = _F32(1.0 / count)
    mean = gate[n]                       # gate[n] holds the mean until it is overwritten
    for c in range(channels):
        mean[c] = 0
    for oh in range(out_h):
        for c in range(channels):
            mean[c] += row_sums[n, oh, c]
    for c in range(channels):
        mean[c] *= inv_count
    h = hidden[n]
    for s in range(squeeze):
        h[s] = b_reduce[s]
    for c in range(channels):
        m = mean[c]
        for s in range(squeeze):
            h[s] += m * w_reduce[c, s]
    for s in range(squeeze):
        h[s] = max(h[s], zero)
    g = gate[n]
    for c in range(channels):
        g[c] = b_expand[c]
    for s in range(squeeze):
        hs = h[s]
        for c in range(channels):
            g[c] += hs * w_expand[s, c]
    for c in range(channels):
        g[c] = min(max(g[c] + three, zero), six) * sixth    # hard-sigmoid (V3, sec. 5.2)


def _squeeze_excite_gate(row_sums, count, w_reduce, b_reduce, w_expand, b_expand, hidden, gate):
    # row_sums: (N, Ho, C) -> gate: (N, C) = hardsigmoid(W2 relu(W1 mean + b1) + b2)
    # w_reduce: (C, S), w_expand: (S, C); hidden: (N, S) workspace. count = Ho * Wo.
    for n in prange(row_sums.shape[0]):
        _squeeze_excite_tile(row_sums, count, w_reduce, b_reduce, w_expand, b_expand, hidden, gate, n)


@njit_serial
def _conv3x3_rgb_row(x, w, bias, y, n, oh, ih, stride_w, pad_left, ow_lo, ow_hi):
    """y[n, oh, ow] = bias + the 27 taps of a 3x3 kernel over 3 input channels (every MobileNet
    stem), for columns ow_lo..ow_hi-1 whose taps are all inside x. The tap loops have constant
    trip counts: the compiler unrolls them, leaving the output-channel loop innermost, vectorised,
    its sum in a register (im2col and a K=27 matrix product ran 2-3x slower here). Unsigned
    indices: see `_U`."""
    un, uoh, uih = _U(n), _U(oh), _U(ih)
    for ow in range(ow_lo, ow_hi):
        uow, uiw = _U(ow), _U(ow * stride_w - pad_left)
        for co in range(y.shape[3]):
            s = bias[co]
            for i in range(3):
                for j in range(3):
                    for ci in range(3):
                        s += x[un, uih + _U(i), uiw + _U(j), _U(ci)] * w[i, j, ci, co]
            y[un, uoh, uow, co] = s


@njit_serial
def _conv_pixel(x, w, bias, y, n, oh, ow, ih0, iw0):
    """y[n, oh, ow] = bias + the taps of any kernel that land inside x (the general path)."""
    height, width, in_channels = x.shape[1], x.shape[2], x.shape[3]
    yv = y[n, oh, ow]
    for co in range(yv.shape[0]):
        yv[co] = bias[co]
    for i in range(w.shape[0]):
        ih = ih0 + i
        if ih < 0 or ih >= height:
            continue
        for j in range(w.shape[1]):
            iw = iw0 + j
            if iw < 0 or iw >= width:
                continue
            for ci in range(in_channels):
                a, wr = x[n, ih, iw, ci], w[i, j, ci]
                for co in range(yv.shape[0]):
                    yv[co] += a * wr[co]


@njit_serial
def _conv2d_tile(x, w, bias, act, stride_h, stride_w, pad_top, pad_left, y, r):
    """Output row r (= n * Ho + oh) of a standard convolution with its bias and activation."""
    height, width, in_channels = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = w.shape[0], w.shape[1]
    out_h, out_w = y.shape[1], y.shape[2]
    rgb3x3 = kh == 3 and kw == 3 and in_channels == 3
    ow_lo = min(out_w, (pad_left + stride_w - 1) // stride_w)
    ow_hi = max(ow_lo, min(out_w, (width - kw + pad_left) // stride_w + 1))
    n = r // out_h
    oh = r - n * out_h
    ih0 = oh * stride_h - pad_top
    lo, hi = 0, 0                        # columns done by the fast path
    if rgb3x3 and ih0 >= 0 and ih0 + 3 <= height:
        lo, hi = ow_lo, ow_hi
        _conv3x3_rgb_row(x, w, bias, y, n, oh, ih0, stride_w, pad_left, lo, hi)
    for ow in range(out_w):
        if ow < lo or ow >= hi:
            _conv_pixel(x, w, bias, y, n, oh, ow, ih0, ow * stride_w - pad_left)
    _activate(y[n, oh], act)


def _conv2d(x, w, bias, act, stride_h, stride_w, pad_top, pad_left, y):
    # x: (N, H, W, Cin), w: (KH, KW, Cin, Cout), bias: (Cout,) -> y: (N, Ho, Wo, Cout). A row per tile.
    for r in prange(y.shape[0] * y.shape[1]):
        _conv2d_tile(x, w, bias, act, stride_h, stride_w, pad_top, pad_left, y, r)


@njit_serial
def _global_avg_pool_tile(x, y, n):
    """y[n] = the mean of image n's positions. x: (N, H*W, C), y: (N, C)."""
    positions, channels = x.shape[1], x.shape[2]
    inv = _F32(1.0 / positions)
    for c in range(channels):
        y[n, c] = 0
    for p in range(positions):
        for c in range(channels):
            y[n, c] += x[n, p, c]
    for c in range(channels):
        y[n, c] *= inv


def _global_avg_pool(x, y):
    # x: (N, H*W, C) -> y: (N, C)
    for n in prange(x.shape[0]):
        _global_avg_pool_tile(x, y, n)


@njit_serial
def _linear_tile(x, w, bias, act, block_cols, sgemm, y, b):
    """Columns b*block_cols.. of y = act(x @ w + bias)."""
    m0 = b * block_cols
    m1 = min(w.shape[1], m0 + block_cols)
    _matmul(sgemm, x, 0, x.shape[0], w, m0, m1, y)
    _bias_act(y, 0, x.shape[0], m0, m1, bias, act)


def _linear(x, w, bias, act, block_cols, sgemm, y):
    # x: (N, Cin), w: (Cin, Cout), bias: (Cout,) -> y: (N, Cout) = act(x @ w + bias).
    # Column blocks in parallel: at batch 1 this reads all of w for N*Cin*Cout MACs.
    for b in prange((w.shape[1] + block_cols - 1) // block_cols):
        _linear_tile(x, w, bias, act, block_cols, sgemm, y, b)


# (serial, parallel) builds of each body (config.serial_and_parallel gives the parallel build its
# own cache file); module attributes so that tests/test_config.py checks their options.
_pointwise_conv_serial, _pointwise_conv_parallel = serial_and_parallel(_pointwise_conv)
_depthwise_conv_serial, _depthwise_conv_parallel = serial_and_parallel(_depthwise_conv)
_squeeze_excite_gate_serial, _squeeze_excite_gate_parallel = serial_and_parallel(_squeeze_excite_gate)
_conv2d_serial, _conv2d_parallel = serial_and_parallel(_conv2d)
_global_avg_pool_serial, _global_avg_pool_parallel = serial_and_parallel(_global_avg_pool)
_linear_serial, _linear_parallel = serial_and_parallel(_linear)

POINTWISE = (_pointwise_conv_serial, _pointwise_conv_parallel)
DEPTHWISE = (_depthwise_conv_serial, _depthwise_conv_parallel)
SE_GATE = (_squeeze_excite_gate_serial, _squeeze_excite_gate_parallel)
CONV2D = (_conv2d_serial, _conv2d_parallel)
GLOBAL_POOL = (_global_avg_pool_serial, _global_avg_pool_parallel)
LINEAR = (_linear_serial, _linear_parallel)
ALL_KERNELS = (POINTWISE, DEPTHWISE, SE_GATE, CONV2D, GLOBAL_POOL, LINEAR)


# ---------------------------------------------------------------------------------------------
# tiling rules (shapes only, never the thread count: see the module docstring)
# ---------------------------------------------------------------------------------------------
def pointwise_tiles(rows, in_channels, out_channels):
    """(rows, columns) per output tile of a pointwise convolution of `rows` = N*H*W rows.

    Measured on this machine (benchmarks/inference.py --tiles): SGEMM keeps its speed on tiles
    of 64-128 rows and loses a quarter of it at 13-25 rows; so large layers are cut into
    128-row tiles (their input and output rows stay in L2 for the epilogue), and small ones
    (the 14x14 and 7x7 stages at batch 1: 49-196 rows) into two tiles: two column halves when
    there are at least 128 output channels, else two row halves, so both cores have work.
    """
    if rows >= 512:
        return 128, out_channels
    if out_channels >= 128:
        return rows, math.ceil(out_channels / 2 / 16) * 16
    return max(1, math.ceil(rows / 2)), out_channels


def linear_block_cols(out_features):
    """Columns per block of the classifier: about 4 blocks, multiples of 16 (SGEMM's panel width)."""
    return max(16, min(out_features, math.ceil(out_features / 4 / 16) * 16))


# ---------------------------------------------------------------------------------------------
# public wrappers: validate, then call a kernel (what the tests call)
# ---------------------------------------------------------------------------------------------
def _f32(name, a, ndim, layout):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array {layout}, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have rank {ndim} {layout}, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _activation_code(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(k for k in ACTIVATIONS if k)} or None, got {activation!r}")
    return ACTIVATIONS[activation]


def _sgemm(use_blas):
    from npmobilenet.inference.blas import sgemm_address

    return sgemm_address() if use_blas else 0


def _run(pair, parallel, *args):
    from npmobilenet.inference.blas import single_threaded_blas

    with single_threaded_blas():
        return (pair[1] if parallel else pair[0])(*args)


def pointwise_conv(x, w, bias, activation=None, residual=None, gate=None, parallel=True, use_blas=True):
    """act(x' @ w + bias) [+ residual] over NHWC activations, x' = x * gate (per image, channel).

    x: (N, H, W, K), w: (K, M), bias: (M,), residual: (N, H, W, M) or None,
    gate: (N, K) or None -> y: (N, H, W, M). A residual comes with no activation (the linear
    bottleneck). x is not modified (the fused model lets the kernel scale its input in place).
    """
    x = _f32("x", x, 4, "(N, H, W, K)").copy()
    w = _f32("w", w, 2, "(K, M)")
    bias = _f32("bias", bias, 1, "(M,)")
    n, h, wd, k = x.shape
    if w.shape[0] != k or bias.shape != (w.shape[1],):
        raise ValueError(f"w must be ({k}, M) and bias (M,), got w {w.shape}, bias {bias.shape}")
    act = _activation_code(activation)
    m = w.shape[1]
    rows = n * h * wd
    res = _EMPTY_ROWS
    if residual is not None:
        if act != IDENTITY:
            raise ValueError("a residual add is fused only into a linear (activation=None) projection")
        res = _f32("residual", residual, 4, "(N, H, W, M)")
        if res.shape != (n, h, wd, m):
            raise ValueError(f"residual must have shape {(n, h, wd, m)}, got {res.shape}")
        res = res.reshape(rows, m)
    g = _EMPTY_ROWS
    if gate is not None:
        g = _f32("gate", gate, 2, "(N, K)")
        if g.shape != (n, k):
            raise ValueError(f"gate must have shape {(n, k)}, got {g.shape}")
    y = np.empty((rows, m), np.float32)
    tile_rows, tile_cols = pointwise_tiles(rows, k, m)
    _run(POINTWISE, parallel, x.reshape(rows, k), w, bias, act, res, g, h * wd,
         tile_rows, tile_cols, _sgemm(use_blas), y)
    return y.reshape(n, h, wd, m)


def depthwise_output_size(size, kernel, stride, pad_before, pad_after):
    return (size + pad_before + pad_after - kernel) // stride + 1


def depthwise_conv(x, w, bias, activation=None, stride=1, padding=0, with_row_sums=False, parallel=True):
    """act(depthwise(x, w) + bias). x: (N, H, W, C), w: (KH, KW, C), bias: (C,) -> y: (N, Ho, Wo, C).

    stride: int or (sh, sw); padding: int or (top, bottom, left, right). With `with_row_sums`,
    also returns the sums over each output row, (N, Ho, C).
    """
    x = _f32("x", x, 4, "(N, H, W, C)")
    w = _f32("w", w, 3, "(KH, KW, C)")
    bias = _f32("bias", bias, 1, "(C,)")
    if w.shape[2] != x.shape[3] or bias.shape != (x.shape[3],):
        raise ValueError(f"w must be (KH, KW, {x.shape[3]}) and bias ({x.shape[3]},), got {w.shape}, {bias.shape}")
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    pt, pb, pl, pr = (padding,) * 4 if np.isscalar(padding) else padding
    n, h, wd, c = x.shape
    ho = depthwise_output_size(h, w.shape[0], sh, pt, pb)
    wo = depthwise_output_size(wd, w.shape[1], sw, pl, pr)
    if ho < 1 or wo < 1:
        raise ValueError(f"no output: input {h}x{wd}, kernel {w.shape[:2]}, padding {(pt, pb, pl, pr)}")
    y = np.empty((n, ho, wo, c), np.float32)
    sums = np.empty((n, ho, c), np.float32) if with_row_sums else _EMPTY_SUMS
    _run(DEPTHWISE, parallel, x, w, bias, _activation_code(activation), sh, sw, pt, pl, y, sums)
    return (y, sums) if with_row_sums else y


def squeeze_excite_gate(row_sums, count, w_reduce, b_reduce, w_expand, b_expand, parallel=False):
    """SE's gate from the per-row sums of its input. row_sums: (N, Ho, C), count = Ho*Wo,
    w_reduce: (C, S), b_reduce: (S,), w_expand: (S, C), b_expand: (C,) -> gate (N, C)."""
    row_sums = _f32("row_sums", row_sums, 3, "(N, Ho, C)")
    w_reduce, w_expand = _f32("w_reduce", w_reduce, 2, "(C, S)"), _f32("w_expand", w_expand, 2, "(S, C)")
    b_reduce, b_expand = _f32("b_reduce", b_reduce, 1, "(S,)"), _f32("b_expand", b_expand, 1, "(C,)")
    n, _, c = row_sums.shape
    s = w_reduce.shape[1]
    if w_reduce.shape[0] != c or w_expand.shape != (s, c) or b_reduce.shape != (s,) or b_expand.shape != (c,):
        raise ValueError("squeeze_excite_gate: weights do not match row_sums' channels")
    gate = np.empty((n, c), np.float32)
    hidden = np.empty((n, s), np.float32)
    _run(SE_GATE, parallel, row_sums, int(count), w_reduce, b_reduce, w_expand, b_expand, hidden, gate)
    return gate


def conv2d(x, w, bias, activation=None, stride=1, padding=0, parallel=True):
    """act(conv(x, w) + bias). x: (N, H, W, Cin), w: (KH, KW, Cin, Cout) -> y: (N, Ho, Wo, Cout)."""
    x = _f32("x", x, 4, "(N, H, W, Cin)")
    w = _f32("w", w, 4, "(KH, KW, Cin, Cout)")
    bias = _f32("bias", bias, 1, "(Cout,)")
    kh, kw, cin, cout = w.shape
    if cin != x.shape[3] or bias.shape != (cout,):
        raise ValueError(f"w must be (KH, KW, {x.shape[3]}, Cout) and bias (Cout,), got {w.shape}, {bias.shape}")
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    pt, pb, pl, pr = (padding,) * 4 if np.isscalar(padding) else padding
    n, h, wd, _ = x.shape
    ho, wo = depthwise_output_size(h, kh, sh, pt, pb), depthwise_output_size(wd, kw, sw, pl, pr)
    if ho < 1 or wo < 1:
        raise ValueError(f"no output: input {h}x{wd}, kernel {(kh, kw)}, padding {(pt, pb, pl, pr)}")
    y = np.empty((n, ho, wo, cout), np.float32)
    _run(CONV2D, parallel, x, w, bias, _activation_code(activation), sh, sw, pt, pl, y)
    return y


def global_avg_pool(x, parallel=False):
    """Mean over H and W. x: (N, H, W, C) -> (N, C)."""
    x = _f32("x", x, 4, "(N, H, W, C)")
    n, h, w, c = x.shape
    y = np.empty((n, c), np.float32)
    _run(GLOBAL_POOL, parallel, x.reshape(n, h * w, c), y)
    return y


def linear(x, w, bias, activation=None, parallel=True, use_blas=True):
    """act(x @ w + bias). x: (N, Cin), w: (Cin, Cout), bias: (Cout,) -> (N, Cout)."""
    x = _f32("x", x, 2, "(N, Cin)")
    w = _f32("w", w, 2, "(Cin, Cout)")
    bias = _f32("bias", bias, 1, "(Cout,)")
    if w.shape[0] != x.shape[1] or bias.shape != (w.shape[1],):
        raise ValueError(f"w must be ({x.shape[1]}, Cout) and bias (Cout,), got {w.shape}, {bias.shape}")
    y = np.empty((x.shape[0], w.shape[1]), np.float32)
    _run(LINEAR, parallel, x, w, bias, _activation_code(activation), linear_block_cols(w.shape[1]), _sgemm(use_blas), y)
    return y
