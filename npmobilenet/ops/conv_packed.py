"""The standard convolution's fused-inference tile on AVX-512 or AVX2: the register tile
(`ops/register_tile.py`) over receptive fields, read where they lie in x.

In NHWC the receptive field of output pixel (oh, ow) of a KHxKW convolution is KH runs of KW*Cin
contiguous numbers, one per input row (dilation 1). `conv.conv_tile`'s GEMM path gathers each
field into a row of a workspace block, then multiplies the block by SGEMM; here the register tile
reads interior pixels' fields in place, a block of neighbours at a time (`register_tile.product_span`
with KH runs), and only pixels whose taps reach the padding are gathered (`conv.gather_field`,
zeros for the padding), then multiplied a block (`register_tile.ROWS` pixels) at a time (into
the workspace, then copied to their places in y, which need not be evenly spaced). Both sum each output's taps in (i, j, c)
order: the same bits whichever way a pixel went. The stem (3x3 over RGB) runs it too.
"""
import numpy as np
from numba import prange

from npmobilenet.config import njit_serial, serial_and_parallel
from npmobilenet.ops.conv import gather_field
from npmobilenet.ops.register_tile import ROWS, call_span


@njit_serial
def workspace_rows(tile, k, cout):
    """Rows (of k = KH*KW*Cin numbers) of a worker's workspace block: a gathered field per output
    pixel of a tile, then room for a block's `ROWS` output pixels (`conv_tile_packed` computes a
    group of gathered fields there, then copies each pixel's outputs to its place in y)."""
    return tile + -(-ROWS * cout // k)


@njit_serial
def conv_tile_packed(x, w, kernel_h, kernel_w, bias, act, stride_h, stride_w, pad_top, pad_left, dilation_h,
                     dilation_w, block, tile, y, t, span):
    """Output pixels t*tile..(t+1)*tile-1 of y = act(conv(x, w) + bias), as `conv.conv_tile`, on w
    packed as a (KH*KW*Cin, Cout) matrix (`register_tile.packed_weight`, flattened); block:
    (`workspace_rows`, KH*KW*Cin), this worker's, for the gathered fields. The interior pixels of
    an output row are read from x (one `product_span` per row); the others are gathered and
    multiplied `ROWS` at a time; `product_span` at address `span` (`register_tile.span_address()`)."""
    height, width, cin = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w, cout = y.shape[1], y.shape[2], y.shape[3]
    pixels = y.shape[0] * out_h * out_w
    p0 = t * tile
    p1 = min(pixels, p0 + tile)
    x_rows = x.reshape(x.shape[0], height, width * cin)
    flat_x, flat_y, flat_block = x.reshape(-1), y.reshape(-1), block.reshape(-1)
    k_ = block.shape[1]
    results = flat_block.shape[0] - ROWS * cout       # where a group of gathered fields' outputs go first
    one, zero = np.int64(1), np.int64(0)              # the int64s product_span is called with (SPAN)
    direct = dilation_h == 1 and dilation_w == 1
    # columns with every tap inside: `depthwise_rows._interior_columns` at dilation 1, written out
    # (called across modules, it left the stem 5% slower: 0.372 against 0.353 ms)
    lo = min(max(-(-pad_left // stride_w), 0), out_w)
    hi = max(min((width - 1 + pad_left - (kernel_w - 1)) // stride_w + 1, out_w), lo)
    outputs = np.empty(ROWS, np.int64)        # where the pending gathered fields' outputs go
    pending, used = zero, zero                # gathered fields waiting for a block (the last
                                              # `pending` of the `used` block rows)
    p = p0
    n = p0 // (out_h * out_w)                 # pixel p is (n, oh, ow), advanced with p
    oh = (p0 - n * out_h * out_w) // out_w
    ow = p0 % out_w
    while p < p1:
        top = oh * stride_h - pad_top
        if direct and lo <= ow < hi and top >= 0 and top + kernel_h <= height:
            count = min(hi - ow, p1 - p)         # the row's interior pixels in this tile
            base = ((n * height + top) * width + ow * stride_w - pad_left) * cin
            call_span(span, (flat_x, base, stride_w * cin, kernel_w * cin, kernel_h, width * cin, w, bias, act,
                             flat_y[:0], flat_y, p * cout, cout, count, zero, cout))
        else:
            gather_field(x_rows, cin, n, oh, ow, block[used], kernel_h, kernel_w, stride_h, stride_w, pad_top,
                         pad_left, dilation_h, dilation_w)
            outputs[pending] = p * cout
            pending, used, count = pending + 1, used + 1, 1
        p, ow = p + count, ow + count
        if ow == out_w:
            ow, oh = 0, oh + 1
            if oh == out_h:
                oh, n = 0, n + 1
        if pending == ROWS or (pending > 0 and p == p1):
            call_span(span, (flat_block, (used - pending) * k_, k_, k_, one, zero, w, bias, act, flat_y[:0], flat_block,
                             results, cout, pending, zero, cout))
            for i in range(pending):
                at, source = outputs[i], results + i * cout
                for c in range(cout):
                    flat_y[at + c] = flat_block[source + c]
            pending = zero


def _conv_packed_forward(x, w, kernel_h, kernel_w, bias, act, stride_h, stride_w, pad_top, pad_left, dilation_h,
                         dilation_w, cols, tile, y, span):
    # every tile of `conv_tile_packed`, as `_conv_forward` runs `conv_tile`'s
    tiles = (y.shape[0] * y.shape[1] * y.shape[2] + tile - 1) // tile
    workers = cols.shape[0]
    for worker in prange(workers):
        for t in range(worker, tiles, workers):
            conv_tile_packed(x, w, kernel_h, kernel_w, bias, act, stride_h, stride_w, pad_top, pad_left, dilation_h,
                             dilation_w, cols[worker], tile, y, t, span)


CONV_PACKED_FORWARD = serial_and_parallel(_conv_packed_forward)
