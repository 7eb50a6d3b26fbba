"""The tiles of fused inference that are not convolutions, each with its per-layer kernel.

The convolution tiles are in `npmobilenet.ops` (`conv_tile`, `depthwise_tile`, `pointwise_tile`:
one per kind, shared with training's forward and the exact int8 path). Here:

- `squeeze_excite_tile`: part of one image's squeeze-and-excitation gate from the row sums the
  depthwise tile left (so SE never re-reads the activation): `gate = hardsigmoid(W2 relu(W1 mean
  + b1) + b2)` (V3 paper, section 5.3), in two phases (each part's share of the hidden units,
  then each part's channels of the gate). The gate is applied by the projection's tile as it
  reads its input.
- `global_avg_pool_tile`: one image's mean over its positions, for part of its channels.
- `linear_tile`: a column block of a fully connected layer, bias and activation, on weights
  packed by column block (`linear_blocks`): at batch 1 the classifier is a matrix-vector product
  bound by reading its weights, so each tile streams its block once, in order (its columns are
  split so that both cores read). Where the register tile runs (`ops/register_tile.py`),
  `linear_tile_packed` instead: the weight in its 16-channel slivers, every row count summed by
  the register tile, so an image's logits are the same bits whatever the batch (the streaming
  loop's sums and SGEMM's, which `linear_tile` switches between at `GEMV_MAX_ROWS`, differ in
  the last bits).
- `resize_tile`: a block of output rows of a bilinear resize (LR-ASPP's upsampling, V3 paper,
  sec. 6.3), optionally of the input times a per-image gate (LR-ASPP's `x * sigmoid(...)`,
  multiplied as each input pixel is read, as the projection applies SE's gate).

Layout NHWC float32. Each tile function is what `program.py` calls; each kernel body below loops
over the tiles (`prange`: disjoint writes) and is compiled serial and parallel.
"""
import numpy as np
from numba import prange

from npmobilenet.config import njit_inline, njit_serial, njit_serial_strict, serial_and_parallel
from npmobilenet.ops.blas import gemm_call
from npmobilenet.ops.epilogue import bias_act
from npmobilenet.ops.register_tile import product_rows

_F32 = np.float32


# An image's pooling and each phase of its SE gate are split between threads in PARTS tiles: at
# batch 1 one tile made the other thread wait (V3-Large's last SE blocks read 0.9 MB of weights each).
PARTS = 2


