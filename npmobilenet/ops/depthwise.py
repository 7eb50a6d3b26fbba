"""Depthwise convolution: every channel filtered by its own KH x KW kernel.

MobileNet V1 paper (Howard et al., 2017), Sec. 3.1, Eq. (3):

    y[n, oh, ow, c] = sum_{i, j} x[n, oh*sh - pt + i*rh, ow*sw - pl + j*rw, c] * w[i, j, c]

x `(N, H, W, C)`, w `(KH, KW, C)` -> y `(N, Ho, Wo, C)`; taps that fall in the padding read zero.
Cost: N * Ho * Wo * C * KH * KW multiply-accumulates (V1 Eq. (3) with D_K = KH = KW).

Everything here is Numba; there is no matrix product in a depthwise convolution, so no BLAS.

One forward tile, `depthwise_tile`: two output rows of one image (a step; computed together
where they share input rows: 3x3, vertical stride and dilation 1), with an epilogue (bias,
activation, and each row's sum over its columns, squeeze-and-excitation's squeeze). Training's
forward (`depthwise_conv2d`, float32 and float64, any dilation), the stride-1 input gradient
(negative padding), fused inference without AVX-512 (with it, `depthwise_avx512`'s register
tiles; here only dilated 3x3 kernels) and the exact int8 path all run it. How it is fast (the row
loops are in `depthwise_rows.py`): in NHWC a pixel's channels are contiguous, so every inner loop
runs over channels and LLVM vectorises it; at horizontal stride 1 and fewer than 64 channels a
run of P output pixels is one contiguous run of P*C numbers, looped against the weight repeated P
times (`tiled_weight`), so loops stay long where C is 16 or 32; otherwise pixels are indexed
directly, one at a time; a 3x3 kernel sums its nine taps in one pass, over two output rows at once
when they share two input rows (12 x-loads and 9 w-loads for two outputs instead of 36: loads, not
multiplies, bound these loops); pixels whose taps reach the padding are computed with clamped
indices and zero weights; two rows per tile halve the per-tile work of the op table (V3-Small's
5x5 layers at 14x14 and 7x7 ran 1.5x faster than with one row per tile).

Measured before the two forward kernels became this one (benchmarks/techniques.py depthwise,
the kernels alone, every depthwise layer of V2, V3-Large and V4-Small at 224x224, one thread):
training's kernel (runs, row pairs) took 4.0 ms at batch 1 and 165 ms at batch 32, fused
inference's (one output row per tile, a loop over channels per pixel, clamped borders) 4.9 and
175 ms. Training's won by up to 2.2x on 3x3 stride-1 layers of few channels (112x112x16: 0.135
against 0.299 ms); inference's direct indexing won by 5-45% at stride 2 and from 64 channels on,
and its clamped borders on small images: the tile uses each where it won.

Backward (hand-written):
  * dx: at stride 1, dx is the same correlation run over dy with the kernel turned by 180 degrees
    and padding (KH-1)*rh - pt (a gather; rh, rw: the dilation), so the forward tile computes it.
    At larger strides each input row gathers the output rows it fed, and adds their taps into its
    own columns.
  * dw[i, j, c] = sum over batch and output pixels of dy * x at tap (i, j): accumulated per chunk
    of output rows into that chunk's own buffer (one chunk per thread), the buffers summed after.
Parallelism: `prange` over the forward tiles, batch x input rows (dx at stride > 1) and row chunks
(dw); no iteration writes where another does.
"""
import numpy as np
from numba import prange

from npmobilenet.config import choose_kernel, get_num_threads, njit_inline, njit_serial, serial_and_parallel
from npmobilenet.ops.depthwise_rows import (
    _bias_act_pixels,
    _border_columns_forward,
    _interior_columns,
    _interior_forward,
    _interior_forward_3x3,
    _interior_forward_3x3_pair,
    _masked_pixels,
    _pixels_3x3,
    _pixels_3x3_pair,
)
from npmobilenet.ops.epilogue import IDENTITY, sum_rows
from npmobilenet.ops.geometry import (
    check_array,
    check_dy,
    check_same_dtype,
    conv_geometry,
)

