"""Depthwise convolution: every channel filtered by its own KH x KW kernel.

MobileNet V1 paper (Howard et al., 2017), Sec. 3.1, Eq. (3):

    y[n, oh, ow, c] = sum_{i, j} x[n, oh*sh - pt + i*rh, ow*sw - pl + j*rw, c] * w[i, j, c]

x `(N, H, W, C)`, w `(KH, KW, C)` -> y `(N, Ho, Wo, C)`; taps that fall in the padding read zero.
Cost: N * Ho * Wo * C * KH * KW multiply-accumulates (V1 Eq. (3) with D_K = KH = KW).

Everything here is Numba; there is no matrix product in a depthwise convolution, so no BLAS.

Why it is fast. In NHWC a pixel's channels are contiguous, so every inner loop runs over channels
and LLVM vectorises it. On top of that:
  * Tiles. At horizontal stride 1 consecutive output pixels read consecutive input pixels, so a
    tile of P output pixels is one contiguous run of P*C numbers in x and in y. The kernels loop
    over that run against the weights repeated P times (`w_tiled`, `(KH*KW, P*C)`), which keeps
    inner loops about `TILE_ELEMENTS` long even where C is small (C = 16 or 32 in the first
    blocks, too short to vectorise well on its own). At other strides a tile is one pixel.
  * 3x3 fused. For a 3x3 kernel (all of V1 and V2, most of V3) the nine taps are summed in one pass
    over a tile, so y is written once instead of read and written nine times. A 5-wide kernel
    (V3's 5x5) sums the five taps of a kernel row per pass; other sizes go tap by tap.
  * Row pairs. Loads, not multiplies, bound these loops (each product needs an x and a w load).
    At vertical stride and dilation 1, two adjacent output rows share two of their three input
    rows, so a 3x3 step computes both: 12 x-loads and 9 w-loads for two outputs instead of 36.
  * Borders apart. Only output pixels whose taps reach the padding test every tap; the interior
    tests nothing.
  * Inner loops index views (slices) with the bare loop counter: any other index makes Numba emit
    a negative-index wraparound test per element, and LLVM then does not vectorise.

Backward (hand-written):
  * dx: at stride 1, dx is the same correlation run over dy with the kernel turned by 180 degrees
    and padding (KH-1)*rh - pt (a gather; rh, rw: the dilation), so the forward kernel computes it. At larger strides
    each input row gathers the output rows it fed, and adds their taps into its own columns.
  * dw[i, j, c] = sum over batch and output pixels of dy * x at tap (i, j): accumulated per chunk
    of output rows into that chunk's own buffer (one chunk per thread), the buffers summed after.
Parallelism: `prange` over batch x output rows (forward), batch x input rows (dx at stride > 1)
and row chunks (dw); no iteration writes where another does.
"""
import numpy as np
from numba import prange

from npmobilenet.config import choose_kernel, get_num_threads, njit_serial, serial_and_parallel
from npmobilenet.ops.geometry import (
    check_array,
    check_dy,
    check_same_dtype,
    conv_geometry,
)

# Channels x pixels per inner loop: long enough to amortise each tile's set-up (slices, LLVM's
# run-time overlap checks), short enough to stay in cache. 512 to 768 measured best (AVX-512).
TILE_ELEMENTS = 512


