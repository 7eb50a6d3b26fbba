"""Standard (dense) convolution: one forward tile for training, fused inference and int8; im2col
and BLAS for the gradients.

x `(N, H, W, Cin)`, w `(KH, KW, Cin, Cout)` -> y `(N, Ho, Wo, Cout)`:

    y[n, oh, ow, :] = sum_{i, j} x[n, oh*sh - pt + i*rh, ow*sw - pl + j*rw, :] @ w[i, j]

Cost: N * Ho * Wo * KH * KW * Cin * Cout MACs (MobileNet V1 paper, Eq. (1)). In V1-V3 the
standard convolution is only the stem (3x3, stride 2, Cin = 3); V4 adds 3x3 convolutions of 24
to 32 input channels (Conv-Small's first blocks, the fused inverted bottlenecks of Medium and Large).

Forward: `conv_tile` computes a block of output pixels (flattened over N, Ho, Wo) and finishes
it with its epilogue (bias, activation; `ops/epilogue.py`). Two ways, chosen by shape:
  * the stem (3x3 over 3 channels): the 27 taps directly, unrolled, the output-channel loop
    innermost and vectorised, its sum in a register;
  * any other kernel: the block's receptive fields gathered (im2col of the block only) into the
    worker's workspace block `(tile, KH*KW*Cin)`, times w as a `(KH*KW*Cin, Cout)` matrix by
    OpenBLAS's GEMM called from Numba (`ops/blas.py`; DGEMM for float64).
Training's `conv2d` (float32/64, any dilation and padding), fused inference and the exact int8
path run it. Measured (benchmarks/techniques.py conv, one thread), against the techniques it
replaced: on V4's 3x3 layers of 24-32 input channels at 224x224 the gathered-block GEMM took
0.68/0.45/2.6/1.5 ms at batch 1 where whole-batch im2col + np.matmul (training's) took
1.06/0.53/2.9/1.7 and fused inference's tap-by-tap loop (`_conv_pixel`) 4.1/2.5/5.8/9.9; at
batch 32, 33/18/86/54 ms against 57/21/106/70 and 119/89/377/271. On the stem the direct taps
took 0.43 ms (batch 1) and 21 ms (batch 32) against 0.52 and 35 ms for im2col + np.matmul. One
place the old technique stays ahead: training's demo stem (64 images of 32x32, 16x16 outputs, an
eighth of them border pixels) took 0.54-0.62 ms against 0.50-0.52 for im2col + np.matmul, about
0.3% of a training step (unchanged within noise: 34.8 against 34.9 ms), so one technique serves
all. (The gathered-block GEMM on the stem, K = 27, took 0.73 ms there.)

Backward, with a whole-batch im2col (`_im2col`, prange over batch x output rows; each writes its
own rows of cols):

    cols (N*Ho*Wo, KH*KW*Cin)   row = one output pixel's receptive field, in (i, j, c) order
    dw   = cols.T @ dy                                          BLAS
    dx   = col2im(dy @ w.reshape(KH*KW*Cin, Cout).T)            BLAS, then a Numba scatter-add

`_col2im` runs prange over the batch: receptive fields of one image overlap, those of two images
never do, so each iteration adds into its own image only.
"""
import numpy as np
from numba import prange

from npmobilenet.config import choose_kernel, get_num_threads, njit_serial, serial_and_parallel
from npmobilenet.ops.blas import gemm_address, matmul, single_threaded_blas
from npmobilenet.ops.epilogue import IDENTITY, _U, activate_run, bias_act, bias_act_run
from npmobilenet.ops.geometry import (
    check_array,
    check_dy,
    check_same_dtype,
    conv_geometry,
)


