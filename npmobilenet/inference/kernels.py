"""Fused inference kernels, one per layer kind: each computes a batch-norm-folded layer in one pass.

Every layer is `y = act(conv(x, w) + b) [+ residual]` computed as tiles, each finished (bias,
activation, residual: its *epilogue*, `ops/epilogue.py`) while still in cache. A kernel is a loop
over its layer's tiles, compiled serial and parallel (`prange` over the tiles):

- `POINTWISE`, `DEPTHWISE`, `CONV2D`: the convolution kinds' tiles and kernels in `npmobilenet.ops`
  (`pointwise_tile`: SGEMM called from Numba on a block of rows and columns, optionally SE-gated
  input; `depthwise_tile`: two output rows, also their sums for SE; `conv_tile`: a block of
  output pixels, the stem's 3x3 RGB taps directly, any other kernel as gathered receptive fields
  times SGEMM), the same tiles training's forward and the exact int8 path run. Where the CPU has
  AVX-512 or AVX2, the fused model runs `ops.pointwise.POINTWISE_PACKED_FORWARD` and
  `ops.conv_packed.CONV_PACKED_FORWARD` instead: the same tiles, the product of a weight packed once
  summed and finished in registers (`ops/register_tile.py`; `packed=True` below), and
  `ops.depthwise_avx512`'s kernels for 5x5 depthwise layers and 3x3 ones at strides 1 and 2
  (blocks of 8 pixels by 16 channels in registers, 8 by 8 with AVX2).
- `SE_GATE`, `GLOBAL_POOL`, `LINEAR`, `RESIZE`: `tiles.py`.

The tiling (`tiling.py`, and the ops' own rules) depends on shapes only, so every output element
is computed by the same instructions whatever the number of threads: results are bitwise
identical across thread counts. The fused model runs these tiles through one op table
(`program.py`); the kernels run a layer alone (`MemoryPlan.calls`, `bench --per-layer`, tests).

The public functions below validate their arguments, allocate, and call a kernel: what the tests
call (the fused model calls the kernels with its planned buffers).
"""
import numpy as np

from npmobilenet.config import get_num_threads
from npmobilenet.inference import tiles
from npmobilenet.inference.tiling import linear_block_cols, pointwise_tiles, resize_tile_rows
from npmobilenet.ops import conv as conv_ops
from npmobilenet.ops import conv_packed
from npmobilenet.ops import depthwise as depthwise_ops
from npmobilenet.ops import depthwise_avx512
from npmobilenet.ops import pointwise as pointwise_ops
from npmobilenet.ops import register_tile
from npmobilenet.ops.blas import numba_gemm_address, sgemm_address, single_threaded_blas
from npmobilenet.ops.epilogue import IDENTITY, LINEAR_ACTIVATIONS, NO_ROW_SUMS, NO_ROWS, activation_code
from npmobilenet.ops.geometry import output_size
from npmobilenet.ops.pointwise import POINTWISE_FORWARD

POINTWISE = POINTWISE_FORWARD
DEPTHWISE = depthwise_ops.DEPTHWISE_FORWARD
CONV2D = conv_ops.CONV_FORWARD
SE_GATE, GLOBAL_POOL, LINEAR, RESIZE = tiles.SE_GATE, tiles.GLOBAL_POOL, tiles.LINEAR, tiles.RESIZE
LINEAR_PACKED = tiles.LINEAR_PACKED
ALL_KERNELS = (POINTWISE, DEPTHWISE, SE_GATE, CONV2D, GLOBAL_POOL, LINEAR, RESIZE)


def _f32(name, a, ndim, layout):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array {layout}, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have rank {ndim} {layout}, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_register_tile():
    if not register_tile.available():
        raise RuntimeError("packed=True needs a CPU with AVX-512, or AVX2 and FMA (ops.register_tile)")


def _run(pair, parallel, *args):
    with single_threaded_blas():
        return (pair[1] if parallel else pair[0])(*args)


def _sides(stride, padding):
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    pt, pb, pl, pr = (padding,) * 4 if np.isscalar(padding) else padding
    return (sh, sw), (pt, pb, pl, pr)


