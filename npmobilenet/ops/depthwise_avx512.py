"""The 3x3 and 5x5 depthwise forward tiles in registers: 8 output pixels by 16 channels (AVX-512), or by 8 (AVX2).

`depthwise.depthwise_tile` loops over the channels of runs of pixels and leaves the vectorising
to LLVM: per output vector it loads each of the KH*KW input vectors and as many weight vectors, so
loads, not multiplies, bound it (11 to 19 GMAC/s on V3's and V4's 5x5 layers), and at stride 2
with 16 channels (V3-Small's first depthwise layer) it is a loop of 16 trips per pixel. Here
(`vector16.py`'s 16-lane vectors) a block of 8 neighbouring output pixels of one row by 16
channels is summed in 8 registers, starting from the bias; a kernel row's weights are held in
registers while each input column of that row is loaded once and multiplied into every output
pixel it reaches (5x5: `_row5_s1`, 12 columns for 40 multiply-adds at stride 1, `_row5_s2`, 19 at
stride 2; 3x3: `_row3_s1`, 10 columns for 24, `_row3_s2`, 17); the activation is applied before
the block's one store. Channel counts that are not a multiple of 16 end in a masked vector.
Pixels whose taps reach the padding are done as `depthwise.depthwise_tile` does them (clamped
taps, `depthwise.clamped_borders`), and so is every pixel of a row with fewer than 8 interior
pixels (7x7 maps) where copying its padded input rows cost more (3x3 kernels; 5x5 ones at stride
2); the 5x5 tile computes such rows at stride 1 from the step's input rows copied, zero-padded,
into a workspace, and a dilated 5x5 kernel by `_block_taps`, which loads each tap's input per
pixel (the 3x3 tile takes strides 1 and 2 without dilation). Every output is summed in the same
order (kernel rows, then columns) whichever block or thread computes it, so results are bitwise
identical across thread counts.

Whole fused models with it against the same models with `depthwise.py`'s tile, in one process:
`python benchmarks/register_tile.py --depthwise [--kernel 3]` (figures in the README). Fused
inference runs it where the CPU has AVX-512 or AVX2 (`FusedDepthwise`, `enabled()`) for
every 5x5 layer and every 3x3 one at strides 1 and 2 without dilation, on the weight (KH*KW, C)
and bias (C,) as they are (`tiled_weight` with runs of one pixel). With AVX2 (16 registers of 8
lanes) the blocks are 8 pixels by 8 channels, one 8-lane body per block kind (`VECTOR`): against
the loop tile, whole models 0.95-1.07x the time on the Zen 3 machine (no gain beyond its noise),
and V2's cold start 18.8-20.0 s against 21.0-23.8 s, the loop tile being the costliest function
to compile.
"""
import numpy as np
from numba import prange, types

from npmobilenet.config import njit_inline, njit_serial, serial_and_parallel
from npmobilenet.ops.depthwise import clamped_borders, step_row_sums, step_rows, steps_per_image
from npmobilenet.ops.depthwise_rows import _interior_columns
from npmobilenet.ops.indirect import CompiledCall
from npmobilenet.ops.matmul_avx512 import activate
from npmobilenet.ops import register_tile
from npmobilenet.ops.vector16 import LANES, fma, has_avx512, load_part_like, splat, splat8, store_part

PIXELS = 8   # output pixels of one row per block
# channels per block: 16-lane vectors with AVX-512; with AVX2, whose 16 registers hold 8 lanes, 8
# (8 sums, a kernel row's 3 or 5 weights and the input columns in flight fit; 16-lane blocks spill)
_AVX512 = has_avx512()
VECTOR = LANES if _AVX512 else LANES // 2


@njit_inline
def _zero16():
    return splat(np.float32(0))


@njit_inline
def _zero8():
    return splat8(np.float32(0))


_zero = _zero16 if _AVX512 else _zero8     # a block's vector type, chosen once at import


def enabled():
    """Whether fused inference runs this tile: where the register tiles are enabled
    (`register_tile.enabled()`: AVX-512, or AVX2 with FMA, whose blocks are 8 pixels by 8
    channels, `VECTOR`)."""
    return register_tile.enabled()


def takes(kernel, stride, dilation):
    """Whether the register tile computes a depthwise convolution of this `kernel` (KH, KW),
    `stride` and `dilation`: 5x5 any, 3x3 at strides 1 and 2 without dilation."""
    kernel, stride, dilation = tuple(kernel), tuple(stride), tuple(dilation)
    return kernel == (5, 5) or (kernel == (3, 3) and max(stride) <= 2 and dilation == (1, 1))