# -- receptive fields: im2col ------------------------------------------------------------------------
@njit_serial
def gather_field(x_rows, channels, n, oh, ow, field, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left,
                  dilation_h, dilation_w):
    """field (KH*KW*Cin,) = the receptive field of output pixel (n, oh, ow) in (i, j, c) order, zeros
    where a tap lies in the padding. x_rows: x as (N, H, W*Cin)."""
    height, width = x_rows.shape[1], x_rows.shape[2] // channels
    run = kernel_w * channels  # one kernel row of a receptive field
    left = ow * stride_w - pad_left
    inside = left >= 0 and left + (kernel_w - 1) * dilation_w < width
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
                    src = x_rows[n, ih, iw * channels:(iw + 1) * channels]
                    for c in range(channels):
                        tap[c] = src[c]


def _im2col(x, cols, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w):
    # x: (N, H, W, Cin) -> cols: (N, Ho, Wo, KH*KW*Cin) (the weight gradient's left operand).
    batch, height, width, channels = x.shape
    out_height, out_width = cols.shape[1], cols.shape[2]
    x_rows = x.reshape(batch, height, width * channels)
    for row in prange(batch * out_height):
        n = row // out_height
        oh = row - n * out_height
        for ow in range(out_width):
            gather_field(x_rows, channels, n, oh, ow, cols[n, oh, ow], kernel_h, kernel_w, stride_h, stride_w,
                          pad_top, pad_left, dilation_h, dilation_w)


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


# -- the forward tile: x (N, H, W, Cin), w (KH, KW, Cin, Cout) -> y (N, Ho, Wo, Cout) -----------------
def uses_direct_path(kernel_h, kernel_w, in_channels, dilation_h=1, dilation_w=1):
    """Whether the tile computes taps directly (a 3x3 kernel over 3 channels: every MobileNet
    stem) rather than by gathering receptive fields and one GEMM. Shapes only."""
    return kernel_h == 3 and kernel_w == 3 and in_channels == 3 and dilation_h == 1 and dilation_w == 1


_direct_path = njit_serial(uses_direct_path)


