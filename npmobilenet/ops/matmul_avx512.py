"""Rows times a weight packed once, finished in registers (AVX-512): 8 pixels by 32 channels.

Fused inference's pointwise tile (`pointwise.pointwise_tile`), and its standard convolutions'
(`conv.conv_tile`: gathered receptive fields), call OpenBLAS's SGEMM on a block of rows, then
finish the block in a second pass (`epilogue.finish`). SGEMM packs both operands on every call and
knows nothing of the epilogue; a MobileNet layer has a few hundred rows per tile and K of 16 to
960, so the packing and the second pass are a large part of each call. Here the weight is packed
once, when the fused model is built (`register_tile.packed_weight`: 16-channel slivers, each (K, 16),
contiguous), and each block of 8 output rows by 32 channels is summed over K in 16 vector
registers (per k: two 16-channel weight loads, eight broadcast inputs, sixteen FMAs), then
finished in the registers (+ bias, act or + residual) and stored once (`product_span`; a last
8-channel remainder in 8-lane vectors).

An input row need not be contiguous: it is `segs` runs of `seg` numbers, `gap` apart. A matrix
row is one run (`register_tile.product_rows`, for `pointwise.pointwise_tile_packed`); a receptive field of a
KHxKW convolution in NHWC is KH runs of KW*Cin numbers, one per input row, so
`conv_packed.conv_tile_packed` reads interior pixels' fields where they lie in x instead of
gathering them.

Each output is the same sum in the same order (k = 0, 1, ...) whatever the tile, the thread, or
whether its field was gathered: results are bitwise identical across thread counts, as the tiling
requires (`inference/tiling.py`). They differ from SGEMM's in the last bits (another order).
CPUs with AVX2 but not AVX-512 run `matmul_avx2.py`'s 6 x 16 tile on the same packed weight
(`register_tile.py` picks one).
"""
import numpy as np

from npmobilenet.config import njit_inline, njit_serial
from npmobilenet.ops.epilogue import HARDSWISH, RELU, RELU6
from npmobilenet.ops.vector16 import (LANES, add, broadcast, broadcast_like, fence, fma, load, load_like, load_part_like,
                                      maximum, minimum, mul, splat, splat8, splat_like, store, store_part)

PIXELS = 8  # rows of the register tile
HALF_PIXELS = PIXELS // 2   # a block's last rows, when this few, are summed in half the registers
HALF = LANES // 2


@njit_serial
def finish(v, b, act, residual, at, count):
    """act(v + b), or v + b + residual.flat[at:at+count] when there is a residual (the linear
    bottleneck: no activation after the add), as `epilogue.finish` computes it."""
    if residual.shape[0] > 0:
        return add(fence(add(v, b)), load_part_like(v, residual, at, count))
    return activate(fence(add(v, b)), act)


@njit_inline
def activate(v, act):
    """act(v) per lane for an `ops.epilogue` code (IDENTITY: v), as `epilogue.bias_act` computes it."""
    zero = splat_like(v, np.float32(0))
    if act == RELU:
        v = maximum(v, zero)
    elif act == RELU6:
        v = minimum(maximum(v, zero), splat_like(v, np.float32(6)))
    elif act == HARDSWISH:    # x relu6(x + 3) / 6 (V3, Eq. 2), as (x / 6) relu6(x + 3) (fenced: one rounding everywhere)
        v = fence(v)
        v = mul(fence(mul(v, splat_like(v, np.float32(1 / 6)))),
                minimum(maximum(add(v, splat_like(v, np.float32(3))), zero), splat_like(v, np.float32(6))))
    return v


@njit_inline
def _block_pair(x, r, seg, segs, gap, w, s, bias, act, residual, y, q, rows, c, zb, count):
    """The 8 x (16 + 16) register tile: output rows at y.flat[q[i]] (i < rows <= 8), channels
    c..c+16+count: slivers s and s+1, the second's first `count` channels, in vectors of zb's type
    (16 lanes, or 8 when count <= 8: half the work where 512-bit instructions run as two halves).
    Input row i is `segs` runs of `seg` numbers from x.flat[r[i]], `gap` apart (a matrix row: one
    run; a receptive field: one run per kernel row), summed in order: k = g*seg + j. A block of
    1-4 rows (a layer's last, e.g. 49 = 6*8 + 1 at 7x7) sums only those four: half the FMAs
    (7x7 and 14x14 layers took 0.93-0.98x the time; `full` is the same for the whole loop, and
    LLVM makes two loops of it, as fast as two written out). Inlined into `product_span`, as is
    `_block_one` (`config.njit_inline`)."""
    r0, r1, r2, r3, r4, r5, r6, r7 = r
    k_ = seg * segs
    w0, w1 = s * k_ * LANES, (s + 1) * k_ * LANES
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = splat(np.float32(0))
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = zb
    full = rows > HALF_PIXELS     # else a remainder of 1-4 rows: only those summed, half the FMAs
    for g in range(segs):
        for j in range(seg):
            k, o = g * seg + j, g * gap + j
            u, v = load(w, w0 + k * LANES), load_like(zb, w, w1 + k * LANES)
            x0, z0 = broadcast(x, r0 + o), broadcast_like(zb, x, r0 + o)
            a0, b0 = fma(x0, u, a0), fma(z0, v, b0)
            x1, z1 = broadcast(x, r1 + o), broadcast_like(zb, x, r1 + o)
            a1, b1 = fma(x1, u, a1), fma(z1, v, b1)
            x2, z2 = broadcast(x, r2 + o), broadcast_like(zb, x, r2 + o)
            a2, b2 = fma(x2, u, a2), fma(z2, v, b2)
            x3, z3 = broadcast(x, r3 + o), broadcast_like(zb, x, r3 + o)
            a3, b3 = fma(x3, u, a3), fma(z3, v, b3)
            if full:
                x4, z4 = broadcast(x, r4 + o), broadcast_like(zb, x, r4 + o)
                a4, b4 = fma(x4, u, a4), fma(z4, v, b4)
                x5, z5 = broadcast(x, r5 + o), broadcast_like(zb, x, r5 + o)
                a5, b5 = fma(x5, u, a5), fma(z5, v, b5)
                x6, z6 = broadcast(x, r6 + o), broadcast_like(zb, x, r6 + o)
                a6, b6 = fma(x6, u, a6), fma(z6, v, b6)
                x7, z7 = broadcast(x, r7 + o), broadcast_like(zb, x, r7 + o)
                a7, b7 = fma(x7, u, a7), fma(z7, v, b7)
    ba, bb = load(bias, c), load_part_like(zb, bias, c + LANES, count)
    for i, (a, b) in enumerate(((a0, b0), (a1, b1), (a2, b2), (a3, b3), (a4, b4), (a5, b5), (a6, b6), (a7, b7))):
        if i < rows:
            at = q[i] + c
            store(y, at, finish(a, ba, act, residual, at, LANES))
            store_part(y, at + LANES, finish(b, bb, act, residual, at + LANES, count), count)