# -- one kernel row, for 8 output pixels: input columns at x.flat[at + k*cs] ---------------------------
@njit_inline
def _row5_s1(x, at, cs, u0, u1, u2, u3, u4, a0, a1, a2, a3, a4, a5, a6, a7, z, count):
    """A 5-wide kernel row at stride 1: 12 input columns, pixel p reads p..p+4."""
    x0 = load_part_like(z, x, at, count)
    x1 = load_part_like(z, x, at + cs, count)
    x2 = load_part_like(z, x, at + 2 * cs, count)
    x3 = load_part_like(z, x, at + 3 * cs, count)
    x4 = load_part_like(z, x, at + 4 * cs, count)
    a0 = fma(x4, u4, fma(x3, u3, fma(x2, u2, fma(x1, u1, fma(x0, u0, a0)))))
    x5 = load_part_like(z, x, at + 5 * cs, count)
    a1 = fma(x5, u4, fma(x4, u3, fma(x3, u2, fma(x2, u1, fma(x1, u0, a1)))))
    x6 = load_part_like(z, x, at + 6 * cs, count)
    a2 = fma(x6, u4, fma(x5, u3, fma(x4, u2, fma(x3, u1, fma(x2, u0, a2)))))
    x7 = load_part_like(z, x, at + 7 * cs, count)
    a3 = fma(x7, u4, fma(x6, u3, fma(x5, u2, fma(x4, u1, fma(x3, u0, a3)))))
    x8 = load_part_like(z, x, at + 8 * cs, count)
    a4 = fma(x8, u4, fma(x7, u3, fma(x6, u2, fma(x5, u1, fma(x4, u0, a4)))))
    x9 = load_part_like(z, x, at + 9 * cs, count)
    a5 = fma(x9, u4, fma(x8, u3, fma(x7, u2, fma(x6, u1, fma(x5, u0, a5)))))
    x10 = load_part_like(z, x, at + 10 * cs, count)
    a6 = fma(x10, u4, fma(x9, u3, fma(x8, u2, fma(x7, u1, fma(x6, u0, a6)))))
    x11 = load_part_like(z, x, at + 11 * cs, count)
    a7 = fma(x11, u4, fma(x10, u3, fma(x9, u2, fma(x8, u1, fma(x7, u0, a7)))))
    return a0, a1, a2, a3, a4, a5, a6, a7


@njit_inline
def _row5_s2(x, at, cs, u0, u1, u2, u3, u4, a0, a1, a2, a3, a4, a5, a6, a7, z, count):
    """A 5-wide kernel row at stride 2: 19 input columns, pixel p reads 2p..2p+4."""
    x0 = load_part_like(z, x, at, count)
    x1 = load_part_like(z, x, at + cs, count)
    x2 = load_part_like(z, x, at + 2 * cs, count)
    x3 = load_part_like(z, x, at + 3 * cs, count)
    x4 = load_part_like(z, x, at + 4 * cs, count)
    a0 = fma(x4, u4, fma(x3, u3, fma(x2, u2, fma(x1, u1, fma(x0, u0, a0)))))
    x5 = load_part_like(z, x, at + 5 * cs, count)
    x6 = load_part_like(z, x, at + 6 * cs, count)
    a1 = fma(x6, u4, fma(x5, u3, fma(x4, u2, fma(x3, u1, fma(x2, u0, a1)))))
    x7 = load_part_like(z, x, at + 7 * cs, count)
    x8 = load_part_like(z, x, at + 8 * cs, count)
    a2 = fma(x8, u4, fma(x7, u3, fma(x6, u2, fma(x5, u1, fma(x4, u0, a2)))))
    x9 = load_part_like(z, x, at + 9 * cs, count)
    x10 = load_part_like(z, x, at + 10 * cs, count)
    a3 = fma(x10, u4, fma(x9, u3, fma(x8, u2, fma(x7, u1, fma(x6, u0, a3)))))
    x11 = load_part_like(z, x, at + 11 * cs, count)
    x12 = load_part_like(z, x, at + 12 * cs, count)
    a4 = fma(x12, u4, fma(x11, u3, fma(x10, u2, fma(x9, u1, fma(x8, u0, a4)))))
    x13 = load_part_like(z, x, at + 13 * cs, count)
    x14 = load_part_like(z, x, at + 14 * cs, count)
    a5 = fma(x14, u4, fma(x13, u3, fma(x12, u2, fma(x11, u1, fma(x10, u0, a5)))))
    x15 = load_part_like(z, x, at + 15 * cs, count)
    x16 = load_part_like(z, x, at + 16 * cs, count)
    a6 = fma(x16, u4, fma(x15, u3, fma(x14, u2, fma(x13, u1, fma(x12, u0, a6)))))
    x17 = load_part_like(z, x, at + 17 * cs, count)
    x18 = load_part_like(z, x, at + 18 * cs, count)
    a7 = fma(x18, u4, fma(x17, u3, fma(x16, u2, fma(x15, u1, fma(x14, u0, a7)))))
    return a0, a1, a2, a3, a4, a5, a6, a7


