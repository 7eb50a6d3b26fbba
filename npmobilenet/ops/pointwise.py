"""Pointwise (1x1) convolution: a matrix product over the channels of every pixel.

MobileNet V1 paper, Sec. 3.1: the 1x1 convolution that mixes the depthwise outputs, cost
N * H * W * Cin * Cout multiply-accumulates (Eq. (4), second term). In NHWC the `N*H*W` pixels
are the rows of an `(N*H*W, Cin)` matrix, so

    y  = x  @ w        (N*H*W, Cin) @ (Cin, Cout)
    dx = dy @ w.T      (N*H*W, Cout) @ (Cout, Cin)
    dw = x.T @ dy      (Cin, N*H*W) @ (N*H*W, Cout)

All three are BLAS: a tuned GEMM beats any loop written here, and V2/V3 spend most of their MACs
in these products. Reshaping a C-contiguous NHWC array to `(N*H*W, C)` copies nothing.

The forward tile (`pointwise_tile`), what fused inference and the exact int8 path run: a block of
rows by columns of y multiplied by OpenBLAS's GEMM called from inside Numba (`ops/blas.py`), then
finished while in cache (bias and activation, or bias and the residual: `ops/epilogue.py`), its
input rows first scaled by squeeze-and-excitation's gate when the layer has one. Where the CPU has
AVX-512 or AVX2, fused inference runs `pointwise_tile_packed` instead: the same tiles on a weight
packed once, summed and finished in registers (`ops/register_tile.py`).

Training keeps its own technique, one `np.matmul` over the whole batch (BLAS threads are
OpenBLAS's own, OPENBLAS_NUM_THREADS): it has no epilogue to fuse, float64 would need the tiles'
DGEMM too, and the tiles cost it speed (benchmarks/techniques.py pointwise at the training
benchmark's shapes, MobileNetV2 0.35 at 32x32, batch 64, all pointwise layers, one thread:
1.96-2.07 ms np.matmul against 2.08-2.29 ms in tiles, two runs).
"""
import numpy as np
from numba import prange

from npmobilenet.config import njit_serial, serial_and_parallel
from npmobilenet.ops.blas import matmul
from npmobilenet.ops.epilogue import finish, scale_by_gate
from npmobilenet.ops.geometry import check_array, check_dy, check_same_dtype
from npmobilenet.ops.register_tile import product_rows


# -- the forward tile: x (P, K), w (K, M) -> y (P, M), with its epilogue ------------------------------
@njit_serial
def gate_rows_tile(x, gate, rows_per_image, tile_rows, t):
    """Tile t of the gate pre-pass: rows t*tile_rows.. of x (P, K) scaled by their image's SE gate (N, K)."""
    scale_by_gate(x, t * tile_rows, min(x.shape[0], (t + 1) * tile_rows), gate, rows_per_image)


@njit_serial
def _gated_tile(x, gate, rows_per_image, tile_rows, tile_cols, cols, t):
    """(p0, p1, m0, m1): tile t's rows and columns (row-major over row tiles x column tiles of an
    output of `cols` columns); with one column tile, its input rows first scaled by the gate."""
    col_tiles = (cols + tile_cols - 1) // tile_cols
    i = t // col_tiles
    p0, m0 = i * tile_rows, (t - i * col_tiles) * tile_cols
    p1, m1 = min(x.shape[0], p0 + tile_rows), min(cols, m0 + tile_cols)
    if gate.shape[0] > 0 and col_tiles == 1:
        scale_by_gate(x, p0, p1, gate, rows_per_image)
    return p0, p1, m0, m1


@njit_serial
def pointwise_tile(x, w, bias, act, residual, gate, rows_per_image, tile_rows, tile_cols, gemm, y, t):
    """Tile t (row-major over row tiles x column tiles) of y = act(x' @ w + bias) [+ residual].

    x: (P, K), w: (K, M), bias: (M,), residual: (P, M) or empty, gate: (N, K) or empty (x' = x
    scaled in place by the gate of each row's image; `rows_per_image` = H*W), y: (P, M); `gemm`:
    the address of the GEMM of x's dtype (`ops/blas.py`). With one column tile, the tile
    first gates its own input rows (no other tile reads them); with several, the caller runs
    `gate_rows_tile` over all rows first.
    """
    p0, p1, m0, m1 = _gated_tile(x, gate, rows_per_image, tile_rows, tile_cols, y.shape[1], t)
    matmul(gemm, x, p0, p1, w, m0, m1, y)
    finish(y, p0, p1, m0, m1, bias, act, residual)


def _pointwise_forward(x, w, bias, act, residual, gate, rows_per_image, tile_rows, tile_cols, gemm, y):
    # x: (P, K) -> y: (P, M): every tile of `pointwise_tile` (disjoint blocks of y); the gate (N, K)
    # scales x in place (x is dead after: the fused model's buffers).
    rows, cols = x.shape[0], w.shape[1]
    row_tiles = (rows + tile_rows - 1) // tile_rows
    col_tiles = (cols + tile_cols - 1) // tile_cols
    if gate.shape[0] > 0 and col_tiles > 1:
        # several tiles read each input row: gate all rows first (rows split across threads)
        for t in prange(row_tiles):
            gate_rows_tile(x, gate, rows_per_image, tile_rows, t)
    for t in prange(row_tiles * col_tiles):
        pointwise_tile(x, w, bias, act, residual, gate, rows_per_image, tile_rows, tile_cols, gemm, y, t)


_pointwise_forward_serial, _pointwise_forward_parallel = serial_and_parallel(_pointwise_forward)
POINTWISE_FORWARD = (_pointwise_forward_serial, _pointwise_forward_parallel)


@njit_serial
def pointwise_tile_packed(x, w, bias, act, residual, gate, rows_per_image, tile_rows, tile_cols, y, t, span):
    """`pointwise_tile` on a packed weight (`register_tile.packed_weight`, flattened), finished in
    registers (`register_tile.product_rows`); no GEMM address, but `product_span`'s (`span`,
    `register_tile.span_address()`). tile_cols is a multiple of 16."""
    p0, p1, m0, m1 = _gated_tile(x, gate, rows_per_image, tile_rows, tile_cols, y.shape[1], t)
    product_rows(x, p0, w, bias, act, residual, y, p0, p1 - p0, m0, m1, span)


def _pointwise_packed_forward(x, w, bias, act, residual, gate, rows_per_image, tile_rows, tile_cols, y, span):
    # every tile of `pointwise_tile_packed`, as `_pointwise_forward` runs `pointwise_tile`'s
    rows, cols = x.shape[0], y.shape[1]
    row_tiles = (rows + tile_rows - 1) // tile_rows
    col_tiles = (cols + tile_cols - 1) // tile_cols
    if gate.shape[0] > 0 and col_tiles > 1:
        for t in prange(row_tiles):
            gate_rows_tile(x, gate, rows_per_image, tile_rows, t)
    for t in prange(row_tiles * col_tiles):
        pointwise_tile_packed(x, w, bias, act, residual, gate, rows_per_image, tile_rows, tile_cols, y, t, span)


POINTWISE_PACKED_FORWARD = serial_and_parallel(_pointwise_packed_forward)


# -- training: the whole batch by np.matmul ------------------------------------------------------------
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