def tile_pixels(pixels, in_channels, kernel_h, kernel_w):
    """Output pixels per tile (shapes only; flattened over images and rows).

    Measured (benchmarks/techniques.py conv): the GEMM path keeps SGEMM's speed from 64 rows on
    and its gathered block (rows x KH*KW*Cin) in L2 up to about 128 rows; an even number of tiles
    of at most 128 keeps both cores busy to the end of a layer.
    """
    tiles = 2 * max(1, -(-pixels // 256))
    return max(1, -(-pixels // tiles))


def workspace_shape(workers, tile, kernel_h, kernel_w, in_channels, dilation_h=1, dilation_w=1):
    """The blocks the GEMM path gathers receptive fields into, one per worker (a worker runs its
    tiles one after another in its block): (workers, tile, KH*KW*Cin), blocks of no rows for the
    direct path, which needs none."""
    direct = uses_direct_path(kernel_h, kernel_w, in_channels, dilation_h, dilation_w)
    return (workers, 0 if direct else tile, kernel_h * kernel_w * in_channels)


@njit_serial
def _conv3x3_rgb_row(x, w, bias, act, y, n, oh, ih, stride_w, pad_left, ow_lo, ow_hi):
    """y[n, oh, ow] = the 27 taps of a 3x3 kernel over 3 input channels, for columns ow_lo..ow_hi-1
    whose taps are all inside x. The tap loops have constant trip counts: the compiler unrolls
    them, leaving the output-channel loop innermost, vectorised, its sum in a register (im2col
    and a K=27 GEMM took 1.0-1.5x the time at batch 1, 1.4-2x at batch 32). Unsigned indices: see
    `epilogue._U`; a call per row, not per pixel (a call per pixel ran 3x slower)."""
    un, uoh, uih = _U(n), _U(oh), _U(ih)
    has_bias = bias.shape[0] > 0
    for ow in range(ow_lo, ow_hi):
        uow, uiw = _U(ow), _U(ow * stride_w - pad_left)
        for co in range(y.shape[3]):
            s = bias[co] if has_bias else y.dtype.type(0)
            for i in range(3):
                for j in range(3):
                    for ci in range(3):
                        s += x[un, uih + _U(i), uiw + _U(j), _U(ci)] * w[i, j, ci, co]
            y[un, uoh, uow, co] = s


@njit_serial
def _conv_pixel(x, w, y_pixel, n, ih0, iw0):
    """y_pixel = the taps at (ih0, iw0) that land inside x: the direct path's pixels whose taps
    reach the padding (few: the image's border); the caller adds the bias."""
    height, width, in_channels = x.shape[1], x.shape[2], x.shape[3]
    y_pixel[:] = 0
    for i in range(w.shape[0]):
        ih = ih0 + i
        if ih < 0 or ih >= height:
            continue
        for j in range(w.shape[1]):
            iw = iw0 + j
            if iw < 0 or iw >= width:
                continue
            for ci in range(in_channels):
                a, w_row = x[n, ih, iw, ci], w[i, j, ci]
                for co in range(y_pixel.shape[0]):
                    y_pixel[co] += a * w_row[co]


@njit_serial
def conv_direct_tile(x, w, bias, act, stride_h, stride_w, pad_top, pad_left, tile, y, t):
    """`conv_tile`'s direct path: output pixels t*tile..(t+1)*tile-1 of a 3x3 convolution over 3
    input channels (dilation 1), tap by tap. Fused inference calls it alone for the stem, so that
    a model whose only standard convolution is its stem never compiles the GEMM path."""
    height, width = x.shape[1], x.shape[2]
    out_h, out_w = y.shape[1], y.shape[2]
    pixels = y.shape[0] * out_h * out_w
    p0 = t * tile
    p1 = min(pixels, p0 + tile)
    y_rows = y.reshape(pixels, y.shape[3])
    # output columns whose taps all land inside x
    col_lo = min(out_w, (pad_left + stride_w - 1) // stride_w)
    col_hi = max(col_lo, min(out_w, (width - 3 + pad_left) // stride_w + 1))
    r = p0 // out_w
    while r * out_w < p1:                # the tile's pieces of output rows r = n * Ho + oh
        n = r // out_h
        oh = r - n * out_h
        ih = oh * stride_h - pad_top
        a, b = max(p0 - r * out_w, 0), min(p1 - r * out_w, out_w)
        lo, hi = a, a                    # the columns done directly
        if ih >= 0 and ih + 3 <= height:
            lo, hi = min(max(col_lo, a), b), max(min(col_hi, b), a)
            _conv3x3_rgb_row(x, w, bias, act, y, n, oh, ih, stride_w, pad_left, lo, hi)
            if act != IDENTITY:
                activate_run(y_rows[r * out_w + lo:r * out_w + hi].reshape(-1), act)
        for ow in range(a, b):
            if ow < lo or ow >= hi:
                # (the bias in a pass of its own: folded into _conv_pixel's sum, the compiler
                # contracted it differently inlined in the op table and in the layer's kernel,
                # whose outputs then differed in the last bit; test_inference_program)
                _conv_pixel(x, w, y[n, oh, ow], n, ih, ow * stride_w - pad_left)
                if bias.shape[0] > 0:
                    bias_act_run(y[n, oh, ow], bias, act)
        r += 1


@njit_serial
def conv_tile(x, w, bias, act, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, block, tile, gemm,
              y, t):
    """Output pixels t*tile..(t+1)*tile-1 (over N*Ho*Wo, row-major) of y = act(conv(x, w) + bias).

    x: (N, H, W, Cin), w: (KH, KW, Cin, Cout), y: (N, Ho, Wo, Cout), all C-contiguous; bias:
    (Cout,), or empty for none (no epilogue: training); act: an `ops.epilogue` code; block:
    (tile, KH*KW*Cin), the caller's block of `workspace_shape` (not read by the direct path);
    gemm: the address of the GEMM of x's dtype (`ops/blas.py`). A 3x3 kernel over 3
    channels is computed tap by tap (`conv_direct_tile`); any other gathers the tile's receptive
    fields into the block and multiplies them by w as a (KH*KW*Cin, Cout) matrix.
    """
    in_channels = x.shape[3]
    kernel_h, kernel_w, _, out_channels = w.shape
    if _direct_path(kernel_h, kernel_w, in_channels, dilation_h, dilation_w):
        conv_direct_tile(x, w, bias, act, stride_h, stride_w, pad_top, pad_left, tile, y, t)
        return
    p0, p1 = _gather_tile(x, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
                          block, tile, y, t)
    y_rows = y.reshape(y.shape[0] * y.shape[1] * y.shape[2], out_channels)
    w_matrix = w.reshape(kernel_h * kernel_w * in_channels, out_channels)
    # (np.int64(0), not 0: a literal argument would compile the callee a second time)
    matmul(gemm, block, np.int64(0), p1 - p0, w_matrix, np.int64(0), out_channels, y_rows[p0:p1])
    if bias.shape[0] > 0:
        bias_act(y_rows, p0, p1, np.int64(0), out_channels, bias, act)


@njit_serial
def _gather_tile(x, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, block, tile,
                 y, t):
    """The receptive fields of tile t's output pixels, gathered into rows of block; (p0, p1)."""
    height, width, in_channels = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = y.shape[1], y.shape[2]
    pixels = y.shape[0] * out_h * out_w
    p0 = t * tile
    p1 = min(pixels, p0 + tile)
    x_rows = x.reshape(x.shape[0], height, width * in_channels)
    for p in range(p0, p1):
        n = p // (out_h * out_w)
        oh = (p - n * out_h * out_w) // out_w
        gather_field(x_rows, in_channels, n, oh, p % out_w, block[p - p0], kernel_h, kernel_w, stride_h,
                      stride_w, pad_top, pad_left, dilation_h, dilation_w)
    return p0, p1


def _conv_forward(x, w, bias, act, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, cols, tile, gemm,
                  y):
    # x: (N, H, W, Cin) -> y: (N, Ho, Wo, Cout): every tile of `conv_tile` (disjoint pixels of y).
    # cols: `workspace_shape(workers, ...)`; worker k takes tiles k, k + workers, ... in its block.
    # (Not a block per thread id: numba.get_thread_id() crashes in a kernel loaded from the cache
    # before any parallel region ran, numba issue #9720.)
    tiles = (y.shape[0] * y.shape[1] * y.shape[2] + tile - 1) // tile
    workers = cols.shape[0]
    for worker in prange(workers):
        for t in range(worker, tiles, workers):
            conv_tile(x, w, bias, act, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, cols[worker],
                      tile, gemm, y, t)


_conv_forward_serial, _conv_forward_parallel = serial_and_parallel(_conv_forward)
CONV_FORWARD = (_conv_forward_serial, _conv_forward_parallel)


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
    """Standard convolution (the forward tile, `conv_tile`). x `(N, H, W, Cin)`, w `(KH, KW, Cin, Cout)`
    -> y `(N, Ho, Wo, Cout)`.

    `stride`, `dilation`: int or `(vertical, horizontal)`; `padding`: int, `(ph, pw)` or
    `((top, bottom), (left, right))`. Same dtype out as in (float32 or float64).
    """
    x, w = _check_inputs(x, w)
    kernel_h, kernel_w, cin, cout = w.shape
    out_h, out_w, (sh, sw), (pt, _, pl, _), (rh, rw) = conv_geometry(x.shape, kernel_h, kernel_w, stride, padding,
                                                                     dilation)
    w = np.ascontiguousarray(w)
    y = np.empty((x.shape[0], out_h, out_w, cout), x.dtype)
    tile = tile_pixels(y.size // cout, cin, kernel_h, kernel_w)
    kernel = choose_kernel(*CONV_FORWARD, y.size * kernel_h * kernel_w * cin)
    workers = get_num_threads() if kernel is _conv_forward_parallel else 1
    cols = np.empty(workspace_shape(workers, tile, kernel_h, kernel_w, cin, rh, rw), x.dtype)
    with single_threaded_blas():
        kernel(x, w, np.zeros(0, x.dtype), IDENTITY, sh, sw, pt, pl, rh, rw, cols, tile, gemm_address(x.dtype), y)
    return y


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