@njit_inline
def _row3_s1(x, at, cs, u0, u1, u2, a0, a1, a2, a3, a4, a5, a6, a7, z, count):
    """A 3-wide kernel row at stride 1: 10 input columns, pixel p reads p..p+2."""
    x0 = load_part_like(z, x, at, count)
    x1 = load_part_like(z, x, at + cs, count)
    x2 = load_part_like(z, x, at + 2 * cs, count)
    a0 = fma(x2, u2, fma(x1, u1, fma(x0, u0, a0)))
    x3 = load_part_like(z, x, at + 3 * cs, count)
    a1 = fma(x3, u2, fma(x2, u1, fma(x1, u0, a1)))
    x4 = load_part_like(z, x, at + 4 * cs, count)
    a2 = fma(x4, u2, fma(x3, u1, fma(x2, u0, a2)))
    x5 = load_part_like(z, x, at + 5 * cs, count)
    a3 = fma(x5, u2, fma(x4, u1, fma(x3, u0, a3)))
    x6 = load_part_like(z, x, at + 6 * cs, count)
    a4 = fma(x6, u2, fma(x5, u1, fma(x4, u0, a4)))
    x7 = load_part_like(z, x, at + 7 * cs, count)
    a5 = fma(x7, u2, fma(x6, u1, fma(x5, u0, a5)))
    x8 = load_part_like(z, x, at + 8 * cs, count)
    a6 = fma(x8, u2, fma(x7, u1, fma(x6, u0, a6)))
    x9 = load_part_like(z, x, at + 9 * cs, count)
    a7 = fma(x9, u2, fma(x8, u1, fma(x7, u0, a7)))
    return a0, a1, a2, a3, a4, a5, a6, a7


@njit_inline
def _row3_s2(x, at, cs, u0, u1, u2, a0, a1, a2, a3, a4, a5, a6, a7, z, count):
    """A 3-wide kernel row at stride 2: 17 input columns, pixel p reads 2p..2p+2."""
    x0 = load_part_like(z, x, at, count)
    x1 = load_part_like(z, x, at + cs, count)
    x2 = load_part_like(z, x, at + 2 * cs, count)
    a0 = fma(x2, u2, fma(x1, u1, fma(x0, u0, a0)))
    x3 = load_part_like(z, x, at + 3 * cs, count)
    x4 = load_part_like(z, x, at + 4 * cs, count)
    a1 = fma(x4, u2, fma(x3, u1, fma(x2, u0, a1)))
    x5 = load_part_like(z, x, at + 5 * cs, count)
    x6 = load_part_like(z, x, at + 6 * cs, count)
    a2 = fma(x6, u2, fma(x5, u1, fma(x4, u0, a2)))
    x7 = load_part_like(z, x, at + 7 * cs, count)
    x8 = load_part_like(z, x, at + 8 * cs, count)
    a3 = fma(x8, u2, fma(x7, u1, fma(x6, u0, a3)))
    x9 = load_part_like(z, x, at + 9 * cs, count)
    x10 = load_part_like(z, x, at + 10 * cs, count)
    a4 = fma(x10, u2, fma(x9, u1, fma(x8, u0, a4)))
    x11 = load_part_like(z, x, at + 11 * cs, count)
    x12 = load_part_like(z, x, at + 12 * cs, count)
    a5 = fma(x12, u2, fma(x11, u1, fma(x10, u0, a5)))
    x13 = load_part_like(z, x, at + 13 * cs, count)
    x14 = load_part_like(z, x, at + 14 * cs, count)
    a6 = fma(x14, u2, fma(x13, u1, fma(x12, u0, a6)))
    x15 = load_part_like(z, x, at + 15 * cs, count)
    x16 = load_part_like(z, x, at + 16 * cs, count)
    a7 = fma(x16, u2, fma(x15, u1, fma(x14, u0, a7)))
    return a0, a1, a2, a3, a4, a5, a6, a7