def _output_hw(x, kernel, stride, padding):
    (h, w), (kh, kw), (sh, sw), (pt, pb, pl, pr) = x.shape[1:3], kernel, stride, padding
    ho, wo = output_size(h, kh, sh, pt, pb, 1), output_size(w, kw, sw, pl, pr, 1)
    if ho < 1 or wo < 1:
        raise ValueError(f"no output: input {h}x{w}, kernel {kernel}, padding {padding}")
    return ho, wo


def pointwise_conv(x, w, bias, activation=None, residual=None, gate=None, parallel=True, use_blas=True, packed=False):
    """act(x' @ w + bias) [+ residual] over NHWC activations, x' = x * gate (per image, channel).

    x: (N, H, W, K), w: (K, M), bias: (M,), residual: (N, H, W, M) or None,
    gate: (N, K) or None -> y: (N, H, W, M). A residual comes with no activation (the linear
    bottleneck). x is not modified (the fused model lets the kernel scale its input in place).
    With `packed` (a CPU with AVX-512, or AVX2 and FMA), the tile fused inference runs there: w
    packed once, the product and epilogue in registers (`ops.register_tile`); else SGEMM (`use_blas`) or
    Numba's matrix product, then the epilogue.
    """
    x = _f32("x", x, 4, "(N, H, W, K)").copy()
    w = _f32("w", w, 2, "(K, M)")
    bias = _f32("bias", bias, 1, "(M,)")
    n, h, wd, k = x.shape
    if w.shape[0] != k or bias.shape != (w.shape[1],):
        raise ValueError(f"w must be ({k}, M) and bias (M,), got w {w.shape}, bias {bias.shape}")
    act = activation_code(activation)
    m = w.shape[1]
    rows = n * h * wd
    res = NO_ROWS
    if residual is not None:
        if act != IDENTITY:
            raise ValueError("a residual add is fused only into a linear (activation=None) projection")
        res = _f32("residual", residual, 4, "(N, H, W, M)")
        if res.shape != (n, h, wd, m):
            raise ValueError(f"residual must have shape {(n, h, wd, m)}, got {res.shape}")
        res = res.reshape(rows, m)
    g = NO_ROWS
    if gate is not None:
        g = _f32("gate", gate, 2, "(N, K)")
        if g.shape != (n, k):
            raise ValueError(f"gate must have shape {(n, k)}, got {g.shape}")
    y = np.empty((rows, m), np.float32)
    tile_rows, tile_cols = pointwise_tiles(rows, k, m)
    if packed:
        _check_register_tile()
        _run(pointwise_ops.POINTWISE_PACKED_FORWARD, parallel, x.reshape(rows, k),
             register_tile.packed_weight(w).reshape(-1), bias, act, res, g, h * wd, tile_rows, tile_cols, y,
             register_tile.span_address())
        return y.reshape(n, h, wd, m)
    _run(POINTWISE, parallel, x.reshape(rows, k), w, bias, act, res, g, h * wd,
         tile_rows, tile_cols, sgemm_address() if use_blas else numba_gemm_address(np.float32), y)
    return y.reshape(n, h, wd, m)


