"""Rows times a weight packed once, finished in registers (AVX2 with FMA): 6 pixels by 16 channels.

The same product as `matmul_avx512.py` (the same packed weight, the same sums in the same order,
the same epilogue in registers) for CPUs whose vector registers hold 8 floats and number 16: there
the 8 x 32 tile would need 32 registers. Here a block of 6 output rows by one 16-channel sliver is
summed in 12 accumulators of 8 lanes (per k: the sliver's two 8-lane halves, six broadcast inputs,
twelve FMAs: two vectors of FMAs a cycle need 6 cycles, the 8 loads fewer), which with the two
halves and a broadcast input is 15 of the 16 registers; a sliver's last channels when 8 or fewer
in one half (6 accumulators). A block of 1-3 rows (a layer's last) sums only those. A product of
one row (a classifier at batch 1, bound by reading its weight) takes four slivers at once
(`_row_four`): four streams of the weight in flight rather than one, and eight independent sums
rather than two chains of multiply-adds waiting on each other.

Fused inference ran OpenBLAS's SGEMM plus an epilogue pass on such CPUs before (whole models
against it: `benchmarks/register_tile.py`, figures in the README). Each output is one sum in k
order whatever the tile, so results do not depend on the batch size or the thread count (SGEMM's
depended on the batch, in the last bits).
"""
import numpy as np

from npmobilenet.config import njit_inline, njit_serial
from npmobilenet.ops.matmul_avx512 import finish
from npmobilenet.ops.vector16 import LANES, broadcast_like, fma, load_like, load_part_like, splat8, store_part

ROWS = 6                      # output rows of the register tile
HALF_ROWS = ROWS // 2         # a block's last rows, when this few, are summed in half the registers
HALF = LANES // 2             # a 16-channel sliver is two 8-lane vectors


@njit_inline
def _block_two(x, r, seg, segs, gap, w, s, bias, act, residual, y, q, rows, c, count):
    """The 6 x (8 + 8) register tile: output rows at y.flat[q[i]] (i < rows <= 6), channels c..c+count
    (8 < count <= 16) of sliver s, its halves in 8-lane vectors. Input row i is `segs` runs of `seg`
    numbers from x.flat[r[i]], `gap` apart (`matmul_avx512._block_pair`), summed in order: k = g*seg + j."""
    r0, r1, r2, r3, r4, r5 = r
    w0 = s * seg * segs * LANES
    z = splat8(np.float32(0))
    a0 = a1 = a2 = a3 = a4 = a5 = z
    b0 = b1 = b2 = b3 = b4 = b5 = z
    full = rows > HALF_ROWS
    for g in range(segs):
        for j in range(seg):
            k, o = g * seg + j, g * gap + j
            u, v = load_like(z, w, w0 + k * LANES), load_like(z, w, w0 + k * LANES + HALF)
            x0 = broadcast_like(z, x, r0 + o)
            a0, b0 = fma(x0, u, a0), fma(x0, v, b0)
            x1 = broadcast_like(z, x, r1 + o)
            a1, b1 = fma(x1, u, a1), fma(x1, v, b1)
            x2 = broadcast_like(z, x, r2 + o)
            a2, b2 = fma(x2, u, a2), fma(x2, v, b2)
            if full:
                x3 = broadcast_like(z, x, r3 + o)
                a3, b3 = fma(x3, u, a3), fma(x3, v, b3)
                x4 = broadcast_like(z, x, r4 + o)
                a4, b4 = fma(x4, u, a4), fma(x4, v, b4)
                x5 = broadcast_like(z, x, r5 + o)
                a5, b5 = fma(x5, u, a5), fma(x5, v, b5)
    ba, bb = load_like(z, bias, c), load_part_like(z, bias, c + HALF, count - HALF)
    for i, (a, b) in enumerate(((a0, b0), (a1, b1), (a2, b2), (a3, b3), (a4, b4), (a5, b5))):
        if i < rows:
            at = q[i] + c
            store_part(y, at, finish(a, ba, act, residual, at, HALF), HALF)
            store_part(y, at + HALF, finish(b, bb, act, residual, at + HALF, count - HALF), count - HALF)


@njit_inline
def _block_one(x, r, seg, segs, gap, w, s, bias, act, residual, y, q, rows, c, count):
    """The same for a sliver's first `count` <= 8 channels: one 8-lane vector per row."""
    r0, r1, r2, r3, r4, r5 = r
    w0 = s * seg * segs * LANES
    z = splat8(np.float32(0))
    a0 = a1 = a2 = a3 = a4 = a5 = z
    full = rows > HALF_ROWS
    for g in range(segs):
        for j in range(seg):
            k, o = g * seg + j, g * gap + j
            u = load_like(z, w, w0 + k * LANES)
            a0 = fma(broadcast_like(z, x, r0 + o), u, a0)
            a1 = fma(broadcast_like(z, x, r1 + o), u, a1)
            a2 = fma(broadcast_like(z, x, r2 + o), u, a2)
            if full:
                a3 = fma(broadcast_like(z, x, r3 + o), u, a3)
                a4 = fma(broadcast_like(z, x, r4 + o), u, a4)
                a5 = fma(broadcast_like(z, x, r5 + o), u, a5)
    ba = load_part_like(z, bias, c, count)
    for i, a in enumerate((a0, a1, a2, a3, a4, a5)):
        if i < rows:
            at = q[i] + c
            store_part(y, at, finish(a, ba, act, residual, at, count), count)