# Channels x pixels per inner loop: long enough to amortise each tile's set-up (slices, LLVM's
# run-time overlap checks), short enough to stay in cache. 512 to 768 measured best (AVX-512).
TILE_ELEMENTS = 512


# Runs of several pixels for fewer channels than this; one pixel at a time (indexed directly) from
# it on. Measured on V2/V3/V4 layers at 224 (one thread): runs took 1.2-1.6x the time of pixels
# at 56x56x144, 28x28x192 (3x3) and 14x14x120 (5x5), pixels 1.3-1.5x that of runs at C = 16-32.
RUN_MAX_CHANNELS = 64


def tile_pixels(channels, stride_w):
    """Output pixels per run: only at horizontal stride 1 are neighbours contiguous in x, and only
    few channels need the longer loops."""
    return max(1, TILE_ELEMENTS // channels) if stride_w == 1 and channels < RUN_MAX_CHANNELS else 1


def tiled_weight(w, pixels):
    """w `(KH, KW, C)` repeated `pixels` times along the channels: `(KH*KW, pixels*C)`, the
    weight the forward tile reads (row i*KW + j is tap (i, j); its first C entries are w[i, j])."""
    kernel_h, kernel_w, channels = w.shape
    return np.ascontiguousarray(np.tile(w.reshape(kernel_h * kernel_w, channels), (1, pixels)))


@njit_serial
def steps_per_image(out_height, kernel_h, kernel_w, stride_h, dilation_h):
    """(steps, rows per step): the forward tile computes one step of two output rows (computed
    together where they share input rows: 3x3, vertical stride and dilation 1). Shapes only."""
    return (out_height + 1) // 2, 2


@njit_inline
def step_rows(t, steps, rows_per_step, out_height):
    """(image, first output row, one past its last) of step t, with `steps` steps of
    `rows_per_step` rows per image (`steps_per_image`)."""
    n = t // steps
    first = (t - n * steps) * rows_per_step
    return n, first, min(first + rows_per_step, out_height)


@njit_inline
def step_row_sums(y, row_sums, n, first, last):
    """Each output row first..last-1 of image n summed over its columns into row_sums[n, oh]
    (squeeze-and-excitation's squeeze), when row_sums is not empty."""
    if row_sums.shape[0] > 0:
        for oh in range(first, last):
            sum_rows(y[n, oh], row_sums[n, oh])


# -- the forward tile: x (N, H, W, C), w (KH, KW, C) -> y (N, Ho, Wo, C), one step of rows ------------
@njit_serial
def depthwise_tile(x, w_tiled, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                   dilation_h, dilation_w, y, t):
    """Step t (`steps_per_image`: two output rows of one image) of y = act(depthwise(x, w) + bias),
    and each row's sum over its columns into row_sums[n, oh] when row_sums is not empty: what
    `depthwise_steps` computes for steps t..t."""
    depthwise_steps(x, w_tiled, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                    dilation_h, dilation_w, y, t, t + 1)


@njit_serial
def depthwise_steps(x, w_tiled, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                    dilation_h, dilation_w, y, t0, t1):
    """Steps t0..t1-1 (over N x `steps_per_image`, each two output rows of one image) of
    y = act(depthwise(x, w) + bias), and each row's sum over its columns into row_sums[n, oh]
    when row_sums is not empty. Each step is computed alike however the steps are grouped.

    x: (N, H, W, C) C-contiguous; w_tiled: `tiled_weight(w, P)` (KH*KW, P*C), P the output pixels
    per run (`tile_pixels`); bias: the bias repeated P times (P*C,) like the weight, or empty for
    none (then no epilogue: training); act: an `ops.epilogue` code; row_sums: (N, Ho, C) or
    empty; y: (N, Ho, Wo, C). Each run of pixels is finished (bias, activation) right after its
    taps are summed, while in L1.
    pad_top/pad_left may be negative (the stride-1 input gradient runs through here).

    3x3 kernels run `depthwise_steps_3x3`, the others `depthwise_steps_kxk`: two functions (same
    arguments), so that fused inference compiles only the one its model has (V2: 3x3 only).
    """
    if kernel_h == 3 and kernel_w == 3:
        depthwise_steps_3x3(x, w_tiled, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top,
                            pad_left, dilation_h, dilation_w, y, t0, t1)
    else:
        depthwise_steps_kxk(x, w_tiled, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top,
                            pad_left, dilation_h, dilation_w, y, t0, t1)


@njit_serial
def clamped_borders(x, w_tiled, kernel_h, y, n, oh, top, lo, hi, span, stride_w, pad_left, dilation_h, dilation_w,
                     bias, act):
    """Output row `oh` of image `n` where its taps reach the padding, by clamped taps, finished
    (bias, activation): the columns left of `lo` and from `hi` on, or the whole row when its taps
    reach the top or bottom padding (`top`: its first input row; `span`: the kernel's height in rows)."""
    out_width = y.shape[2]
    if top >= 0 and top + span < x.shape[1]:
        for a, b in ((0, lo), (hi, out_width)):
            _masked_pixels(x, w_tiled, kernel_h, y, n, oh, top, a, b, stride_w, pad_left, dilation_h, dilation_w)
            _bias_act_pixels(y, n, oh, a, b, bias, act)
    else:
        # (np.int64(0), not 0: a literal argument would compile the callee a second time)
        _masked_pixels(x, w_tiled, kernel_h, y, n, oh, top, np.int64(0), out_width, stride_w, pad_left, dilation_h,
                       dilation_w)
        _bias_act_pixels(y, n, oh, np.int64(0), out_width, bias, act)


@njit_serial
def depthwise_steps_3x3(x, w_tiled, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                        dilation_h, dilation_w, y, t0, t1):
    """`depthwise_steps` for a 3x3 kernel (kernel_h = kernel_w = 3): borders by clamped taps, the
    nine taps in one pass, two output rows at once where they share input rows."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    out_height, out_width = y.shape[1], y.shape[2]
    lo, hi = _interior_columns(width, out_width, kernel_w, stride_w, pad_left, dilation_w)
    steps, rows_per_step = steps_per_image(out_height, kernel_h, kernel_w, stride_h, dilation_h)
    x_rows = x.reshape(x.shape[0], height, width * channels)
    y_rows = y.reshape(y.shape[0], out_height, out_width * channels)
    span = (kernel_h - 1) * dilation_h
    pixels = w_tiled.shape[1] // channels
    for t in range(t0, t1):
        n, first, last = step_rows(t, steps, rows_per_step, out_height)
        x_image, y_image = x_rows[n], y_rows[n]
        for oh in range(first, last):         # borders: clamped taps where they reach the padding
            clamped_borders(x, w_tiled, kernel_h, y, n, oh, oh * stride_h - pad_top, lo, hi, span, stride_w, pad_left,
                             dilation_h, dilation_w, bias, act)
        top = first * stride_h - pad_top
        paired = stride_h == 1 and dilation_h == 1 and last - first == 2 and top >= 0 and top + 3 < height
        if paired and pixels == 1:
            _pixels_3x3_pair(x, w_tiled, y, n, first, top, lo, hi, stride_w, pad_left, dilation_w, bias, act)
        elif paired:
            _interior_forward_3x3_pair(
                x_image[top], x_image[top + 1], x_image[top + 2], x_image[top + 3], w_tiled,
                y_image[first], y_image[first + 1], lo, hi, pixels, channels, stride_w, pad_left, dilation_w, bias, act,
            )
        else:
            for oh in range(first, last):
                top = oh * stride_h - pad_top
                if not (top >= 0 and top + span < height):
                    continue                      # done with the borders above
                if pixels == 1:
                    _pixels_3x3(x, w_tiled, y, n, oh, top, lo, hi, stride_w, pad_left, dilation_h, dilation_w, bias, act)
                else:
                    _interior_forward_3x3(
                        x_image[top], x_image[top + dilation_h], x_image[top + 2 * dilation_h], w_tiled, y_image[oh],
                        lo, hi, pixels, channels, stride_w, pad_left, dilation_w, bias, act,
                    )
        step_row_sums(y, row_sums, n, first, last)


@njit_serial
def depthwise_steps_kxk(x, w_tiled, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                        dilation_h, dilation_w, y, t0, t1):
    """`depthwise_steps` for any kernel but 3x3: 5x5 with borders by clamped taps, other sizes
    with borders tap by tap; the interior a kernel row (5 wide) or a tap at a time."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    out_height, out_width = y.shape[1], y.shape[2]
    lo, hi = _interior_columns(width, out_width, kernel_w, stride_w, pad_left, dilation_w)
    steps, rows_per_step = steps_per_image(out_height, kernel_h, kernel_w, stride_h, dilation_h)
    x_rows = x.reshape(x.shape[0], height, width * channels)
    y_rows = y.reshape(y.shape[0], out_height, out_width * channels)
    masked = kernel_h == kernel_w and kernel_h == 5   # borders by clamped taps
    span = (kernel_h - 1) * dilation_h
    pixels = w_tiled.shape[1] // channels
    for t in range(t0, t1):
        n, first, last = step_rows(t, steps, rows_per_step, out_height)
        x_image, y_image = x_rows[n], y_rows[n]
        for oh in range(first, last):             # borders (the same loop as depthwise_steps_3x3's)
            top = oh * stride_h - pad_top
            if not masked:
                _border_columns_forward(x_image, w_tiled, kernel_h, kernel_w, channels, y_image[oh], top, lo, hi,
                                        stride_w, pad_left, dilation_h, dilation_w, bias, act)
            else:
                clamped_borders(x, w_tiled, kernel_h, y, n, oh, top, lo, hi, span, stride_w, pad_left, dilation_h,
                                 dilation_w, bias, act)
        for oh in range(first, last):
            top = oh * stride_h - pad_top
            if masked and not (top >= 0 and top + span < height):
                continue                          # done with the borders above
            _interior_forward(
                x, n, oh, x_image, w_tiled, kernel_w, y, y_image[oh], top, lo, hi, pixels, channels,
                stride_w, pad_left, dilation_h, dilation_w, bias, act,
            )
        step_row_sums(y, row_sums, n, first, last)


def _depthwise_forward(x, w_tiled, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                       dilation_h, dilation_w, y):
    # x: (N, H, W, C) -> y: (N, Ho, Wo, C): every step of `depthwise_steps` (disjoint rows of y),
    # an image's steps per iteration from 8 images on (a call per step cost training's small
    # images up to 1.5x), else a step per iteration.
    steps, _ = steps_per_image(y.shape[1], kernel_h, kernel_w, stride_h, dilation_h)
    group = steps if y.shape[0] >= 8 else 1
    for g in prange(y.shape[0] * steps // group):
        depthwise_steps(x, w_tiled, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                        dilation_h, dilation_w, y, g * group, (g + 1) * group)


_depthwise_forward_serial, _depthwise_forward_parallel = serial_and_parallel(_depthwise_forward)
DEPTHWISE_FORWARD = (_depthwise_forward_serial, _depthwise_forward_parallel)


# -- backward, input gradient at stride > 1: dy (N, Ho, Wo, C), w (KH, KW, C) -> dx (N, H, W, C) -----
def _depthwise_backward_input_strided(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w):
    # dy: (N, Ho, Wo, C), w: (KH, KW, C) -> dx: (N, H, W, C).
    # Input row ih received output row oh through kernel row i when ih = oh*sh - pt + i*rh (rh: dilation),
    # i.e. when (ih + pt - i*rh) / sh is a whole row index; within that row pair, tap j sends output column
    # ow to input column ow*sw - pl + j*dilation_w. Each iteration writes only its own input row.
    batch, height, width, channels = dx.shape
    kernel_h, kernel_w, _ = w.shape
    out_height, out_width = dy.shape[1], dy.shape[2]
    dy_rows = dy.reshape(batch, out_height, out_width * channels)
    dx_rows = dx.reshape(batch, height, width * channels)
    for row in prange(batch * height):
        n = row // height
        ih = row - n * height
        dx_row = dx_rows[n, ih]
        dx_row[:] = 0
        for i in range(kernel_h):
            t = ih + pad_top - i * dilation_h
            if t < 0 or t % stride_h != 0 or t // stride_h >= out_height:
                continue
            dy_row = dy_rows[n, t // stride_h]
            for j in range(kernel_w):
                w_tap = w[i, j]
                shift = j * dilation_w - pad_left  # input column of output column 0 at tap j
                first = min(max(-(shift // stride_w), 0), out_width)  # first ow with ow*sw + shift >= 0
                last = max(min((width - 1 - shift) // stride_w + 1, out_width), first)
                for ow in range(first, last):
                    iw = ow * stride_w + shift
                    dx_pixel = dx_row[iw * channels:(iw + 1) * channels]
                    dy_pixel = dy_row[ow * channels:(ow + 1) * channels]
                    for c in range(channels):
                        dx_pixel[c] += dy_pixel[c] * w_tap[c]


_depthwise_backward_input_strided_serial, _depthwise_backward_input_strided_parallel = serial_and_parallel(
    _depthwise_backward_input_strided
)


# -- backward, weight gradient: x (N, H, W, C), dy (N, Ho, Wo, C) -> dw (KH, KW, C) -----------------
@njit_serial
def _border_pixel_weight(x_row, dy_row, acc, i, kernel_w, ow, channels, width, stride_w, pad_left, dilation_w):
    """acc[i*KW + j, :C] += dy[ow] * x[tap j of ow] for the taps of kernel row i inside x."""
    dy_pixel = dy_row[ow * channels:(ow + 1) * channels]
    for j in range(kernel_w):
        iw = ow * stride_w - pad_left + j * dilation_w
        if iw < 0 or iw >= width:
            continue
        x_pixel = x_row[iw * channels:(iw + 1) * channels]
        acc_tap = acc[i * kernel_w + j]
        for c in range(channels):
            acc_tap[c] += dy_pixel[c] * x_pixel[c]


def _depthwise_backward_weight(x, dy, dw_partial, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
                               kernel_h, kernel_w, tile_pixels):
    # x: (N, H, W, C), dy: (N, Ho, Wo, C) -> dw_partial: (chunks, KH*KW, tile_pixels*C), zero on entry.
    # Chunk k sums output rows [k*R/chunks, (k+1)*R/chunks) of the R = N*Ho rows into dw_partial[k];
    # the caller sums over chunks and over the tile_pixels copies of each channel.
    batch, height, width, channels = x.shape
    out_height, out_width = dy.shape[1], dy.shape[2]
    x_rows = x.reshape(batch, height, width * channels)
    dy_rows = dy.reshape(batch, out_height, out_width * channels)
    lo, hi = _interior_columns(width, out_width, kernel_w, stride_w, pad_left, dilation_w)
    chunks = dw_partial.shape[0]
    rows = batch * out_height
    for chunk in prange(chunks):
        acc = dw_partial[chunk]
        for row in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            n = row // out_height
            oh = row - n * out_height
            dy_row = dy_rows[n, oh]
            for i in range(kernel_h):
                ih = oh * stride_h - pad_top + i * dilation_h
                if ih < 0 or ih >= height:
                    continue
                x_row = x_rows[n, ih]
                for ow in range(lo):
                    _border_pixel_weight(x_row, dy_row, acc, i, kernel_w, ow, channels, width, stride_w, pad_left,
                                         dilation_w)
                for ow in range(hi, out_width):
                    _border_pixel_weight(x_row, dy_row, acc, i, kernel_w, ow, channels, width, stride_w, pad_left,
                                         dilation_w)
                for start in range(lo, hi, tile_pixels):
                    length = (min(start + tile_pixels, hi) - start) * channels
                    dy_tile = dy_row[start * channels:start * channels + length]
                    for j in range(kernel_w):
                        offset = (start * stride_w - pad_left + j * dilation_w) * channels
                        x_tile = x_row[offset:offset + length]
                        acc_tile = acc[i * kernel_w + j]
                        for m in range(length):
                            acc_tile[m] += dy_tile[m] * x_tile[m]


_depthwise_backward_weight_serial, _depthwise_backward_weight_parallel = serial_and_parallel(
    _depthwise_backward_weight
)


# -- public functions ---------------------------------------------------------------------------------
# (bias, activation, row sums) of a bare convolution: no bias (so no epilogue), no row sums
_NO_EPILOGUE = {t: (np.zeros(0, t), IDENTITY, np.zeros((0, 1, 1), t)) for t in (np.float32, np.float64)}


def _check_inputs(x, w):
    x = check_array(x, "x", 4, "(N, H, W, C)")
    w = check_array(w, "w", 3, "(KH, KW, C)")
    check_same_dtype(x=x, w=w)
    if w.shape[2] != x.shape[3]:
        raise ValueError(
            f"depthwise w must have one kernel per input channel: w has {w.shape[2]} channels "
            f"(shape {w.shape}), x has {x.shape[3]} (shape {x.shape})"
        )
    return x, w


def depthwise_conv2d(x, w, stride=1, padding=0, dilation=1):
    """Depthwise convolution (Numba). x `(N, H, W, C)`, w `(KH, KW, C)` -> y `(N, Ho, Wo, C)`.

    `stride`, `dilation`: int or `(vertical, horizontal)`; `padding`: int, `(ph, pw)` or
    `((top, bottom), (left, right))`. Same dtype out as in (float32 or float64).
    """
    x, w = _check_inputs(x, w)
    kernel_h, kernel_w, channels = w.shape
    out_h, out_w, (stride_h, stride_w), (pad_top, _, pad_left, _), (dilation_h, dilation_w) = conv_geometry(
        x.shape, kernel_h, kernel_w, stride, padding, dilation
    )
    y = np.empty((x.shape[0], out_h, out_w, channels), x.dtype)
    kernel = choose_kernel(*DEPTHWISE_FORWARD, y.size * kernel_h * kernel_w)
    kernel(x, tiled_weight(w, tile_pixels(channels, stride_w)), kernel_h, kernel_w, *_NO_EPILOGUE[x.dtype.type],
           stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, y)
    return y


def depthwise_conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1):
    """Gradients of `depthwise_conv2d` (Numba): dy `(N, Ho, Wo, C)` -> dx `(N, H, W, C)`, dw `(KH, KW, C)`."""
    x, w = _check_inputs(x, w)
    kernel_h, kernel_w, channels = w.shape
    out_h, out_w, (stride_h, stride_w), (pad_top, _, pad_left, _), (dilation_h, dilation_w) = conv_geometry(
        x.shape, kernel_h, kernel_w, stride, padding, dilation
    )
    dy = check_dy(dy, (x.shape[0], out_h, out_w, channels), x.dtype)
    macs = dy.size * kernel_h * kernel_w

    dx = np.empty_like(x)
    if stride_h == 1 and stride_w == 1:
        # dx = dy correlated with the kernel turned by 180 degrees, padded by (K-1)*d - p
        w_turned = np.ascontiguousarray(w[::-1, ::-1])
        kernel = choose_kernel(*DEPTHWISE_FORWARD, macs)
        kernel(dy, tiled_weight(w_turned, tile_pixels(channels, 1)), kernel_h, kernel_w, *_NO_EPILOGUE[x.dtype.type],
               1, 1, (kernel_h - 1) * dilation_h - pad_top, (kernel_w - 1) * dilation_w - pad_left,
               dilation_h, dilation_w, dx)
    else:
        kernel = choose_kernel(
            _depthwise_backward_input_strided_serial, _depthwise_backward_input_strided_parallel, macs
        )
        kernel(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w)

    pixels = tile_pixels(channels, stride_w)
    kernel = choose_kernel(_depthwise_backward_weight_serial, _depthwise_backward_weight_parallel, macs)
    chunks = 1 if kernel is _depthwise_backward_weight_serial else min(get_num_threads(), x.shape[0] * out_h)
    dw_partial = np.zeros((chunks, kernel_h * kernel_w, pixels * channels), x.dtype)
    kernel(x, dy, dw_partial, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h, kernel_w,
           pixels)
    dw = dw_partial.sum(axis=0).reshape(kernel_h, kernel_w, pixels, channels).sum(axis=2)
    return dx, dw