@njit_inline
def _block_one(x, r, seg, segs, gap, w, s, bias, act, residual, y, q, rows, c, z, count):
    """The same for one sliver, its first `count` channels, in vectors of z's type. (Spelled out
    like `_block_pair`, not built from a shared 8-row step and store helper: that version, the
    same sums, ran layers of K <= 32 at 0.80-0.94x this one's speed.)"""
    r0, r1, r2, r3, r4, r5, r6, r7 = r
    k_ = seg * segs
    w0 = s * k_ * LANES
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = z
    full = rows > HALF_PIXELS
    for g in range(segs):
        for j in range(seg):
            k, o = g * seg + j, g * gap + j
            u = load_like(z, w, w0 + k * LANES)
            a0 = fma(broadcast_like(z, x, r0 + o), u, a0)
            a1 = fma(broadcast_like(z, x, r1 + o), u, a1)
            a2 = fma(broadcast_like(z, x, r2 + o), u, a2)
            a3 = fma(broadcast_like(z, x, r3 + o), u, a3)
            if full:
                a4 = fma(broadcast_like(z, x, r4 + o), u, a4)
                a5 = fma(broadcast_like(z, x, r5 + o), u, a5)
                a6 = fma(broadcast_like(z, x, r6 + o), u, a6)
                a7 = fma(broadcast_like(z, x, r7 + o), u, a7)
    ba = load_part_like(z, bias, c, count)
    for i, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7)):
        if i < rows:
            at = q[i] + c
            store_part(y, at, finish(a, ba, act, residual, at, count), count)


@njit_serial
def product_span(x, x0, xstep, seg, segs, gap, w, bias, act, residual, y, y0, ystep, rows, m0, m1):
    """Channels m0..m1 (m0 a multiple of 16) of `rows` output rows at y.flat[y0 + i*ystep]:
    act(x_i @ W + bias), or + bias + residual (at the same offsets), x_i the input row at
    x.flat[x0 + i*xstep] (`segs` runs of `seg` numbers, `gap` apart: `_block_pair`); W (K, M)
    packed (`register_tile.packed_weight`, flattened), bias (M,); x, y, residual flat. In groups of 8 rows (a
    group's rows past the last repeat it); the loop over groups is here, not in the callers: a
    call per group (some 60 arguments) cost as much as a K=16 group's sums."""
    zero16, zero8 = splat(np.float32(0)), splat8(np.float32(0))
    last = rows - 1
    for i in range(0, rows, PIXELS):
        r = (x0 + i * xstep, x0 + min(i + 1, last) * xstep, x0 + min(i + 2, last) * xstep,
             x0 + min(i + 3, last) * xstep, x0 + min(i + 4, last) * xstep, x0 + min(i + 5, last) * xstep,
             x0 + min(i + 6, last) * xstep, x0 + min(i + 7, last) * xstep)
        q0 = y0 + i * ystep
        q = (q0, q0 + ystep, q0 + 2 * ystep, q0 + 3 * ystep, q0 + 4 * ystep, q0 + 5 * ystep, q0 + 6 * ystep,
             q0 + 7 * ystep)
        group = min(PIXELS, rows - i)
        c = m0
        while m1 - c > LANES + HALF:
            _block_pair(x, r, seg, segs, gap, w, c // LANES, bias, act, residual, y, q, group, c, zero16,
                        min(LANES, m1 - c - LANES))
            c += 2 * LANES
        if m1 - c > LANES:
            _block_pair(x, r, seg, segs, gap, w, c // LANES, bias, act, residual, y, q, group, c, zero8,
                        m1 - c - LANES)
        elif m1 - c > HALF:
            _block_one(x, r, seg, segs, gap, w, c // LANES, bias, act, residual, y, q, group, c, zero16, m1 - c)
        elif m1 > c:
            _block_one(x, r, seg, segs, gap, w, c // LANES, bias, act, residual, y, q, group, c, zero8, m1 - c)