def depthwise_conv(x, w, bias, activation=None, stride=1, padding=0, with_row_sums=False, parallel=True,
                   packed=False):
    """act(depthwise(x, w) + bias). x: (N, H, W, C), w: (KH, KW, C), bias: (C,) -> y: (N, Ho, Wo, C).

    stride: int or (sh, sw); padding: int or (top, bottom, left, right). With `with_row_sums`,
    also returns the sums over each output row, (N, Ho, C). With `packed` (a CPU with AVX-512 or AVX2;
    a 5x5 kernel, or a 3x3 one at strides 1 and 2), the register tile fused inference runs there
    (`ops.depthwise_avx512`).
    """
    x = _f32("x", x, 4, "(N, H, W, C)")
    w = _f32("w", w, 3, "(KH, KW, C)")
    bias = _f32("bias", bias, 1, "(C,)")
    if w.shape[2] != x.shape[3] or bias.shape != (x.shape[3],):
        raise ValueError(f"w must be (KH, KW, {x.shape[3]}) and bias ({x.shape[3]},), got {w.shape}, {bias.shape}")
    (sh, sw), (pt, pb, pl, pr) = _sides(stride, padding)
    n, _, _, c = x.shape
    ho, wo = _output_hw(x, w.shape[:2], (sh, sw), (pt, pb, pl, pr))
    y = np.empty((n, ho, wo, c), np.float32)
    sums = np.empty((n, ho, c), np.float32) if with_row_sums else NO_ROW_SUMS
    if packed:
        _check_register_tile()
        if not depthwise_avx512.takes(w.shape[:2], (sh, sw), (1, 1)):
            raise ValueError(f"packed=True takes a 5x5 kernel, or a 3x3 one at strides 1 and 2; got w of shape "
                             f"{w.shape}, stride {(sh, sw)}")
        k = w.shape[0]
        args = (x, np.ascontiguousarray(w.reshape(k * k, c)), k, k, bias, activation_code(activation), sums, sh, sw,
                pt, pl, 1, 1, y)
        if k == 3:
            _run(depthwise_avx512.DEPTHWISE_3X3_FORWARD, parallel, *args, *depthwise_avx512.callees_3x3())
        else:
            workers = get_num_threads() if parallel else 1
            workspace = np.empty((workers, depthwise_avx512.workspace_elements(ho, wo, c, sh, sw, 1, 1)), np.float32)
            _run(depthwise_avx512.DEPTHWISE_5X5_FORWARD, parallel, *args, workspace,
                 *depthwise_avx512.callees_5x5(sw, 1, 1))
        return (y, sums) if with_row_sums else y
    pixels = depthwise_ops.tile_pixels(c, sw)
    _run(DEPTHWISE, parallel, x, depthwise_ops.tiled_weight(w, pixels), w.shape[0], w.shape[1], np.tile(bias, pixels),
         activation_code(activation), sums, sh, sw, pt, pl, 1, 1, y)
    return (y, sums) if with_row_sums else y


def squeeze_excite_gate(row_sums, count, w_reduce, b_reduce, w_expand, b_expand, parallel=False):
    """SE's gate from the per-row sums of its input. row_sums: (N, Ho, C), count = Ho*Wo,
    w_reduce: (C, S), b_reduce: (S,), w_expand: (S, C), b_expand: (C,) -> gate (N, C)."""
    row_sums = _f32("row_sums", row_sums, 3, "(N, Ho, C)")
    w_reduce, w_expand = _f32("w_reduce", w_reduce, 2, "(C, S)"), _f32("w_expand", w_expand, 2, "(S, C)")
    b_reduce, b_expand = _f32("b_reduce", b_reduce, 1, "(S,)"), _f32("b_expand", b_expand, 1, "(C,)")
    n, _, c = row_sums.shape
    s = w_reduce.shape[1]
    if w_reduce.shape[0] != c or w_expand.shape != (s, c) or b_reduce.shape != (s,) or b_expand.shape != (c,):
        raise ValueError("squeeze_excite_gate: weights do not match row_sums' channels")
    gate = np.empty((n, c), np.float32)
    hidden = np.empty((n * tiles.PARTS, s), np.float32)
    _run(SE_GATE, parallel, row_sums, int(count), w_reduce, b_reduce, tiles.expand_parts(w_expand), b_expand, hidden, gate)
    return gate


