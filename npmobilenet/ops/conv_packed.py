"""The standard convolution's fused-inference tile on AVX-512: `ops/matmul_avx512.py`'s register
tile over receptive fields, read where they lie in x.

In NHWC the receptive field of output pixel (oh, ow) of a KHxKW convolution is KH runs of KW*Cin
contiguous numbers, one per input row (dilation 1). `conv.conv_tile`'s GEMM path gathers each
field into a row of a workspace block, then multiplies the block by SGEMM; here the register tile
reads interior pixels' fields in place, 8 neighbours at a time (`matmul_avx512.product_group`
with KH runs), and only pixels whose taps reach the padding are gathered (`conv.gather_field`,
zeros for the padding), then multiplied 8 at a time. Both sum each output's taps in (i, j, c)
order: the same bits whichever way a pixel went. The stem (3x3 over RGB) runs it too.
"""
import numpy as np
from numba import prange

from npmobilenet.config import njit_serial, serial_and_parallel
from npmobilenet.ops.conv import gather_field
from npmobilenet.ops.matmul_avx512 import PIXELS, product_group


@njit_serial
def conv_tile_packed(x, w, kernel_h, kernel_w, bias, act, stride_h, stride_w, pad_top, pad_left, dilation_h,
                     dilation_w, block, tile, y, t):
    """Output pixels t*tile..(t+1)*tile-1 of y = act(conv(x, w) + bias), as `conv.conv_tile`, on w
    packed as a (KH*KW*Cin, Cout) matrix (`matmul_avx512.packed_weight`, flattened); block: (tile,
    KH*KW*Cin), this worker's, for the gathered fields. Runs of up to 8 interior pixels of one
    output row are read from x; the others are gathered and multiplied 8 at a time."""
    height, width, cin = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w, cout = y.shape[1], y.shape[2], y.shape[3]
    pixels = y.shape[0] * out_h * out_w
    p0 = t * tile
    p1 = min(pixels, p0 + tile)
    x_rows = x.reshape(x.shape[0], height, width * cin)
    flat_x, flat_y, flat_block = x.reshape(-1), y.reshape(-1), block.reshape(-1)
    direct = dilation_h == 1 and dilation_w == 1
    # columns with every tap inside: `depthwise_rows._interior_columns` at dilation 1, written out
    # (called across modules, it left the stem 5% slower: 0.372 against 0.353 ms)
    lo = min(max(-(-pad_left // stride_w), 0), out_w)
    hi = max(min((width - 1 + pad_left - (kernel_w - 1)) // stride_w + 1, out_w), lo)
    outputs = np.empty(PIXELS, np.int64)      # where the pending gathered fields' outputs go
    pending, used = 0, 0                      # gathered fields waiting for a group of 8 (the last
                                              # `pending` of the `used` block rows)
    p = p0
    n = p0 // (out_h * out_w)                 # pixel p is (n, oh, ow), advanced with p
    oh = (p0 - n * out_h * out_w) // out_w
    ow = p0 % out_w
    while p < p1:
        top = oh * stride_h - pad_top
        if direct and lo <= ow < hi and top >= 0 and top + kernel_h <= height:
            count = min(PIXELS, hi - ow, p1 - p)
            base = ((n * height + top) * width + ow * stride_w - pad_left) * cin
            step = stride_w * cin
            r = (base, base + min(1, count - 1) * step, base + min(2, count - 1) * step,
                 base + min(3, count - 1) * step, base + min(4, count - 1) * step, base + min(5, count - 1) * step,
                 base + min(6, count - 1) * step, base + min(7, count - 1) * step)
            q = (p * cout, (p + 1) * cout, (p + 2) * cout, (p + 3) * cout, (p + 4) * cout, (p + 5) * cout,
                 (p + 6) * cout, (p + 7) * cout)
            product_group(flat_x, r, kernel_w * cin, kernel_h, width * cin, w, bias, act, flat_y[:0], flat_y, q, count,
                          np.int64(0), cout)
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
        if pending == PIXELS:
            _product_fields(flat_block, block.shape[1], used - pending, outputs, pending, w, bias, act, flat_y, cout)
            pending = 0
    if pending > 0:
        _product_fields(flat_block, block.shape[1], used - pending, outputs, pending, w, bias, act, flat_y, cout)


@njit_serial
def _product_fields(block, k_, first, outputs, count, w, bias, act, y, cout):
    """The gathered fields in block rows first..first+count-1 (block flat, rows of k_) times w,
    into y.flat[outputs[i]] (y flat)."""
    last = count - 1
    r = (first * k_, (first + min(1, last)) * k_, (first + min(2, last)) * k_, (first + min(3, last)) * k_,
         (first + min(4, last)) * k_, (first + min(5, last)) * k_, (first + min(6, last)) * k_,
         (first + min(7, last)) * k_)
    q = (outputs[0], outputs[min(1, last)], outputs[min(2, last)], outputs[min(3, last)], outputs[min(4, last)],
         outputs[min(5, last)], outputs[min(6, last)], outputs[min(7, last)])
    # one run per field, no residual (np.int64: literals would compile product_group again)
    product_group(block, r, k_, np.int64(1), np.int64(0), w, bias, act, y[:0], y, q, count, np.int64(0), cout)


def _conv_packed_forward(x, w, kernel_h, kernel_w, bias, act, stride_h, stride_w, pad_top, pad_left, dilation_h,
                         dilation_w, cols, tile, y):
    # every tile of `conv_tile_packed`, as `_conv_forward` runs `conv_tile`'s
    tiles = (y.shape[0] * y.shape[1] * y.shape[2] + tile - 1) // tile
    workers = cols.shape[0]
    for worker in prange(workers):
        for t in range(worker, tiles, workers):
            conv_tile_packed(x, w, kernel_h, kernel_w, bias, act, stride_h, stride_w, pad_top, pad_left, dilation_h,
                             dilation_w, cols[worker], tile, y, t)


CONV_PACKED_FORWARD = serial_and_parallel(_conv_packed_forward)
