"""Bilinear resizing of NHWC maps: PyTorch's `interpolate(mode="bilinear", align_corners=False)`.

An (H, W) -> (Ho, Wo) resize reads output row oh at input position (the half-pixel rule, clamped
at 0; ONNX's "pytorch_half_pixel")

    h = max((oh + 0.5) H / Ho - 0.5, 0),    h0 = min(floor(h), H - 1),  h1 = min(h0 + 1, H - 1),
    lh = h - h0                                                         (columns alike: w0, w1, lw)

    y[n, oh, ow, c] = (1 - lh) ((1 - lw) x[n, h0, w0, c] + lw x[n, h0, w1, c])
                    +      lh  ((1 - lw) x[n, h1, w0, c] + lw x[n, h1, w1, c])

y is linear in x, so the backward pass is the transpose: each dy[n, oh, ow, c] is scattered back
onto the same four input pixels with the same four weights. LR-ASPP's head upsamples with it
(V3 paper, sec. 6.3), twice: the high-level features to the low tap's size, the logits to the
image's. No MACs are counted for it (the summary counts convolutions and linear layers only).

Kernels: the taps (h0, h1, lh per output row; w0, w1, lw per column) are computed once per call,
in the map's dtype (as PyTorch does);
the forward pass runs over output rows (`prange`: each writes its own row); the backward pass
scatters, so it runs over images (`prange`: each image's dx is its own).
"""
import numpy as np
from numba import prange

from npmobilenet.config import choose_kernel, njit_serial_strict, serial_and_parallel
from npmobilenet.ops.geometry import as_pair, check_array


# -- forward: x (N, H, W, C) -> y (N, Ho, Wo, C) ------------------------------------------------------
@njit_serial_strict
def _resize_row(x, top, bottom, weight_top, weight_bottom, left, right, weight_left, weight_right, y, n, oh):
    # output row oh of image n; one function for the serial and the parallel kernel, without
    # fast-math, so both compute every number alike (the same bits on any thread count)
    a, b = weight_top[oh], weight_bottom[oh]
    x_top, x_bottom, y_row = x[n, top[oh]], x[n, bottom[oh]], y[n, oh]
    for ow in range(y.shape[2]):
        l, r = left[ow], right[ow]
        p, q = weight_left[ow], weight_right[ow]
        for c in range(y.shape[3]):
            y_row[ow, c] = a * (p * x_top[l, c] + q * x_top[r, c]) + b * (p * x_bottom[l, c] + q * x_bottom[r, c])


def _resize_forward(x, top, bottom, weight_top, weight_bottom, left, right, weight_left, weight_right, y):
    images, out_h = y.shape[0], y.shape[1]
    for row in prange(images * out_h):
        _resize_row(x, top, bottom, weight_top, weight_bottom, left, right, weight_left, weight_right, y,
                    row // out_h, row % out_h)


_resize_forward_serial, _resize_forward_parallel = serial_and_parallel(_resize_forward)


# -- backward: dy (N, Ho, Wo, C) -> dx (N, H, W, C), the transpose of the forward pass -----------------
@njit_serial_strict
def _resize_image_backward(dy, top, bottom, weight_top, weight_bottom, left, right, weight_left, weight_right, dx, n):
    # image n's dx: every dy scattered onto its four input pixels
    dx[n] = 0.0
    for oh in range(dy.shape[1]):
        a, b = weight_top[oh], weight_bottom[oh]
        dx_top, dx_bottom, dy_row = dx[n, top[oh]], dx[n, bottom[oh]], dy[n, oh]
        for ow in range(dy.shape[2]):
            l, r = left[ow], right[ow]
            p, q = weight_left[ow], weight_right[ow]
            for c in range(dy.shape[3]):
                g = dy_row[ow, c]
                dx_top[l, c] += a * p * g
                dx_top[r, c] += a * q * g
                dx_bottom[l, c] += b * p * g
                dx_bottom[r, c] += b * q * g


def _resize_backward(dy, top, bottom, weight_top, weight_bottom, left, right, weight_left, weight_right, dx):
    for n in prange(dy.shape[0]):
        _resize_image_backward(dy, top, bottom, weight_top, weight_bottom, left, right, weight_left, weight_right,
                               dx, n)


_resize_backward_serial, _resize_backward_parallel = serial_and_parallel(_resize_backward)


# -- public functions ---------------------------------------------------------------------------------
def _taps(size, out_size, dtype):
    """Along one axis of `size` pixels resized to `out_size`: per output position, the input pixels
    below and above its source position and their weights (1 - l, l). Computed in the map's
    dtype, as PyTorch computes them (float32 positions for a float32 map: at 33 -> 65 pixels,
    float64 positions moved the result by 1.4e-5 from PyTorch's, float32 ones by 2e-7)."""
    half = dtype.type(0.5)
    scale = dtype.type(size) / dtype.type(out_size)
    position = np.maximum(scale * (np.arange(out_size, dtype=dtype) + half) - half, dtype.type(0))
    lower = np.minimum(position.astype(np.int64), size - 1)        # a cast is floor: position >= 0
    upper = np.minimum(lower + 1, size - 1)
    weight_upper = (position - lower.astype(dtype)).astype(dtype)
    return lower, upper, (dtype.type(1) - weight_upper).astype(dtype), weight_upper


def _all_taps(in_size, out_size, dtype):
    return _taps(in_size[0], out_size[0], dtype) + _taps(in_size[1], out_size[1], dtype)


def bilinear_resize(x, size):
    """x `(N, H, W, C)` float32/float64 resized bilinearly to `size` `(Ho, Wo)` (an int: square):
    y `(N, Ho, Wo, C)` of x's dtype (PyTorch's align_corners=False; see the module docstring)."""
    x = check_array(x, "x", 4, "(N, H, W, C)")
    out_size = as_pair(size, "size")
    y = np.empty((x.shape[0],) + out_size + (x.shape[3],), x.dtype)
    kernel = choose_kernel(_resize_forward_serial, _resize_forward_parallel, 4 * y.size)
    kernel(x, *_all_taps(x.shape[1:3], out_size, x.dtype), y)
    return y


def bilinear_resize_backward(dy, input_size):
    """Gradient of `bilinear_resize` with respect to its input: dy `(N, Ho, Wo, C)` and the input's
    `(H, W)` -> dx `(N, H, W, C)` of dy's dtype."""
    dy = check_array(dy, "dy", 4, "(N, Ho, Wo, C)")
    in_size = as_pair(input_size, "input_size")
    dx = np.empty((dy.shape[0],) + in_size + (dy.shape[3],), dy.dtype)
    kernel = choose_kernel(_resize_backward_serial, _resize_backward_parallel, 4 * dy.size)
    kernel(dy, *_all_taps(in_size, dy.shape[1:3], dy.dtype), dx)
    return dx