def conv2d(x, w, bias, activation=None, stride=1, padding=0, parallel=True, use_blas=True, packed=False):
    """act(conv(x, w) + bias). x: (N, H, W, Cin), w: (KH, KW, Cin, Cout) -> y: (N, Ho, Wo, Cout).
    `packed`: as `pointwise_conv`'s (`ops.conv_packed.conv_tile_packed`, the stem's 3x3 over RGB too)."""
    x = _f32("x", x, 4, "(N, H, W, Cin)")
    w = _f32("w", w, 4, "(KH, KW, Cin, Cout)")
    bias = _f32("bias", bias, 1, "(Cout,)")
    kh, kw, cin, cout = w.shape
    if cin != x.shape[3] or bias.shape != (cout,):
        raise ValueError(f"w must be (KH, KW, {x.shape[3]}, Cout) and bias (Cout,), got {w.shape}, {bias.shape}")
    (sh, sw), (pt, pb, pl, pr) = _sides(stride, padding)
    ho, wo = _output_hw(x, (kh, kw), (sh, sw), (pt, pb, pl, pr))
    y = np.empty((x.shape[0], ho, wo, cout), np.float32)
    tile = conv_ops.tile_pixels(x.shape[0] * ho * wo, cin, kh, kw)
    workers = get_num_threads() if parallel else 1
    if packed:
        _check_register_tile()
        k = kh * kw * cin
        cols = np.empty((workers, conv_packed.workspace_rows(tile, k, cout), k), np.float32)
        _run(conv_packed.CONV_PACKED_FORWARD, parallel, x, register_tile.packed_weight(w.reshape(-1, cout)).reshape(-1),
             kh, kw, bias, activation_code(activation), sh, sw, pt, pl, 1, 1, cols, tile, y,
             register_tile.span_address())
        return y
    cols = np.empty(conv_ops.workspace_shape(workers, tile, kh, kw, cin), np.float32)
    _run(CONV2D, parallel, x, w, bias, activation_code(activation), sh, sw, pt, pl, 1, 1, cols, tile,
         sgemm_address() if use_blas else numba_gemm_address(np.float32), y)
    return y


def global_avg_pool(x, parallel=False):
    """Mean over H and W. x: (N, H, W, C) -> (N, C)."""
    x = _f32("x", x, 4, "(N, H, W, C)")
    n, h, w, c = x.shape
    y = np.empty((n, c), np.float32)
    _run(GLOBAL_POOL, parallel, x.reshape(n, h * w, c), y)
    return y


def linear(x, w, bias, activation=None, parallel=True, use_blas=True, packed=False):
    """act(x @ w + bias). x: (N, Cin), w: (Cin, Cout), bias: (Cout,) -> (N, Cout); act also "sigmoid".
    With `packed` (a CPU with a register tile; not the sigmoid), the tile fused inference runs
    there (`tiles.linear_tile_packed`)."""
    x = _f32("x", x, 2, "(N, Cin)")
    w = _f32("w", w, 2, "(Cin, Cout)")
    bias = _f32("bias", bias, 1, "(Cout,)")
    if w.shape[0] != x.shape[1] or bias.shape != (w.shape[1],):
        raise ValueError(f"w must be ({x.shape[1]}, Cout) and bias (Cout,), got {w.shape}, {bias.shape}")
    y = np.empty((x.shape[0], w.shape[1]), np.float32)
    if packed:
        _check_register_tile()
        if activation == "sigmoid":
            raise ValueError("packed=True computes no sigmoid (the register tile's activations: relu, relu6, hardswish)")
        _run(LINEAR_PACKED, parallel, x, register_tile.packed_weight(w).reshape(-1), bias,
             activation_code(activation), linear_block_cols(w.shape[1]), y, register_tile.span_address())
        return y
    _run(LINEAR, parallel, x, tiles.linear_blocks(w, linear_block_cols(w.shape[1])),
         bias, activation_code(activation, LINEAR_ACTIVATIONS), sgemm_address() if use_blas else numba_gemm_address(np.float32), y)
    return y


def resize(x, size, gate=None, parallel=True):
    """x (N, H, W, C) [times gate (N, C) per image and channel] resized bilinearly to size (Ho, Wo)
    (PyTorch's align_corners=False) -> (N, Ho, Wo, C)."""
    x = _f32("x", x, 4, "(N, H, W, C)")
    ho, wo = (int(s) for s in size)
    if ho < 1 or wo < 1:
        raise ValueError(f"size must be two positive ints (Ho, Wo), got {size!r}")
    if gate is None:
        gate = NO_ROWS
    else:
        gate = _f32("gate", gate, 2, "(N, C)")
        if gate.shape != (x.shape[0], x.shape[3]):
            raise ValueError(f"gate must be (N, C) = {(x.shape[0], x.shape[3])}, got {gate.shape}")
    y = np.empty((x.shape[0], ho, wo, x.shape[3]), np.float32)
    _run(RESIZE, parallel, x, gate, resize_tile_rows(wo, x.shape[3]), y)
    return y
