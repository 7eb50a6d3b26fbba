"""Pointwise (1x1) convolution: a matrix product over the channels of every pixel.

MobileNet V1 paper, Sec. 3.1: the 1x1 convolution that mixes the depthwise outputs, cost
N * H * W * Cin * Cout multiply-accumulates (Eq. (4), second term). In NHWC the `N*H*W` pixels
are the rows of an `(N*H*W, Cin)` matrix, so

    y  = x  @ w        (N*H*W, Cin) @ (Cin, Cout)
    dx = dy @ w.T      (N*H*W, Cout) @ (Cout, Cin)
    dw = x.T @ dy      (Cin, N*H*W) @ (N*H*W, Cout)

All three are BLAS (`np.matmul`, OpenBLAS in the NumPy wheels): a tuned GEMM beats any loop
written here, and V2/V3 spend most of their MACs in these products. Reshaping a C-contiguous
NHWC array to `(N*H*W, C)` copies nothing. BLAS threads are OpenBLAS's own (OPENBLAS_NUM_THREADS),
not Numba's.
"""
import numpy as np

from npmobilenet.ops.geometry import check_array, check_dy, check_same_dtype


def _check_inputs(x, w):
    x = check_array(x, "x", 4, "(N, H, W, Cin)")
    w = check_array(w, "w", 2, "(Cin, Cout)")
    check_same_dtype(x=x, w=w)
    if w.shape[0] != x.shape[3]:
        raise ValueError(
            f"pointwise w must have Cin = x's channel count: w has shape {w.shape} (Cin = {w.shape[0]}), "
            f"x has shape {x.shape} (C = {x.shape[3]})"
        )
    return x, w


def pointwise_conv2d(x, w):
    """1x1 convolution (BLAS). x `(N, H, W, Cin)`, w `(Cin, Cout)` -> y `(N, H, W, Cout)`."""
    x, w = _check_inputs(x, w)
    n, h, width, cin = x.shape
    y = np.matmul(x.reshape(n * h * width, cin), w)
    return y.reshape(n, h, width, w.shape[1])


def pointwise_conv2d_backward(dy, x, w):
    """Gradients of `pointwise_conv2d` (BLAS): dy `(N, H, W, Cout)` -> dx `(N, H, W, Cin)`, dw `(Cin, Cout)`."""
    x, w = _check_inputs(x, w)
    n, h, width, cin = x.shape
    cout = w.shape[1]
    dy = check_dy(dy, (n, h, width, cout), x.dtype)
    dy_matrix = dy.reshape(n * h * width, cout)
    dx = np.matmul(dy_matrix, w.T).reshape(n, h, width, cin)
    dw = np.matmul(x.reshape(n * h * width, cin).T, dy_matrix)
    return dx, dw