@njit_inline
def part_width(size, align):
    """Length of each of PARTS parts of range(size) cut at multiples of `align` (the last may be
    shorter)."""
    return -(-size // (PARTS * align)) * align


@njit_inline
def _part(size, part, align):
    """Part `part` of PARTS of range(size), cut at multiples of `align`: (first, end)."""
    step = part_width(size, align)
    return min(part * step, size), min((part + 1) * step, size)


def expand_parts(w_expand):
    """SE's expanding weight (S, C) -> (PARTS, S, part_width(C, 16)) float32, zero-padded: the
    columns of each part's channels contiguous, so that its tile streams them in order."""
    blocks = linear_blocks(w_expand, part_width.py_func(w_expand.shape[1], 16))
    if len(blocks) < PARTS:          # few channels: an empty last part still has its (zero) block
        blocks = np.concatenate([blocks, np.zeros((PARTS - len(blocks),) + blocks.shape[1:], np.float32)])
    return blocks


@njit_inline
def _mean_of_rows(src, n, c0, c1, inv, out):
    """out[:c1 - c0] = inv * the sum over i of src[n, i, c0:c1]. Every loop runs over a slice from
    0: an index from c0, not known to be >= 0, kept Numba's negative-index check in the loops,
    and with it their vectorisation out."""
    for j in range(c1 - c0):
        out[j] = 0
    for i in range(src.shape[1]):
        row = src[n, i, c0:c1]
        for j in range(c1 - c0):
            out[j] += row[j]
    for j in range(c1 - c0):
        out[j] *= inv


@njit_serial
def squeeze_excite_tile(row_sums, count, w_reduce, b_reduce, w_parts, b_expand, partials, gate, t, phase):
    """Tile t (image n = t // PARTS, part t % PARTS) of phase 0 or 1 of image n's SE gate:
    gate[n] = hardsigmoid(W2 relu(W1 mean + b1) + b2), mean = row sums / count.
    Phase 0, the part's channels c: their means (left in gate[n, c]) and their share of the
    hidden units, partials[t] = sum over c of mean[c] W1[c]. Phase 1, once every phase-0 tile
    is done: the part's channels of the gate, from relu(b1 + the parts' sums in order), so the
    sums are the same whichever thread ran which part. W2 packed by part: w_parts =
    `expand_parts(W2)`."""
    n, part = t // PARTS, t % PARTS
    channels = row_sums.shape[2]
    squeeze = w_reduce.shape[1]
    zero, three, six, sixth = _F32(0), _F32(3), _F32(6), _F32(1 / 6)
    c0, c1 = _part(channels, part, 16)
    g = gate[n, c0:c1]        # slices from 0: loops from c0 would keep Numba's negative-index check
    if phase == 0:
        _mean_of_rows(row_sums, n, c0, c1, _F32(1.0 / count), g)
        h = partials[t]
        for s in range(squeeze):
            h[s] = 0
        for j in range(c1 - c0):
            m = g[j]
            w = w_reduce[c0 + j]
            for s in range(squeeze):
                h[s] += m * w[s]
    else:
        bias = b_expand[c0:c1]
        for j in range(c1 - c0):
            g[j] = bias[j]
        block = w_parts[part]
        for s in range(squeeze):
            hs = b_reduce[s]
            for p in range(PARTS):
                hs += partials[n * PARTS + p, s]
            hs = max(hs, zero)
            w = block[s]
            for j in range(c1 - c0):
                g[j] += hs * w[j]
        for j in range(c1 - c0):
            g[j] = min(max(g[j] + three, zero), six) * sixth    # hard-sigmoid (V3, sec. 5.2)


def _squeeze_excite_gate(row_sums, count, w_reduce, b_reduce, w_parts, b_expand, partials, gate):
    # row_sums: (N, Ho, C) -> gate: (N, C); w_reduce: (C, S), w_parts: expand_parts(w_expand);
    # partials: (N * PARTS, S) workspace; count = Ho * Wo. An image per iteration, its tiles of
    # both phases in turn.
    for n in prange(row_sums.shape[0]):
        for phase in range(2):
            for part in range(PARTS):
                squeeze_excite_tile(row_sums, count, w_reduce, b_reduce, w_parts, b_expand, partials, gate,
                                    n * PARTS + part, phase)


@njit_serial
def global_avg_pool_tile(x, y, t):
    """y[n] = the mean of image n's positions, part t % PARTS of its channels (n = t // PARTS).
    x: (N, H*W, C), y: (N, C)."""
    n, part = t // PARTS, t % PARTS
    positions, channels = x.shape[1], x.shape[2]
    c0, c1 = _part(channels, part, 16)
    _mean_of_rows(x, n, c0, c1, _F32(1.0 / positions), y[n, c0:c1])


def _global_avg_pool(x, y):
    # x: (N, H*W, C) -> y: (N, C). An image per iteration, its PARTS tiles in turn.
    for n in prange(x.shape[0]):
        for part in range(PARTS):
            global_avg_pool_tile(x, y, n * PARTS + part)


# Up to this many rows (images) a linear tile is a matrix-vector product, bound by reading its
# weights: a plain loop streams its contiguous block once (measured with cold caches: 26-30 GB/s,
# where SGEMM on the same columns of the unpacked (Cin, Cout) matrix read 10-11; in the network,
# `npmobilenet bench --per-layer`, see the README); more rows are worth SGEMM's register blocking.
GEMV_MAX_ROWS = 4


def linear_blocks(w, block_cols):
    """w (Cin, Cout) -> (ceil(Cout / block_cols), Cin, block_cols) float32: column block b of w
    contiguous, the last one zero-padded; what `linear_tile` reads."""
    cin, cout = w.shape
    blocks = -(-cout // block_cols)
    padded = np.zeros((cin, blocks * block_cols), np.float32)
    padded[:, :cout] = w
    return np.ascontiguousarray(padded.reshape(cin, blocks, block_cols).transpose(1, 0, 2))


@njit_inline
def _rows_times_block(x, w_block, y, m0, m1):
    """y[:, m0:m1] = x @ w_block[:, :m1 - m0] for a few rows of x: w_block (Cin, B) read once, row
    by row, each row multiplied into every image's outputs (sums in order of k; no scratch)."""
    n_, k_ = x.shape
    width = m1 - m0
    for n in range(n_):
        out = y[n, m0:m1]
        for c in range(width):
            out[c] = 0
    for q in range(k_):
        row = w_block[q]
        for n in range(n_):
            a = x[n, q]
            out = y[n, m0:m1]
            for c in range(width):
                out[c] += a * row[c]


@njit_serial
def linear_tile(x, w_blocks, bias, act, gemm, y, b):
    """Columns b*B..(b+1)*B-1 of y = act(x @ w + bias). x: (N, Cin), w_blocks: w packed by
    `linear_blocks` (blocks, Cin, B), y: (N, Cout)."""
    m0 = b * w_blocks.shape[2]
    m1 = min(y.shape[1], m0 + w_blocks.shape[2])
    first = np.int64(0)     # not 0: a literal argument would compile the callee a second time
    if x.shape[0] <= GEMV_MAX_ROWS:
        _rows_times_block(x, w_blocks[b], y, m0, m1)
    else:
        gemm_call(gemm, x, w_blocks[b][:, :m1 - m0], y[:, m0:m1])
    bias_act(y, first, x.shape[0], m0, m1, bias, act)


@njit_serial
def linear_tile_packed(x, w, bias, act, block_cols, y, b, span):
    """Columns b*block_cols.. of y = act(x @ w + bias) (act not the sigmoid), w packed in 16-channel
    slivers (`register_tile.packed_weight`, flat): the register tile for any number of rows of x
    (N, Cin). At batch 1 each sliver is streamed once, in order, as `linear_tile`'s loop streams
    its block (the tile's extra rows are repeats of the one, in registers). span: the address of
    `product_span` (`register_tile.span_address()`)."""
    m0 = b * block_cols
    m1 = min(y.shape[1], m0 + block_cols)
    product_rows(x, 0, w, bias, act, y[:0], y, 0, x.shape[0], m0, m1, span)


def _linear(x, w_blocks, bias, act, gemm, y):
    # x: (N, Cin), w_blocks (blocks, Cin, B), bias: (Cout,) -> y: (N, Cout) = act(x @ w + bias).
    for b in prange(w_blocks.shape[0]):
        linear_tile(x, w_blocks, bias, act, gemm, y, b)


@njit_serial_strict
def _source(o, scale, size):
    """Output position o's source along an axis of `size` pixels (`scale` = size / output size):
    the half-pixel rule of `ops/resize.py`, in float32 as it computes it there: (lower pixel,
    upper pixel, weight of the lower, weight of the upper)."""
    position = max(scale * (_F32(o) + _F32(0.5)) - _F32(0.5), _F32(0))
    lower = min(np.int64(position), size - 1)     # a cast is floor: position >= 0
    upper = min(lower + 1, size - 1)
    weight_upper = position - _F32(lower)
    return lower, upper, _F32(1) - weight_upper, weight_upper


@njit_serial_strict
def resize_tile(x, gate, rows, y, t):
    """Output rows t*rows.. (over images and rows) of y = bilinear resize of x, or of x times
    gate[image] per channel when `gate` is not empty. x: (N, H, W, C), gate: (N, C) or (0, 1),
    y: (N, Ho, Wo, C). Without fast-math, so that its serial and parallel builds agree bit for bit."""
    images, height, width, channels = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    scale_h, scale_w = _F32(height) / _F32(out_h), _F32(width) / _F32(out_w)
    for row in range(t * rows, min((t + 1) * rows, images * out_h)):
        n, oh = row // out_h, row % out_h
        top, bottom, a, b = _source(oh, scale_h, height)
        x_top, x_bottom, y_row = x[n, top], x[n, bottom], y[n, oh]
        for ow in range(out_w):
            left, right, p, q = _source(ow, scale_w, width)
            if gate.shape[0] > 0:
                g = gate[n]
                for c in range(channels):
                    y_row[ow, c] = (a * (p * (x_top[left, c] * g[c]) + q * (x_top[right, c] * g[c]))
                                    + b * (p * (x_bottom[left, c] * g[c]) + q * (x_bottom[right, c] * g[c])))
            else:
                for c in range(channels):
                    y_row[ow, c] = (a * (p * x_top[left, c] + q * x_top[right, c])
                                    + b * (p * x_bottom[left, c] + q * x_bottom[right, c]))


def _linear_packed(x, w, bias, act, block_cols, y, span):
    # the same on packed slivers: column blocks of block_cols (a multiple of 16)
    for b in prange((y.shape[1] + block_cols - 1) // block_cols):
        linear_tile_packed(x, w, bias, act, block_cols, y, b, span)


def _resize(x, gate, rows, y):
    # x: (N, H, W, C) [* gate (N, C)] -> y: (N, Ho, Wo, C), bilinear. Blocks of output rows.
    for t in prange((y.shape[0] * y.shape[1] + rows - 1) // rows):
        resize_tile(x, gate, rows, y, t)


# (serial, parallel) builds (config.serial_and_parallel gives the parallel build its own cache file);
# module attributes, so that tests/test_config.py checks their options
_squeeze_excite_gate_serial, _squeeze_excite_gate_parallel = serial_and_parallel(_squeeze_excite_gate)
_global_avg_pool_serial, _global_avg_pool_parallel = serial_and_parallel(_global_avg_pool)
_linear_serial, _linear_parallel = serial_and_parallel(_linear)
_linear_packed_serial, _linear_packed_parallel = serial_and_parallel(_linear_packed)
_resize_serial, _resize_parallel = serial_and_parallel(_resize)
SE_GATE = (_squeeze_excite_gate_serial, _squeeze_excite_gate_parallel)
GLOBAL_POOL = (_global_avg_pool_serial, _global_avg_pool_parallel)
LINEAR = (_linear_serial, _linear_parallel)
LINEAR_PACKED = (_linear_packed_serial, _linear_packed_parallel)
RESIZE = (_resize_serial, _resize_parallel)
