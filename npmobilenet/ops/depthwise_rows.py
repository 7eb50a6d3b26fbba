"""The row loops of the depthwise forward tile (`depthwise.depthwise_tile`), innermost loops over
the contiguous channel axis.

Rows are flat (`W*C` numbers): at horizontal stride 1 the output pixels of a run are one
contiguous run of P*C numbers in x and in y, and the loops go over that run against the weight
repeated P times (`w_tiled`, `(KH*KW, P*C)`), so they stay about `TILE_ELEMENTS` long even where
C is 16 or 32. A 3x3 kernel sums its nine taps in one pass (two output rows at once when they
share input rows: loads, not multiplies, bound these loops); a 5-wide kernel sums a kernel row
per pass; other sizes go tap by tap. Where a run is one pixel (horizontal stride > 1, or C of
TILE_ELEMENTS or more) the `_pixels_*` loops index x and y directly instead. Output pixels whose
taps reach the padding are done apart, the interior tests nothing: for 3x3 and 5x5 kernels
(`_masked_pixels`) with indices clamped into x and the padding's taps multiplied by 0 (no branch
per tap: at 14x14 and 7x7, with a 5x5 kernel, half the pixels are border pixels), for other
sizes tap by tap (`_border_columns_forward`). Each run is finished by its epilogue (bias,
activation) right after its taps.

The 3x3 one-pixel loops (`_pixels_3x3`, `_pixels_3x3_pair`, `_activate_pixels`) are inlined into
the 3x3 step (`config.njit_inline`): compiled on their own and again inside their caller, they
had cost V2's cold start about 0.8 s (13.3-13.6 s against 13.4-14.7 s). The interior loops are
not: inlined too, V2 ran about 2% slower.

Inner loops index views (slices) with the bare loop counter, or unsigned indices (`epilogue._U`):
any other index makes Numba emit a negative-index wraparound test per element, and LLVM then does
not vectorise.
"""
import numpy as np

from npmobilenet.config import njit_inline, njit_serial
from npmobilenet.ops.epilogue import _U, HARDSWISH, RELU, RELU6, bias_act_run

_F32 = np.float32