def _tile_pixels(channels, stride_w):
    """Output pixels per tile: only at horizontal stride 1 are neighbours contiguous in x."""
    return max(1, TILE_ELEMENTS // channels) if stride_w == 1 else 1


def _tiled(w, tile_pixels):
    """w `(KH, KW, C)` repeated `tile_pixels` times along the channels: `(KH*KW, tile_pixels*C)`."""
    kernel_h, kernel_w, channels = w.shape
    return np.ascontiguousarray(np.tile(w.reshape(kernel_h * kernel_w, channels), (1, tile_pixels)))


# -- shared pieces of the kernels -------------------------------------------------------------------
@njit_serial
def _interior_columns(width, out_width, kernel_w, stride_w, pad_left, dilation_w):
    """Output columns `[lo, hi)` whose every tap lies inside the unpadded row of `width` pixels."""
    lo = -(-pad_left // stride_w)  # ceil(pad_left / stride_w): first ow with ow*sw - pl >= 0
    lo = min(max(lo, 0), out_width)
    hi = (width - 1 + pad_left - (kernel_w - 1) * dilation_w) // stride_w + 1
    hi = max(min(hi, out_width), lo)
    return lo, hi


@njit_serial
def _border_pixel_forward(x_row, w, i, y_row, ow, channels, width, stride_w, pad_left, dilation_w):
    """y_row[ow] += kernel row i applied at ow, skipping taps in the padding (rows flat: W*C)."""
    y_pixel = y_row[ow * channels:(ow + 1) * channels]
    for j in range(w.shape[1]):
        iw = ow * stride_w - pad_left + j * dilation_w
        if iw < 0 or iw >= width:
            continue
        x_pixel = x_row[iw * channels:(iw + 1) * channels]
        w_tap = w[i, j]
        for c in range(channels):
            y_pixel[c] += x_pixel[c] * w_tap[c]


@njit_serial
def _border_columns_forward(x_image, w, y_row, top, lo, hi, stride_w, pad_left, dilation_h, dilation_w):
    """Output columns [0, lo) and [hi, Wo) of one row (x_image: (H, W*C), y_row: Wo*C), tap by tap."""
    height = x_image.shape[0]
    channels = w.shape[2]
    width = x_image.shape[1] // channels
    out_width = y_row.shape[0] // channels
    y_row[:lo * channels] = 0
    y_row[hi * channels:] = 0
    for i in range(w.shape[0]):
        ih = top + i * dilation_h
        if ih < 0 or ih >= height:
            continue  # this kernel row lies in the padding
        x_row = x_image[ih]
        for ow in range(lo):
            _border_pixel_forward(x_row, w, i, y_row, ow, channels, width, stride_w, pad_left, dilation_w)
        for ow in range(hi, out_width):
            _border_pixel_forward(x_row, w, i, y_row, ow, channels, width, stride_w, pad_left, dilation_w)


@njit_serial
def _interior_forward(x_image, w_tiled, kernel_w, y_row, top, lo, hi, tile_pixels, channels,
                      stride_w, pad_left, dilation_h, dilation_w):
    """y_row[lo:hi] = every kernel tap inside x, one tap at a time over whole tiles (any kernel size)."""
    height = x_image.shape[0]
    kernel_h = w_tiled.shape[0] // kernel_w
    y_row[lo * channels:hi * channels] = 0
    for i in range(kernel_h):
        ih = top + i * dilation_h
        if ih < 0 or ih >= height:
            continue
        x_row = x_image[ih]
        if kernel_w == 5:
            _interior_row_forward_5(x_row, w_tiled, i, y_row, lo, hi, tile_pixels, channels, stride_w, pad_left,
                                    dilation_w)
            continue
        for start in range(lo, hi, tile_pixels):
            length = (min(start + tile_pixels, hi) - start) * channels
            y_tile = y_row[start * channels:start * channels + length]
            for j in range(kernel_w):
                offset = (start * stride_w - pad_left + j * dilation_w) * channels
                x_tile = x_row[offset:offset + length]
                w_tile = w_tiled[i * kernel_w + j]
                for m in range(length):
                    y_tile[m] += x_tile[m] * w_tile[m]


@njit_serial
def _interior_row_forward_5(x_row, w_tiled, i, y_row, lo, hi, tile_pixels, channels, stride_w, pad_left,
                            dilation_w):
    """y_row[lo:hi] += the five taps of kernel row i of a 5-wide kernel (V3's 5x5), in one pass per tile."""
    step = dilation_w * channels
    w0, w1, w2, w3, w4 = w_tiled[5 * i], w_tiled[5 * i + 1], w_tiled[5 * i + 2], w_tiled[5 * i + 3], w_tiled[5 * i + 4]
    for start in range(lo, hi, tile_pixels):
        length = (min(start + tile_pixels, hi) - start) * channels
        y_tile = y_row[start * channels:start * channels + length]
        first = (start * stride_w - pad_left) * channels
        x0 = x_row[first:first + length]
        x1 = x_row[first + step:first + step + length]
        x2 = x_row[first + 2 * step:first + 2 * step + length]
        x3 = x_row[first + 3 * step:first + 3 * step + length]
        x4 = x_row[first + 4 * step:first + 4 * step + length]
        for m in range(length):
            y_tile[m] += x0[m] * w0[m] + x1[m] * w1[m] + x2[m] * w2[m] + x3[m] * w3[m] + x4[m] * w4[m]


@njit_serial
def _interior_forward_3x3(x_top, x_middle, x_bottom, w_tiled, y_row, lo, hi, tile_pixels, channels,
                          stride_w, pad_left, dilation_w):
    """y_row[lo:hi] = the nine taps of a 3x3 kernel over three input rows, summed in one pass per tile."""
    step = dilation_w * channels
    for start in range(lo, hi, tile_pixels):
        length = (min(start + tile_pixels, hi) - start) * channels
        y_tile = y_row[start * channels:start * channels + length]
        left = (start * stride_w - pad_left) * channels
        centre = left + step
        right = centre + step
        x00, x01, x02 = x_top[left:left + length], x_top[centre:centre + length], x_top[right:right + length]
        x10, x11, x12 = x_middle[left:left + length], x_middle[centre:centre + length], x_middle[right:right + length]
        x20, x21, x22 = x_bottom[left:left + length], x_bottom[centre:centre + length], x_bottom[right:right + length]
        w00, w01, w02 = w_tiled[0], w_tiled[1], w_tiled[2]
        w10, w11, w12 = w_tiled[3], w_tiled[4], w_tiled[5]
        w20, w21, w22 = w_tiled[6], w_tiled[7], w_tiled[8]
        for m in range(length):
            y_tile[m] = (
                x00[m] * w00[m] + x01[m] * w01[m] + x02[m] * w02[m]
                + x10[m] * w10[m] + x11[m] * w11[m] + x12[m] * w12[m]
                + x20[m] * w20[m] + x21[m] * w21[m] + x22[m] * w22[m]
            )


@njit_serial
def _interior_forward_3x3_pair(x0, x1, x2, x3, w_tiled, y_upper, y_lower, lo, hi, tile_pixels, channels,
                               stride_w, pad_left, dilation_w):
    """Two adjacent output rows of a 3x3 kernel at vertical stride 1, dilation 1, in one pass.

    They share input rows x1 and x2, so each tile costs 12 x-loads and 9 w-loads for two outputs
    instead of 18 and 18: loads, not multiplies, bound this kernel.
    """
    step = dilation_w * channels
    for start in range(lo, hi, tile_pixels):
        length = (min(start + tile_pixels, hi) - start) * channels
        y_up = y_upper[start * channels:start * channels + length]
        y_low = y_lower[start * channels:start * channels + length]
        left = (start * stride_w - pad_left) * channels
        centre = left + step
        right = centre + step
        x00, x01, x02 = x0[left:left + length], x0[centre:centre + length], x0[right:right + length]
        x10, x11, x12 = x1[left:left + length], x1[centre:centre + length], x1[right:right + length]
        x20, x21, x22 = x2[left:left + length], x2[centre:centre + length], x2[right:right + length]
        x30, x31, x32 = x3[left:left + length], x3[centre:centre + length], x3[right:right + length]
        w00, w01, w02 = w_tiled[0], w_tiled[1], w_tiled[2]
        w10, w11, w12 = w_tiled[3], w_tiled[4], w_tiled[5]
        w20, w21, w22 = w_tiled[6], w_tiled[7], w_tiled[8]
        for m in range(length):
            y_up[m] = (
                x00[m] * w00[m] + x01[m] * w01[m] + x02[m] * w02[m]
                + x10[m] * w10[m] + x11[m] * w11[m] + x12[m] * w12[m]
                + x20[m] * w20[m] + x21[m] * w21[m] + x22[m] * w22[m]
            )
            y_low[m] = (
                x10[m] * w00[m] + x11[m] * w01[m] + x12[m] * w02[m]
                + x20[m] * w10[m] + x21[m] * w11[m] + x22[m] * w12[m]
                + x30[m] * w20[m] + x31[m] * w21[m] + x32[m] * w22[m]
            )


# -- forward: x (N, H, W, C), w (KH, KW, C) -> y (N, Ho, Wo, C) -------------------------------------
def _depthwise_forward(x, w, w_tiled, y, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
                       tile_pixels):
    # x: (N, H, W, C), w: (KH, KW, C), w_tiled: (KH*KW, tile_pixels*C) -> y: (N, Ho, Wo, C).
    # pad_top/pad_left may be negative (the stride-1 input gradient runs through here).
    batch, height, width, channels = x.shape
    kernel_h, kernel_w, _ = w.shape
    out_height, out_width = y.shape[1], y.shape[2]
    x_rows = x.reshape(batch, height, width * channels)
    y_rows = y.reshape(batch, out_height, out_width * channels)
    lo, hi = _interior_columns(width, out_width, kernel_w, stride_w, pad_left, dilation_w)
    fused = kernel_h == 3 and kernel_w == 3
    # a step is one output row, or two when they share input rows (3x3, vertical stride and dilation 1)
    rows_per_step = 2 if fused and stride_h == 1 and dilation_h == 1 else 1
    steps = (out_height + rows_per_step - 1) // rows_per_step
    for task in prange(batch * steps):
        n = task // steps
        first = (task - n * steps) * rows_per_step
        last = min(first + rows_per_step, out_height)
        x_image = x_rows[n]
        for oh in range(first, last):
            top = oh * stride_h - pad_top
            _border_columns_forward(x_image, w, y_rows[n, oh], top, lo, hi, stride_w, pad_left, dilation_h, dilation_w)
        top = first * stride_h - pad_top
        if last - first == 2 and top >= 0 and top + 3 < height:
            _interior_forward_3x3_pair(
                x_image[top], x_image[top + 1], x_image[top + 2], x_image[top + 3], w_tiled,
                y_rows[n, first], y_rows[n, first + 1], lo, hi, tile_pixels, channels, stride_w, pad_left, dilation_w,
            )
            continue
        for oh in range(first, last):
            top = oh * stride_h - pad_top
            if fused and top >= 0 and top + 2 * dilation_h < height:
                _interior_forward_3x3(
                    x_image[top], x_image[top + dilation_h], x_image[top + 2 * dilation_h], w_tiled, y_rows[n, oh],
                    lo, hi, tile_pixels, channels, stride_w, pad_left, dilation_w,
                )
            else:
                _interior_forward(
                    x_image, w_tiled, kernel_w, y_rows[n, oh], top, lo, hi, tile_pixels, channels,
                    stride_w, pad_left, dilation_h, dilation_w,
                )


_depthwise_forward_serial, _depthwise_forward_parallel = serial_and_parallel(_depthwise_forward)


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
    tile_pixels = _tile_pixels(channels, stride_w)
    kernel = choose_kernel(_depthwise_forward_serial, _depthwise_forward_parallel, y.size * kernel_h * kernel_w)
    kernel(x, w, _tiled(w, tile_pixels), y, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, tile_pixels)
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
        tile_pixels = _tile_pixels(channels, 1)
        kernel = choose_kernel(_depthwise_forward_serial, _depthwise_forward_parallel, macs)
        kernel(
            dy, w_turned, _tiled(w_turned, tile_pixels), dx, 1, 1,
            (kernel_h - 1) * dilation_h - pad_top, (kernel_w - 1) * dilation_w - pad_left,
            dilation_h, dilation_w, tile_pixels,
        )
    else:
        kernel = choose_kernel(
            _depthwise_backward_input_strided_serial, _depthwise_backward_input_strided_parallel, macs
        )
        kernel(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w)

    tile_pixels = _tile_pixels(channels, stride_w)
    kernel = choose_kernel(_depthwise_backward_weight_serial, _depthwise_backward_weight_parallel, macs)
    chunks = 1 if kernel is _depthwise_backward_weight_serial else min(get_num_threads(), x.shape[0] * out_h)
    dw_partial = np.zeros((chunks, kernel_h * kernel_w, tile_pixels * channels), x.dtype)
    kernel(x, dy, dw_partial, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h, kernel_w,
           tile_pixels)
    dw = dw_partial.sum(axis=0).reshape(kernel_h, kernel_w, tile_pixels, channels).sum(axis=2)
    return dx, dw
