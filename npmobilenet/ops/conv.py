"""Standard (dense) convolution by im2col and a BLAS matrix product.

x `(N, H, W, Cin)`, w `(KH, KW, Cin, Cout)` -> y `(N, Ho, Wo, Cout)`:

    y[n, oh, ow, :] = sum_{i, j} x[n, oh*sh - pt + i*rh, ow*sw - pl + j*rw, :] @ w[i, j]

Cost: N * Ho * Wo * KH * KW * Cin * Cout MACs (MobileNet V1 paper, Eq. (1)). In MobileNets the
standard convolution is only the stem (3x3, stride 2, Cin = 3), where a direct loop would run
its innermost loop over 3 input channels; im2col turns it into one GEMM instead:

    cols (N*Ho*Wo, KH*KW*Cin)   row = one output pixel's receptive field, in (i, j, c) order
    y    = cols @ w.reshape(KH*KW*Cin, Cout)                    BLAS
    dw   = cols.T @ dy                                          BLAS
    dx   = col2im(dy @ w.reshape(KH*KW*Cin, Cout).T)            BLAS, then a Numba scatter-add

Numba does the gathers: `_im2col` (prange over batch x output rows; each writes its own rows of
cols) and `_col2im` (prange over the batch: receptive fields of one image overlap, those of two
images never do, so each iteration adds into its own image only). BLAS does every multiply.
"""
import numpy as np
from numba import prange

from npmobilenet.config import choose_kernel, serial_and_parallel
from npmobilenet.ops.geometry import (
    check_array,
    check_dy,
    check_same_dtype,
    conv_geometry,
)


def _im2col(x, cols, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w):
    # x: (N, H, W, Cin) -> cols: (N, Ho, Wo, KH*KW*Cin); taps in the padding give zeros.
    batch, height, width, channels = x.shape
    out_height, out_width = cols.shape[1], cols.shape[2]
    x_rows = x.reshape(batch, height, width * channels)
    run = kernel_w * channels  # one kernel row of a receptive field
    for row in prange(batch * out_height):
        n = row // out_height
        oh = row - n * out_height
        fields = cols[n, oh]
        for ow in range(out_width):
            left = ow * stride_w - pad_left
            inside = left >= 0 and left + (kernel_w - 1) * dilation_w < width
            field = fields[ow]
            for i in range(kernel_h):
                ih = oh * stride_h - pad_top + i * dilation_h
                dst = field[i * run:(i + 1) * run]
                if ih < 0 or ih >= height:
                    dst[:] = 0
                elif inside and dilation_w == 1:
                    # the whole kernel row is one contiguous run of x
                    src = x_rows[n, ih, left * channels:left * channels + run]
                    for k in range(run):
                        dst[k] = src[k]
                else:
                    for j in range(kernel_w):
                        iw = left + j * dilation_w
                        tap = dst[j * channels:(j + 1) * channels]
                        if iw < 0 or iw >= width:
                            tap[:] = 0
                        else:
                            x_pixel = x[n, ih, iw]
                            for c in range(channels):
                                tap[c] = x_pixel[c]


_im2col_serial, _im2col_parallel = serial_and_parallel(_im2col)


def _col2im(dcols, dx, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w):
    # dcols: (N, Ho, Wo, KH*KW*Cin) -> dx: (N, H, W, Cin), zero on entry; the adjoint of _im2col.
    batch, height, width, channels = dx.shape
    out_height, out_width = dcols.shape[1], dcols.shape[2]
    for n in prange(batch):
        for oh in range(out_height):
            for ow in range(out_width):
                field = dcols[n, oh, ow]
                for i in range(kernel_h):
                    ih = oh * stride_h - pad_top + i * dilation_h
                    if ih < 0 or ih >= height:
                        continue
                    for j in range(kernel_w):
                        iw = ow * stride_w - pad_left + j * dilation_w
                        if iw < 0 or iw >= width:
                            continue
                        tap = field[(i * kernel_w + j) * channels:(i * kernel_w + j + 1) * channels]
                        dx_pixel = dx[n, ih, iw]
                        for c in range(channels):
                            dx_pixel[c] += tap[c]