@njit_serial
def _interior_columns(width, out_width, kernel_w, stride_w, pad_left, dilation_w):
    """Output columns `[lo, hi)` whose every tap lies inside the unpadded row of `width` pixels."""
    lo = -(-pad_left // stride_w)  # ceil(pad_left / stride_w): first ow with ow*sw - pl >= 0
    lo = min(max(lo, 0), out_width)
    hi = (width - 1 + pad_left - (kernel_w - 1) * dilation_w) // stride_w + 1
    hi = max(min(hi, out_width), lo)
    return lo, hi


@njit_serial
def _border_pixel_forward(x_row, w_tiled, i, kernel_w, y_row, ow, channels, width, stride_w, pad_left,
                          dilation_w):
    """y_row[ow] += kernel row i applied at ow, skipping taps in the padding (rows flat: W*C)."""
    y_pixel = y_row[ow * channels:(ow + 1) * channels]
    for j in range(kernel_w):
        iw = ow * stride_w - pad_left + j * dilation_w
        if iw < 0 or iw >= width:
            continue
        x_pixel = x_row[iw * channels:(iw + 1) * channels]
        w_tap = w_tiled[i * kernel_w + j]
        for c in range(channels):
            y_pixel[c] += x_pixel[c] * w_tap[c]


@njit_serial
def _border_columns_forward(x_image, w_tiled, kernel_h, kernel_w, channels, y_row, top, lo, hi, stride_w,
                            pad_left, dilation_h, dilation_w, bias, act):
    """Output columns [0, lo) and [hi, Wo) of one row (x_image: (H, W*C), y_row: Wo*C), tap by tap,
    then their epilogue."""
    height = x_image.shape[0]
    width = x_image.shape[1] // channels
    out_width = y_row.shape[0] // channels
    y_row[:lo * channels] = 0
    y_row[hi * channels:] = 0
    for i in range(kernel_h):
        ih = top + i * dilation_h
        if ih < 0 or ih >= height:
            continue  # this kernel row lies in the padding
        x_row = x_image[ih]
        for ow in range(lo):
            _border_pixel_forward(x_row, w_tiled, i, kernel_w, y_row, ow, channels, width, stride_w, pad_left,
                                  dilation_w)
        for ow in range(hi, out_width):
            _border_pixel_forward(x_row, w_tiled, i, kernel_w, y_row, ow, channels, width, stride_w, pad_left,
                                  dilation_w)
    if bias.shape[0] > 0:
        for ow in range(lo):
            bias_act_run(y_row[ow * channels:(ow + 1) * channels], bias, act)
        for ow in range(hi, out_width):
            bias_act_run(y_row[ow * channels:(ow + 1) * channels], bias, act)
@njit_serial
def _interior_forward(x, n, oh, x_image, w_tiled, kernel_w, y, y_row, top, lo, hi, tile_pixels, channels,
                      stride_w, pad_left, dilation_h, dilation_w, bias, act):
    """y_row[lo:hi] (= y[n, oh] flat) = every kernel tap inside x, one tap at a time over whole
    tiles (any kernel size; a 5-wide kernel a kernel row at a time), then each tile's epilogue."""
    height = x_image.shape[0]
    kernel_h = w_tiled.shape[0] // kernel_w
    y_row[lo * channels:hi * channels] = 0
    for i in range(kernel_h):
        ih = top + i * dilation_h
        if ih < 0 or ih >= height:
            continue
        x_row = x_image[ih]
        if kernel_w == 5 and tile_pixels == 1:
            _pixels_row_5(x, w_tiled, i, y, n, oh, ih, lo, hi, stride_w, pad_left, dilation_w)
            continue
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
    if tile_pixels == 1:
        _bias_act_pixels(y, n, oh, lo, hi, bias, act)
    elif bias.shape[0] > 0:
        for start in range(lo, hi, tile_pixels):
            length = (min(start + tile_pixels, hi) - start) * channels
            bias_act_run(y_row[start * channels:start * channels + length], bias, act)


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
def _bias_act_pixels(y, n, oh, lo, hi, bias, act):
    """y[n, oh, lo:hi] = act(y + bias) in place (bias: its first C entries), indexing y directly:
    the epilogue of one-pixel runs and of border pixels (a view per pixel would cost more than a
    pixel of few channels)."""
    if bias.shape[0] == 0:
        return
    un, uoh = _U(n), _U(oh)
    zero, three, six, sixth = _F32(0), _F32(3), _F32(6), _F32(1 / 6)
    for ow in range(lo, hi):
        uow = _U(ow)
        if act == RELU:
            for c in range(y.shape[3]):
                y[un, uoh, uow, c] = max(y[un, uoh, uow, c] + bias[c], zero)
        elif act == RELU6:
            for c in range(y.shape[3]):
                y[un, uoh, uow, c] = min(max(y[un, uoh, uow, c] + bias[c], zero), six)
        elif act == HARDSWISH:
            for c in range(y.shape[3]):
                v = y[un, uoh, uow, c] + bias[c]
                y[un, uoh, uow, c] = v * min(max(v + three, zero), six) * sixth
        else:
            for c in range(y.shape[3]):
                y[un, uoh, uow, c] += bias[c]


@njit_inline
def _activate_pixels(y, n, oh, lo, hi, act):
    """y[n, oh, lo:hi] = act(y) in place (nothing for IDENTITY), indexing y directly."""
    un, uoh = _U(n), _U(oh)
    zero, three, six, sixth = _F32(0), _F32(3), _F32(6), _F32(1 / 6)
    for ow in range(lo, hi):
        uow = _U(ow)
        if act == RELU:
            for c in range(y.shape[3]):
                y[un, uoh, uow, c] = max(y[un, uoh, uow, c], zero)
        elif act == RELU6:
            for c in range(y.shape[3]):
                y[un, uoh, uow, c] = min(max(y[un, uoh, uow, c], zero), six)
        elif act == HARDSWISH:
            for c in range(y.shape[3]):
                v = y[un, uoh, uow, c]
                y[un, uoh, uow, c] = v * min(max(v + three, zero), six) * sixth


@njit_serial
def _masked_pixels(x, w_tiled, kernel_size, y, n, oh, top, lo, hi, stride_w, pad_left, dilation_h, dilation_w):
    """y[n, oh, lo:hi] for a 3x3 or 5x5 kernel where taps reach the padding (border pixels, and
    whole rows at the top and bottom): indices clamped into x, taps in the padding multiplied by 0,
    a kernel row per pass, the channel loop innermost (no branch per tap, no slices)."""
    height, width = x.shape[1], x.shape[2]
    un, uoh = _U(n), _U(oh)
    zero, one = _F32(0), _F32(1)
    for ow in range(lo, hi):
        for c in range(x.shape[3]):
            y[un, uoh, _U(ow), c] = zero
    for i in range(kernel_size):
        ih = top + i * dilation_h
        if ih < 0 or ih >= height:
            continue                          # a kernel row in the padding
        row = _U(ih)
        k = kernel_size * i
        for ow in range(lo, hi):
            uow = _U(ow)
            iw = ow * stride_w - pad_left
            j0, j1, j2 = _U(min(max(iw, 0), width - 1)), _U(min(max(iw + dilation_w, 0), width - 1)), _U(
                min(max(iw + 2 * dilation_w, 0), width - 1))
            k0 = one if 0 <= iw < width else zero
            k1 = one if 0 <= iw + dilation_w < width else zero
            k2 = one if 0 <= iw + 2 * dilation_w < width else zero
            if kernel_size == 3:
                for c in range(x.shape[3]):
                    y[un, uoh, uow, c] += (k0 * x[un, row, j0, c] * w_tiled[k + 0, c] + k1 * x[un, row, j1, c] * w_tiled[k + 1, c]
                                           + k2 * x[un, row, j2, c] * w_tiled[k + 2, c])
            else:
                j3, j4 = _U(min(max(iw + 3 * dilation_w, 0), width - 1)), _U(min(max(iw + 4 * dilation_w, 0), width - 1))
                k3 = one if 0 <= iw + 3 * dilation_w < width else zero
                k4 = one if 0 <= iw + 4 * dilation_w < width else zero
                for c in range(x.shape[3]):
                    y[un, uoh, uow, c] += (k0 * x[un, row, j0, c] * w_tiled[k + 0, c] + k1 * x[un, row, j1, c] * w_tiled[k + 1, c]
                                           + k2 * x[un, row, j2, c] * w_tiled[k + 2, c] + k3 * x[un, row, j3, c] * w_tiled[k + 3, c]
                                           + k4 * x[un, row, j4, c] * w_tiled[k + 4, c])


# One pixel per run (horizontal stride > 1, or C >= TILE_ELEMENTS): slices per pixel cost more
# than the pixel's arithmetic, so these index x and y directly, the channel loop innermost (at
# stride 2: 5-25% faster for 3x3, 10-45% for 5x5, measured on V2/V3/V4 layer shapes).
@njit_serial
def _pixels_row_5(x, w_tiled, i, y, n, oh, ih, lo, hi, stride_w, pad_left, dilation_w):
    """y[n, oh, lo:hi] += the five taps of kernel row i of a 5-wide kernel, input row ih."""
    un, uoh, uih = _U(n), _U(oh), _U(ih)
    k = 5 * i
    for ow in range(lo, hi):
        uow = _U(ow)
        iw = ow * stride_w - pad_left
        j0, j1, j2 = _U(iw), _U(iw + dilation_w), _U(iw + 2 * dilation_w)
        j3, j4 = _U(iw + 3 * dilation_w), _U(iw + 4 * dilation_w)
        for c in range(x.shape[3]):
            y[un, uoh, uow, c] += (x[un, uih, j0, c] * w_tiled[k + 0, c] + x[un, uih, j1, c] * w_tiled[k + 1, c] + x[un, uih, j2, c] * w_tiled[k + 2, c]
                                   + x[un, uih, j3, c] * w_tiled[k + 3, c] + x[un, uih, j4, c] * w_tiled[k + 4, c])


@njit_inline
def _pixels_3x3(x, w_tiled, y, n, oh, top, lo, hi, stride_w, pad_left, dilation_h, dilation_w, bias, act):
    """y[n, oh, lo:hi] = the nine taps of a 3x3 kernel from input rows top, top + rh, top + 2 rh
    (all inside x), then their epilogue."""
    un, uoh = _U(n), _U(oh)
    i0, i1, i2 = _U(top), _U(top + dilation_h), _U(top + 2 * dilation_h)
    has_bias = bias.shape[0] > 0
    zero = y.dtype.type(0)
    for ow in range(lo, hi):
        uow = _U(ow)
        iw = ow * stride_w - pad_left
        j0, j1, j2 = _U(iw), _U(iw + dilation_w), _U(iw + 2 * dilation_w)
        for c in range(x.shape[3]):
            y[un, uoh, uow, c] = (
                (bias[c] if has_bias else zero)
                + x[un, i0, j0, c] * w_tiled[0, c] + x[un, i0, j1, c] * w_tiled[1, c] + x[un, i0, j2, c] * w_tiled[2, c]
                + x[un, i1, j0, c] * w_tiled[3, c] + x[un, i1, j1, c] * w_tiled[4, c] + x[un, i1, j2, c] * w_tiled[5, c]
                + x[un, i2, j0, c] * w_tiled[6, c] + x[un, i2, j1, c] * w_tiled[7, c] + x[un, i2, j2, c] * w_tiled[8, c])
    _activate_pixels(y, n, oh, lo, hi, act)


@njit_inline
def _pixels_3x3_pair(x, w_tiled, y, n, first, top, lo, hi, stride_w, pad_left, dilation_w, bias, act):
    """Output rows first and first + 1 at vertical stride 1 (input rows top..top+3, all inside x),
    pixel by pixel: `_interior_forward_3x3_pair` for one-pixel runs."""
    un, u0, u1 = _U(n), _U(first), _U(first + 1)
    i0, i1, i2, i3 = _U(top), _U(top + 1), _U(top + 2), _U(top + 3)
    for ow in range(lo, hi):
        uow = _U(ow)
        iw = ow * stride_w - pad_left
        j0, j1, j2 = _U(iw), _U(iw + dilation_w), _U(iw + 2 * dilation_w)
        for c in range(x.shape[3]):
            a0, a1, a2 = x[un, i0, j0, c], x[un, i0, j1, c], x[un, i0, j2, c]
            b0, b1, b2 = x[un, i1, j0, c], x[un, i1, j1, c], x[un, i1, j2, c]
            c0, c1, c2 = x[un, i2, j0, c], x[un, i2, j1, c], x[un, i2, j2, c]
            d0, d1, d2 = x[un, i3, j0, c], x[un, i3, j1, c], x[un, i3, j2, c]
            y[un, u0, uow, c] = (a0 * w_tiled[0, c] + a1 * w_tiled[1, c] + a2 * w_tiled[2, c] + b0 * w_tiled[3, c] + b1 * w_tiled[4, c] + b2 * w_tiled[5, c]
                                 + c0 * w_tiled[6, c] + c1 * w_tiled[7, c] + c2 * w_tiled[8, c])
            y[un, u1, uow, c] = (b0 * w_tiled[0, c] + b1 * w_tiled[1, c] + b2 * w_tiled[2, c] + c0 * w_tiled[3, c] + c1 * w_tiled[4, c] + c2 * w_tiled[5, c]
                                 + d0 * w_tiled[6, c] + d1 * w_tiled[7, c] + d2 * w_tiled[8, c])
    _bias_act_pixels(y, n, first, lo, hi, bias, act)
    _bias_act_pixels(y, n, first + 1, lo, hi, bias, act)


@njit_serial
def _interior_forward_3x3(x_top, x_middle, x_bottom, w_tiled, y_row, lo, hi, tile_pixels, channels,
                          stride_w, pad_left, dilation_w, bias, act):
    """y_row[lo:hi] = the nine taps of a 3x3 kernel over three input rows, summed in one pass per
    tile, then the tile's epilogue."""
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
        if bias.shape[0] > 0:
            bias_act_run(y_tile, bias, act)


@njit_serial
def _interior_forward_3x3_pair(x0, x1, x2, x3, w_tiled, y_upper, y_lower, lo, hi, tile_pixels, channels,
                               stride_w, pad_left, dilation_w, bias, act):
    """Two adjacent output rows of a 3x3 kernel at vertical stride 1, dilation 1, in one pass, then
    each tile's epilogue.

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
        if bias.shape[0] > 0:
            bias_act_run(y_up, bias, act)
            bias_act_run(y_low, bias, act)