# -- a block: 8 output pixels x the channels c..c+count ----------------------------------------------------
# FULL: where a row of blocks is known to have at least 8 pixels, every block has all 8, and its
# callers pass `rows` as the constant PIXELS, so that LLVM drops the test of each store (tested,
# always true, they made the 3x3 blocks much slower: the README has the runs).
@njit_inline
def _store_block(y, q, channels, c, rows, act, a0, a1, a2, a3, a4, a5, a6, a7, count):
    """Output pixels p < rows at y.flat[q + p*channels + c:...+count] = act(a_p)."""
    for p, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7)):
        if p < rows:
            store_part(y, q + p * channels + c, activate(a, act), count)


@njit_inline
def _block_rows(x, r, row, channels, stride, w, c, bias, act, y, q, rows, z, count):
    """Output pixels p < rows (<= 8) of a 5x5 kernel at stride 1 or 2, dilation 1: pixel p's
    field starts at x.flat[r + p*stride*channels], its rows `row` apart (x: the padded rows)."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = load_part_like(z, bias, c, count)
    for i in range(5):
        at = r + i * row + c
        k = 5 * i * channels + c
        u0 = load_part_like(z, w, k, count)
        u1 = load_part_like(z, w, k + channels, count)
        u2 = load_part_like(z, w, k + 2 * channels, count)
        u3 = load_part_like(z, w, k + 3 * channels, count)
        u4 = load_part_like(z, w, k + 4 * channels, count)
        if stride == 1:
            a0, a1, a2, a3, a4, a5, a6, a7 = _row5_s1(x, at, channels, u0, u1, u2, u3, u4, a0, a1, a2, a3, a4, a5, a6,
                                                      a7, z, count)
        else:
            a0, a1, a2, a3, a4, a5, a6, a7 = _row5_s2(x, at, channels, u0, u1, u2, u3, u4, a0, a1, a2, a3, a4, a5, a6,
                                                      a7, z, count)
    _store_block(y, q, channels, c, rows, act, a0, a1, a2, a3, a4, a5, a6, a7, count)


@njit_inline
def _block_rows3(x, r, row, channels, stride, w, c, bias, act, y, q, rows, z, count):
    """`_block_rows` for a 3x3 kernel at stride 1 or 2, dilation 1."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = load_part_like(z, bias, c, count)
    for i in range(3):
        at = r + i * row + c
        k = 3 * i * channels + c
        u0 = load_part_like(z, w, k, count)
        u1 = load_part_like(z, w, k + channels, count)
        u2 = load_part_like(z, w, k + 2 * channels, count)
        if stride == 1:
            a0, a1, a2, a3, a4, a5, a6, a7 = _row3_s1(x, at, channels, u0, u1, u2, a0, a1, a2, a3, a4, a5, a6, a7, z,
                                                      count)
        else:
            a0, a1, a2, a3, a4, a5, a6, a7 = _row3_s2(x, at, channels, u0, u1, u2, a0, a1, a2, a3, a4, a5, a6, a7, z,
                                                      count)
    _store_block(y, q, channels, c, rows, act, a0, a1, a2, a3, a4, a5, a6, a7, count)