_col2im_serial, _col2im_parallel = serial_and_parallel(_col2im)


def _check_inputs(x, w):
    x = check_array(x, "x", 4, "(N, H, W, Cin)")
    w = check_array(w, "w", 4, "(KH, KW, Cin, Cout)")
    check_same_dtype(x=x, w=w)
    if w.shape[2] != x.shape[3]:
        raise ValueError(
            f"w must have Cin = x's channel count: w has shape {w.shape} (Cin = {w.shape[2]}), "
            f"x has shape {x.shape} (C = {x.shape[3]})"
        )
    return x, w


def _columns(x, kernel_h, kernel_w, out_h, out_w, strides, pads, dilations):
    """im2col of x: `(N*Ho*Wo, KH*KW*Cin)` (Numba gather)."""
    cols = np.empty((x.shape[0], out_h, out_w, kernel_h * kernel_w * x.shape[3]), x.dtype)
    kernel = choose_kernel(_im2col_serial, _im2col_parallel, cols.size)
    kernel(x, cols, kernel_h, kernel_w, strides[0], strides[1], pads[0], pads[2], dilations[0], dilations[1])
    return cols.reshape(-1, cols.shape[3])


def conv2d(x, w, stride=1, padding=0, dilation=1):
    """Standard convolution (im2col in Numba, GEMM in BLAS). x `(N, H, W, Cin)`, w `(KH, KW, Cin, Cout)`
    -> y `(N, Ho, Wo, Cout)`.

    `stride`, `dilation`: int or `(vertical, horizontal)`; `padding`: int, `(ph, pw)` or
    `((top, bottom), (left, right))`. Same dtype out as in (float32 or float64).
    """
    x, w = _check_inputs(x, w)
    kernel_h, kernel_w, cin, cout = w.shape
    out_h, out_w, strides, pads, dilations = conv_geometry(x.shape, kernel_h, kernel_w, stride, padding, dilation)
    cols = _columns(x, kernel_h, kernel_w, out_h, out_w, strides, pads, dilations)
    y = np.matmul(cols, w.reshape(kernel_h * kernel_w * cin, cout))
    return y.reshape(x.shape[0], out_h, out_w, cout)


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1):
    """Gradients of `conv2d`: dy `(N, Ho, Wo, Cout)` -> dx `(N, H, W, Cin)`, dw `(KH, KW, Cin, Cout)`.

    dw = cols.T @ dy and dcols = dy @ w.T are BLAS; folding dcols back onto dx (col2im) is Numba.
    """
    x, w = _check_inputs(x, w)
    kernel_h, kernel_w, cin, cout = w.shape
    out_h, out_w, strides, pads, dilations = conv_geometry(x.shape, kernel_h, kernel_w, stride, padding, dilation)
    dy = check_dy(dy, (x.shape[0], out_h, out_w, cout), x.dtype)
    dy_matrix = dy.reshape(-1, cout)
    w_matrix = w.reshape(kernel_h * kernel_w * cin, cout)

    cols = _columns(x, kernel_h, kernel_w, out_h, out_w, strides, pads, dilations)
    dw = np.matmul(cols.T, dy_matrix).reshape(w.shape)
    del cols
    dcols = np.matmul(dy_matrix, w_matrix.T).reshape(x.shape[0], out_h, out_w, kernel_h * kernel_w * cin)
    dx = np.zeros_like(x)
    # parallel over images only: one image's receptive fields overlap
    kernel = choose_kernel(_col2im_serial, _col2im_parallel, dcols.size if x.shape[0] > 1 else 0)
    kernel(dcols, dx, kernel_h, kernel_w, strides[0], strides[1], pads[0], pads[2], dilations[0], dilations[1])
    return dx, dw
