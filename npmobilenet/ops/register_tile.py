"""The register tile this CPU runs for fused inference's matrix products, and its packed weight.

Pointwise layers (`pointwise.pointwise_tile_packed`) and standard convolutions
(`conv_packed.conv_tile_packed`) multiply rows by a weight packed once into 16-channel slivers
(`packed_weight`) and finish each block in registers (bias, activation or residual) before its
one store. The block's shape is the CPU's: 8 rows by 32 channels in 16-lane vectors with AVX-512
(`matmul_avx512.py`), 6 rows by 16 channels in 8-lane vectors with AVX2 and FMA (`matmul_avx2.py`);
the choice is made once, when this module is imported, from the features Numba compiles for
(`config.cpu_features`). Both sum every output in k order by fused multiply-adds, so results do
not depend on the tiling, the thread count or the batch size. A CPU with neither keeps the
OpenBLAS tiles (`pointwise.pointwise_tile`, `conv.conv_tile`).
"""
import os

import numpy as np
from numba import types

from npmobilenet.config import njit_inline
from npmobilenet.ops import matmul_avx2, matmul_avx512
from npmobilenet.ops.indirect import CompiledCall
from npmobilenet.ops.vector16 import LANES, has_avx2, has_avx512

product_span = matmul_avx512.product_span if has_avx512() else matmul_avx2.product_span
ROWS = matmul_avx512.PIXELS if has_avx512() else matmul_avx2.ROWS   # rows of this CPU's block

# The tiles call `product_span` through its address (`indirect.py`), passed down as their last
# argument `span` (`span_address()`): linked into each of them (the pointwise, convolution and
# linear tiles, and the parallel loops over them) it was optimised and turned into machine code
# again in every one; by address it is compiled once.
_I, _F = types.int64, types.Array(types.float32, 1, "C")
SPAN = CompiledCall(product_span, (_F, _I, _I, _I, _I, _I, _F, _F, _I, _F, _F, _I, _I, _I, _I, _I))
call_span = SPAN.call


def span_address():
    """The address of this CPU's `product_span` (compiled, or loaded from the cache, on first use):
    the `span` argument of the tiles on packed weights."""
    return SPAN.address()


def available():
    """Whether this CPU has a register tile: AVX-512 F, or AVX2 with FMA (`vector16`)."""
    return has_avx512() or has_avx2()


def enabled():
    """Whether fused inference's pointwise layers and standard convolutions use the register tile:
    where `available()` and NPMOBILENET_NO_AVX512 is unset (or 0); the variable (named when AVX-512
    had the only tile) keeps the OpenBLAS tiles, e.g. to test them on such a machine."""
    return os.environ.get("NPMOBILENET_NO_AVX512", "0") in ("", "0") and available()


def packed_weight(w):
    """w (K, M) float32 -> (ceil(M/16), K, 16): sliver s holds columns 16s..16s+15 of every row,
    zero past M."""
    k, m = w.shape
    slivers = -(-m // LANES)
    padded = np.zeros((k, slivers * LANES), np.float32)
    padded[:, :m] = w
    return np.ascontiguousarray(padded.reshape(k, slivers, LANES).transpose(1, 0, 2))


def unpacked_weight(packed, k, m):
    """The inverse of `packed_weight` (its result or the same flattened): -> (k, m)."""
    slivers = packed.size // (k * LANES)
    return np.ascontiguousarray(packed.reshape(slivers, k, LANES).transpose(1, 0, 2).reshape(k, slivers * LANES)[:, :m])


@njit_inline
def product_rows(x, x0, w, bias, act, residual, y, y0, rows, m0, m1, span):
    """y[y0:y0+rows, m0:m1] = act(x[x0:x0+rows] @ W + bias), or + bias + residual (rows y0.. of
    residual (P, M) when it has any): x (., K), W (K, M) packed (`packed_weight`, flattened),
    bias (M,), y (., M); m0 a multiple of 16; by `product_span` at address `span`. Inlined into
    its caller (a wrapper compiled on its own cost V2's cold start some 0.6 s)."""
    k_, cols = x.shape[1], y.shape[1]
    call_span(span, (x.reshape(-1), np.int64(x0 * k_), np.int64(k_), np.int64(k_), np.int64(1), np.int64(0), w, bias,
                   np.int64(act), residual.reshape(-1), y.reshape(-1), np.int64(y0 * cols), np.int64(cols),
                   np.int64(rows), np.int64(m0), np.int64(m1)))