@njit_inline
def _block_taps(x, r, step, row, tap, channels, w, c, bias, act, y, q, rows, z, count):
    """The same for any stride and dilation: pixel p's field starts at x.flat[r + p*step], its
    rows `row` and its taps `tap` apart; each tap's input loaded per pixel."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = load_part_like(z, bias, c, count)
    for i in range(5):
        for j in range(5):
            u = load_part_like(z, w, (5 * i + j) * channels + c, count)
            at = r + i * row + j * tap + c
            a0 = fma(load_part_like(z, x, at, count), u, a0)
            a1 = fma(load_part_like(z, x, at + step, count), u, a1)
            a2 = fma(load_part_like(z, x, at + 2 * step, count), u, a2)
            a3 = fma(load_part_like(z, x, at + 3 * step, count), u, a3)
            a4 = fma(load_part_like(z, x, at + 4 * step, count), u, a4)
            a5 = fma(load_part_like(z, x, at + 5 * step, count), u, a5)
            a6 = fma(load_part_like(z, x, at + 6 * step, count), u, a6)
            a7 = fma(load_part_like(z, x, at + 7 * step, count), u, a7)
    _store_block(y, q, channels, c, rows, act, a0, a1, a2, a3, a4, a5, a6, a7, count)


# -- a step: its input rows padded into the worker's workspace, then every output pixel in blocks ---------
@njit_serial
def padded_width(out_width, stride_w, dilation_w):
    """Columns of a padded input row: what blocks of 8 output pixels read (at least one block)."""
    return (max(out_width, PIXELS) - 1) * stride_w + 4 * dilation_w + 1


@njit_serial
def workspace_elements(out_height, out_width, channels, stride_h, stride_w, dilation_h, dilation_w):
    """Elements of one worker's workspace: the padded input rows of a step (two output rows)."""
    _, rows_per_step = steps_per_image(out_height, 5, 5, stride_h, dilation_h)
    rows = (rows_per_step - 1) * stride_h + 4 * dilation_h + 1
    return rows * padded_width(out_width, stride_w, dilation_w) * channels