@njit_inline
def _row_four(x, r, seg, segs, gap, w, s, bias, act, residual, y, q, c):
    """One output row (at y.flat[q]) by the four whole slivers s..s+3 (channels c..c+63): eight
    8-lane sums, each the same sum in k order as `_block_two`'s (so the same bits): four streams
    of the weight in flight where one sliver at a time had one (the README has the layers' times)."""
    length = seg * segs * LANES                     # one sliver's numbers
    w0 = s * length
    z = splat8(np.float32(0))
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = z
    for g in range(segs):
        for j in range(seg):
            k, o = g * seg + j, g * gap + j
            xk = broadcast_like(z, x, r + o)
            at = w0 + k * LANES
            a0, a1 = fma(xk, load_like(z, w, at), a0), fma(xk, load_like(z, w, at + HALF), a1)
            at += length
            a2, a3 = fma(xk, load_like(z, w, at), a2), fma(xk, load_like(z, w, at + HALF), a3)
            at += length
            a4, a5 = fma(xk, load_like(z, w, at), a4), fma(xk, load_like(z, w, at + HALF), a5)
            at += length
            a6, a7 = fma(xk, load_like(z, w, at), a6), fma(xk, load_like(z, w, at + HALF), a7)
    for i, (a, b) in enumerate(((a0, a1), (a2, a3), (a4, a5), (a6, a7))):     # as `_block_two` finishes a sliver
        at, cb = q + c + i * LANES, c + i * LANES
        ba, bb = load_like(z, bias, cb), load_part_like(z, bias, cb + HALF, HALF)
        store_part(y, at, finish(a, ba, act, residual, at, HALF), HALF)
        store_part(y, at + HALF, finish(b, bb, act, residual, at + HALF, HALF), HALF)


@njit_inline
def _rows_at(x0, xstep, y0, ystep, i, last):
    """Row group i's 6 input rows (past the last, repeats of it) and output rows."""
    r = (x0 + i * xstep, x0 + min(i + 1, last) * xstep, x0 + min(i + 2, last) * xstep,
         x0 + min(i + 3, last) * xstep, x0 + min(i + 4, last) * xstep, x0 + min(i + 5, last) * xstep)
    q0 = y0 + i * ystep
    return r, (q0, q0 + ystep, q0 + 2 * ystep, q0 + 3 * ystep, q0 + 4 * ystep, q0 + 5 * ystep)


@njit_serial
def product_span(x, x0, xstep, seg, segs, gap, w, bias, act, residual, y, y0, ystep, rows, m0, m1):
    """`matmul_avx512.product_span` (the same arguments and results) in blocks of 6 rows by 16
    channels: channels m0..m1 (m0 a multiple of 16) of `rows` output rows at y.flat[y0 + i*ystep],
    act(x_i @ W + bias) or + bias + residual; a block's rows past the last repeat it. The whole
    slivers in one loop nest (one block body, its channel count the constant 16), the last partial
    sliver in another: with both kinds of block in one nest, whole models at one thread took
    0.834-0.940x the OpenBLAS tiles' time, split 0.805-0.827x (`benchmarks/register_tile.py`, two
    runs: 1.04-1.15x per model; the README has them)."""
    last = rows - 1
    whole = m0 + (m1 - m0) // LANES * LANES
    first = m0                      # the first sliver the 6-row blocks take
    if rows == 1:
        first = m0 + (whole - m0) // (4 * LANES) * (4 * LANES)
        for c in range(m0, first, 4 * LANES):
            _row_four(x, x0, seg, segs, gap, w, c // LANES, bias, act, residual, y, y0, c)
    for i in range(0, rows, ROWS):
        r, q = _rows_at(x0, xstep, y0, ystep, i, last)
        group = min(ROWS, rows - i)
        for c in range(first, whole, LANES):
            _block_two(x, r, seg, segs, gap, w, c // LANES, bias, act, residual, y, q, group, c, LANES)
    count = m1 - whole
    if count > 0:
        for i in range(0, rows, ROWS):
            r, q = _rows_at(x0, xstep, y0, ystep, i, last)
            group = min(ROWS, rows - i)
            if count > HALF:
                _block_two(x, r, seg, segs, gap, w, whole // LANES, bias, act, residual, y, q, group, whole, count)
            else:
                _block_one(x, r, seg, segs, gap, w, whole // LANES, bias, act, residual, y, q, group, whole, count)