@njit_serial
def _pad_rows(x, n, top, rows, pad_left, padded, columns):
    """padded.flat[i, j, :] = x[n, top + i, j - pad_left, :] for i < rows, j < columns, and zero
    where that lies outside x (the padding). Whole-row slices: copied and zeroed as runs."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    run = columns * channels
    first, last = min(pad_left, columns) * channels, min(pad_left + width, columns) * channels
    x_rows = x.reshape(x.shape[0], height, width * channels)
    # loops, not slice assignments: a slice assigned from an array compiles a shape check whose
    # error message (formatted strings) took 3.2 s of V3-Large's cold start
    for i in range(rows):
        ih, out = top + i, i * run
        if ih < 0 or ih >= height:
            for e in range(run):
                padded[out + e] = 0
        else:
            source = x_rows[n, ih]
            for e in range(first):
                padded[out + e] = 0
            for e in range(last - first):
                padded[out + first + e] = source[e]
            for e in range(last, run):
                padded[out + e] = 0


@njit_inline
def _block_at(start, lo, hi, base, stride, channels, n, oh, out_h, out_w):
    """The block of up to 8 pixels from output column `start` of row (n, oh), columns lo..hi-1
    (the last block ending at hi and overlapping the one before, whose pixels it computes again,
    to the same values; a row narrower than 8 pixels is one block): (its pixels, where its first
    pixel's field starts in the source, column lo's at `base`, and where its output starts)."""
    ow = max(lo, min(start, hi - PIXELS))
    return min(PIXELS, hi - ow), base + (ow - lo) * stride * channels, ((n * out_h + oh) * out_w + ow) * channels


@njit_serial
def _row_blocks_16(src, base, row, stride, w, bias, act, y, n, oh, lo, hi):
    """y[n, oh, lo:hi] = act(depthwise + bias) at stride 1 or 2, dilation 1, every tap inside
    `src` (x itself, or a step's zero-padded rows: both flat): output pixel lo's field starts at
    src[base], its rows `row` apart. Blocks of 8 pixels (`_block_at`) by 16 channels
    (`_block_rows`), the last ones masked or in 8 lanes (AVX-512: `_row_blocks`)."""
    out_h, out_w, channels = y.shape[1], y.shape[2], y.shape[3]
    flat_y, flat_w = y.reshape(-1), w.reshape(-1)
    z16, z8 = splat(np.float32(0)), splat8(np.float32(0))
    for start in range(lo, hi, PIXELS):
        rows, r, q = _block_at(start, lo, hi, base, stride, channels, n, oh, out_h, out_w)
        c = 0
        while channels - c >= LANES:
            _block_rows(src, r, row, channels, stride, flat_w, c, bias, act, flat_y, q, rows, z16, LANES)
            c += LANES
        if channels - c > LANES // 2:
            _block_rows(src, r, row, channels, stride, flat_w, c, bias, act, flat_y, q, rows, z16, channels - c)
        elif channels > c:
            _block_rows(src, r, row, channels, stride, flat_w, c, bias, act, flat_y, q, rows, z8, channels - c)


@njit_serial
def _row_blocks_8(src, base, row, stride, w, bias, act, y, n, oh, lo, hi):
    """`_row_blocks_16` in blocks of 8 channels (8-lane vectors, the last one masked): AVX2's,
    whose rows have at least 8 pixels (`depthwise_steps_5x5` gives narrower ones to the clamped
    taps with AVX2), so every block has all 8 (`FULL`)."""
    out_h, out_w, channels = y.shape[1], y.shape[2], y.shape[3]
    flat_y, flat_w = y.reshape(-1), w.reshape(-1)
    z = _zero8()
    whole = channels - channels % VECTOR
    for start in range(lo, hi, PIXELS):
        _, r, q = _block_at(start, lo, hi, base, stride, channels, n, oh, out_h, out_w)     # 8 pixels (`FULL`)
        for c in range(0, whole, VECTOR):       # a constant count: plain loads (see `_row_blocks3`)
            _block_rows(src, r, row, channels, stride, flat_w, c, bias, act, flat_y, q, PIXELS, z, VECTOR)
        if whole < channels:
            _block_rows(src, r, row, channels, stride, flat_w, whole, bias, act, flat_y, q, PIXELS, z,
                        channels - whole)


_row_blocks = _row_blocks_16 if _AVX512 else _row_blocks_8


@njit_serial
def _row_blocks3(x, base, row, stride, w, bias, act, y, n, oh, lo, hi):
    """`_row_blocks` for a 3x3 kernel (`_block_rows3`) read from x, at least 8 interior pixels
    (`depthwise_steps_3x3` leaves narrower rows to the clamped taps), so every block has all 8
    pixels (`_block_at`) and its stores are untested (`FULL`), every channel block in
    vectors of `VECTOR` lanes (the last one masked): one block body per stride, where
    `_row_blocks_16` has three (full, masked 16-lane, 8-lane), which took the first version of
    the 3x3 tile from 8.6 to 6.8 s of compiling. Whole vectors are given the constant count
    VECTOR, so that their masked loads, all lanes on, are plain ones (LLVM folds the mask; with
    AVX2 a masked load is a `vmaskmovps`, which no multiply-add takes as its operand); the last,
    partial one, if any, its count."""
    out_h, out_w, channels = y.shape[1], y.shape[2], y.shape[3]
    flat_y, flat_w = y.reshape(-1), w.reshape(-1)
    z = _zero()
    whole = channels - channels % VECTOR
    for start in range(lo, hi, PIXELS):
        _, r, q = _block_at(start, lo, hi, base, stride, channels, n, oh, out_h, out_w)
        # the stride a constant in each loop, one block body each (tested inside one body, the
        # stride slowed both: the README has the runs)
        if stride == 1:
            for c in range(0, whole, VECTOR):
                _block_rows3(x, r, row, channels, 1, flat_w, c, bias, act, flat_y, q, PIXELS, z, VECTOR)
        else:
            for c in range(0, whole, VECTOR):
                _block_rows3(x, r, row, channels, 2, flat_w, c, bias, act, flat_y, q, PIXELS, z, VECTOR)
        if whole < channels:
            _block_rows3(x, r, row, channels, stride, flat_w, whole, bias, act, flat_y, q, PIXELS, z,
                         channels - whole)


@njit_serial
def _row_blocks_taps(src, base, row, stride, dilation_h, dilation_w, w, bias, act, y, n, oh, lo, hi):
    """`_row_blocks` for any stride and dilation, tap by tap (`_block_taps`: apart, because both
    block kinds inlined into one function ran both slower)."""
    out_h, out_w, channels = y.shape[1], y.shape[2], y.shape[3]
    flat_y, flat_w = y.reshape(-1), w.reshape(-1)
    z16, z8 = _zero(), _zero8()       # with AVX2 both 8 lanes (count <= 8): only the second call runs
    for start in range(lo, hi, PIXELS):
        rows, r, q = _block_at(start, lo, hi, base, stride, channels, n, oh, out_h, out_w)
        if not _AVX512:
            rows = PIXELS             # with AVX2 every row has 8 pixels or more (`FULL`)
        c = 0
        while c < channels:
            count = min(VECTOR, channels - c)
            if count > LANES // 2:
                _block_taps(src, r, stride * channels, dilation_h * row, dilation_w * channels, channels, flat_w, c,
                            bias, act, flat_y, q, rows, z16, count)
            else:
                _block_taps(src, r, stride * channels, dilation_h * row, dilation_w * channels, channels, flat_w, c,
                            bias, act, flat_y, q, rows, z8, count)
            c += count


# The tiles call their border pixels' and their register blocks' functions through their addresses
# (`indirect.py`), their last arguments (`callees_3x3()`, `callees_5x5()`): linked into each tile, and
# into the parallel loops over it, they were optimised and turned into machine code again there.
_I = types.int64
_F1, _F2, _F4 = (types.Array(types.float32, ndim, "C") for ndim in (1, 2, 4))
BORDERS = CompiledCall(clamped_borders, (_F4, _F2, _I, _F4) + (_I,) * 10 + (_F1, _I))
BLOCKS_3X3 = CompiledCall(_row_blocks3, (_F1, _I, _I, _I, _F2, _F1, _I, _F4, _I, _I, _I, _I))
BLOCKS = CompiledCall(_row_blocks, (_F1, _I, _I, _I, _F2, _F1, _I, _F4, _I, _I, _I, _I))
BLOCKS_TAPS = CompiledCall(_row_blocks_taps, (_F1, _I, _I, _I, _I, _I, _F2, _F1, _I, _F4, _I, _I, _I, _I))
_borders_at, _blocks_3x3_at, _blocks_at, _taps_at = BORDERS.call, BLOCKS_3X3.call, BLOCKS.call, BLOCKS_TAPS.call


def callees_3x3():
    """(borders, blocks): the addresses `depthwise_steps_3x3` takes (compiled on first use)."""
    return BORDERS.address(), BLOCKS_3X3.address()


def in_blocks(stride_w, dilation_h, dilation_w):
    """Whether the 5x5 tile computes rows in register blocks that reuse input columns
    (`_row_blocks`, its `vector_rows`), not tap by tap (`_row_blocks_taps`)."""
    return stride_w in (1, 2) and dilation_h == 1 and dilation_w == 1


def callees_5x5(stride_w, dilation_h, dilation_w):
    """(borders, blocks, taps): the addresses `depthwise_steps_5x5` takes at this stride and
    dilation (compiled on first use; taps 0, not compiled, where `in_blocks`: never called)."""
    taps = 0 if in_blocks(stride_w, dilation_h, dilation_w) else BLOCKS_TAPS.address()
    return BORDERS.address(), BLOCKS.address(), taps


@njit_serial
def depthwise_steps_5x5(x, w, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                        dilation_h, dilation_w, y, t0, t1, padded, borders, blocks, taps):
    """`depthwise.depthwise_steps` (the same steps, two output rows of one image; the same
    arguments) for a 5x5 kernel on float32, with w (25, C) and bias (C,) (runs of one pixel) and
    `padded`, this worker's workspace (`workspace_elements`, flat).

    Rows with 8 or more interior pixels (every tap inside x) read them from x and their border
    pixels by clamped taps (`depthwise.clamped_borders`); on narrower maps (7x7), where most
    pixels are border pixels, at stride 1 the step's input rows are first copied, zero-padded,
    into `padded`, and every pixel is computed from there (AVX-512), at stride 2 (and with AVX2)
    every pixel by clamped taps. Register blocks that reuse each input column
    (`_block_rows`) at strides 1 and 2, dilation 1; else tap by tap (`_block_taps`). borders,
    blocks, taps: the addresses of `depthwise.clamped_borders`, `_row_blocks`, `_row_blocks_taps`."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    out_height, out_width = y.shape[1], y.shape[2]
    steps, rows_per_step = steps_per_image(out_height, kernel_h, kernel_w, stride_h, dilation_h)
    lo, hi = _interior_columns(width, out_width, kernel_w, stride_w, pad_left, dilation_w)
    vector_rows = (stride_w == 1 or stride_w == 2) and dilation_h == 1 and dilation_w == 1    # `in_blocks`
    wide = hi - lo >= PIXELS
    if not wide and (stride_w > 1 or not _AVX512):
        # a narrow map at stride 2 (14x14 -> 7x7): every pixel by clamped taps, 0.54-0.70x the time
        # of copying its step's padded rows (7 rows of 19 columns, 2.7x the input's bytes); with
        # AVX2 at stride 1 too (measured in the README: 7x7 layers 0.55-0.8x the time)
        lo, hi, wide = 0, 0, True
    if not wide:
        lo, hi = 0, out_width                     # every pixel, from the step's padded rows
    columns = padded_width(out_width, stride_w, dilation_w)
    flat_x = x.reshape(-1)
    for t in range(t0, t1):
        n, first, last = step_rows(t, steps, rows_per_step, out_height)
        if not wide:
            _pad_rows(x, n, first * stride_h - pad_top, (last - first - 1) * stride_h + 4 * dilation_h + 1, pad_left,
                      padded, columns)
        for oh in range(first, last):
            top = oh * stride_h - pad_top
            if wide:
                _borders_at(borders, (x, w, kernel_h, y, n, oh, top, lo, hi, 4 * dilation_h, stride_w, pad_left,
                                      dilation_h, dilation_w, bias, act))
                if not (top >= 0 and top + 4 * dilation_h < height):
                    continue                      # done by clamped taps
                src, base, row = flat_x, ((n * height + top) * width + lo * stride_w - pad_left) * channels, width
            else:
                src, base, row = padded, (oh - first) * stride_h * columns * channels, columns
            if vector_rows:
                _blocks_at(blocks, (src, base, row * channels, stride_w, w, bias, act, y, n, oh, lo, hi))
            else:
                _taps_at(taps, (src, base, row * channels, stride_w, dilation_h, dilation_w, w, bias, act, y, n, oh,
                                lo, hi))
        step_row_sums(y, row_sums, n, first, last)


@njit_serial
def depthwise_steps_3x3(x, w, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                        dilation_h, dilation_w, y, t0, t1, borders, blocks):
    """`depthwise.depthwise_steps` (the same steps and arguments) for a 3x3 kernel at stride 1 or
    2 each way, dilation 1 (the caller's to check), on float32, with w (9, C) and bias (C,) (runs
    of one pixel). Interior pixels in register blocks (`_row_blocks3`, at address `blocks`) read
    from x; border pixels, and every pixel of a row with fewer than 8 interior ones, by clamped
    taps (`depthwise.clamped_borders`, at address `borders`: on 7x7 maps 0.98-1.17x the loop
    tile's time in two runs, where copying padded rows, as the 5x5 tile does at stride 1, took
    1.2-2.3x)."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    out_height = y.shape[1]
    # (the kernel's sizes and dilation passed on as the variables they are: a literal argument
    # would compile the callees again for it)
    steps, rows_per_step = steps_per_image(out_height, kernel_h, kernel_w, stride_h, dilation_h)
    lo, hi = _interior_columns(width, y.shape[2], kernel_w, stride_w, pad_left, dilation_w)
    if hi - lo < PIXELS:
        lo, hi = 0, 0
    flat_x = x.reshape(-1)
    for t in range(t0, t1):
        n, first, last = step_rows(t, steps, rows_per_step, out_height)
        for oh in range(first, last):
            top = oh * stride_h - pad_top
            _borders_at(borders, (x, w, kernel_h, y, n, oh, top, lo, hi, kernel_h - 1, stride_w, pad_left, dilation_h,
                                  dilation_w, bias, act))
            if top >= 0 and top + kernel_h - 1 < height:
                _blocks_3x3_at(blocks, (flat_x, ((n * height + top) * width + lo * stride_w - pad_left) * channels,
                                        width * channels, stride_w, w, bias, act, y, n, oh, lo, hi))
        step_row_sums(y, row_sums, n, first, last)


def _depthwise_5x5_forward(x, w, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                           dilation_h, dilation_w, y, workspace, borders, blocks, taps):
    # every step of `depthwise_steps_5x5` (disjoint rows of y); workspace (workers, elements): a
    # worker takes every workers-th step
    steps, _ = steps_per_image(y.shape[1], kernel_h, kernel_w, stride_h, dilation_h)
    tiles = y.shape[0] * steps
    workers = workspace.shape[0]
    for worker in prange(workers):
        for t in range(worker, tiles, workers):
            depthwise_steps_5x5(x, w, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                                dilation_h, dilation_w, y, t, t + 1, workspace[worker], borders, blocks, taps)


DEPTHWISE_5X5_FORWARD = serial_and_parallel(_depthwise_5x5_forward)


def _depthwise_3x3_forward(x, w, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                           dilation_h, dilation_w, y, borders, blocks):
    # every step of `depthwise_steps_3x3` (disjoint rows of y)
    steps, _ = steps_per_image(y.shape[1], kernel_h, kernel_w, stride_h, dilation_h)
    for t in prange(y.shape[0] * steps):
        depthwise_steps_3x3(x, w, kernel_h, kernel_w, bias, act, row_sums, stride_h, stride_w, pad_top, pad_left,
                            dilation_h, dilation_w, y, t, t + 1, borders, blocks)


DEPTHWISE_3X3_FORWARD = serial_and_parallel(_depthwise_3x3_forward)
