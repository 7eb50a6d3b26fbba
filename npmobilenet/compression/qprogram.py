"""An int8 plan's kernel calls as one op table, run by the float model's table runner.

Why: bound once (`qplan.py`), an int8 MobileNet at batch 1 is still ~60 kernel calls from Python,
each of which, to use a second thread, opens its own Numba parallel region and wakes a sleeping
worker: at batch 1 two threads were slower than one. The float model solved this once
(`inference/program.py`): the network is a table, and the caller and helper threads take its tiles
in order from a shared counter, in one compiled call each. This module writes an int8 plan's calls
into such a table and runs it with the same runner (`Program`, `_take_tiles`, the helper threads
of `inference/workers.py`); only the tile dispatch (`_run_qtile`) is int8's.

How a call becomes a row: each call is `(kernel, args)` as an op's `calls` binds it (qops.py), so
the zero points, multipliers and packed weights are prepared by the same code as the Python plan's.
Every array argument is a view of one byte arena (activations, and a copy of each weight, bias,
multiplier and workspace) and is written into the row as its offset and shape; every scalar as its
value. `_run_qtile` rebuilds the arguments from the row, typed as each kernel takes them, and calls
the kernel, by its address (`ops/indirect.py`), on tile t's rows: the row kernels of
qkernels.py (pointwise, depthwise, the standard convolution's gather) take a range of rows; the
elementwise kernels (lookup, add) a range of elements; the pooled kernels (mean, SE channel scale)
an image, or a range of an image's pixels. A tile's integers do not depend on which thread
computes it, so results are the same bits as the Python plan's for every thread count.

A call the table does not know (the exact float32 paths of qexact.py) makes `build` return None:
the plan then runs its calls from Python.
"""
import numpy as np
from numba import types

from npmobilenet.compression import qdepthwise_vnni as qdw, qkernels as qk
from npmobilenet.config import njit_serial
from npmobilenet.ops.indirect import CompiledCall
from npmobilenet.inference.program import RUN_TILE, TILES, Program, _A1 as _F1
from npmobilenet.inference.views import view

# kinds, and the columns of a row: KIND, TC (output channels per tile: VNNI pointwise and depthwise), TILES, TR (rows,
# elements or pixels per tile),
# TOTAL (of them), then SLOT columns per argument: an array's offset (in its dtype's elements) and
# up to four dimensions, or a scalar's value
(PW_VNNI, PW, DEPTHWISE, IM2COL, LOOKUP, ADD, MEAN, CHANNEL_SCALE, LOOKUP_VBMI, DEPTHWISE_VNNI, PW_PAIRS,
 LOOKUP_AVX2) = range(12)
KIND, TC, TR, TOTAL, ARGS, SLOT = 0, 1, 3, 4, 5, 5
MAX_ARGS = 16

_I, _i32, _i8 = types.int64, types.int32, types.int8
_B1, _B2, _B3, _B4 = (types.Array(types.int8, n, "C") for n in (1, 2, 3, 4))
_W1, _W3 = types.Array(types.int32, 1, "C"), types.Array(types.int32, 3, "C")
_L1 = types.Array(types.int64, 1, "C")

# kernel -> (kind, argument types without the row range, whether it takes a row range)
KERNELS = {
    qk._pointwise_int8_vnni_rows: (PW_VNNI, (_B2, _W1, _W1, _W1, _W1, _i32, _i32, _i32, _i32, _B2, _W1, _L1, _B2), True),
    qk._pointwise_int8_pairs_rows: (PW_PAIRS, (_B2, _W1, _W1, _W1, _W1, _i32, _i32, _i32, _i32, _B2, _W1, _L1, _B2),
                                    True),
    qk._pointwise_int8_rows: (PW, (_B2, _i32, _B2, _W1, _W1, _W1, _i32, _i32, _i32, _B2), True),
    qk._depthwise_int8_rows: (DEPTHWISE, (_B4, _i32, _B3, _W1, _W1, _W1, _i32, _i32, _i32) + (_I,) * 6 + (_B4,), True),
    qdw._depthwise_int8_vnni_rows: (DEPTHWISE_VNNI, (_B4, _B1, _W3, _W1, _W1, _W1, _i32, _I, _i32, _i32, _i32)
                                    + (_I,) * 4 + (_B4,), True),
    qk._im2col_int8_rows: (IM2COL, (_B4, _i8) + (_I,) * 8 + (_B4,), True),
    qk._lookup_int8: (LOOKUP, (_B1, _B1, _B1), False),
    qk._lookup_int8_vbmi: (LOOKUP_VBMI, (_B1, _B1, _B1), False),
    qk._lookup_int8_avx2: (LOOKUP_AVX2, (_B1, _B1, _B1), False),
    qk._add_int8: (ADD, (_B1,) + (_i32,) * 3 + (_B1,) + (_i32,) * 9 + (_B1,), False),
    qk._mean_int8: (MEAN, (_B3, _i32, _i32, _i32, _i32, _B2), False),
    qk._channel_scale_int8: (CHANNEL_SCALE, (_B3, _i32, _B2, _i32, _i32, _i32, _i32, _B3), False),
}
PARALLEL = {qk._pointwise_int8_vnni_parallel: qk._pointwise_int8_vnni_rows,
            qk._pointwise_int8_pairs_parallel: qk._pointwise_int8_pairs_rows,
            qk._pointwise_int8_parallel: qk._pointwise_int8_rows,
            qk._depthwise_int8_parallel: qk._depthwise_int8_rows,
            qdw._depthwise_int8_vnni_parallel: qdw._depthwise_int8_vnni_rows,
            qk._im2col_int8_parallel: qk._im2col_int8_rows}
CALLS = {kind: CompiledCall(kernel, argtypes + ((_I, _I) if ranged else ()))
         for kernel, (kind, argtypes, ranged) in KERNELS.items()}
# the VNNI pointwise kernel by blocks of rows and of output channels: a layer of few pixels (7x7,
# a classifier at batch 1) is still split between threads
CALLS[PW_VNNI] = CompiledCall(qk._pointwise_int8_vnni_block, KERNELS[qk._pointwise_int8_vnni_rows][1] + (_I,) * 4)
CALLS[PW_PAIRS] = CompiledCall(qk._pointwise_int8_pairs_block, KERNELS[qk._pointwise_int8_pairs_rows][1] + (_I,) * 4)
# the VNNI depthwise kernel by blocks of rows and of channels: tiles of several rows, so that each
# input row is rewritten as operands once for most of the output rows that read it, and a map of
# few rows (14x14, 7x7) split between threads by its channels
CALLS[DEPTHWISE_VNNI] = CompiledCall(qdw._depthwise_int8_vnni_block,
                                     KERNELS[qdw._depthwise_int8_vnni_rows][1] + (_I,) * 4)
_pw_vnni, _pw, _depthwise, _im2col = (CALLS[k].call for k in (PW_VNNI, PW, DEPTHWISE, IM2COL))
_depthwise_vnni, _pw_pairs = CALLS[DEPTHWISE_VNNI].call, CALLS[PW_PAIRS].call
_lookup, _add, _mean, _channel_scale = (CALLS[k].call for k in (LOOKUP, ADD, MEAN, CHANNEL_SCALE))


# -- rebuilding arguments from a row ----------------------------------------------------------------
@njit_serial
def _at(i):
    return ARGS + SLOT * i


@njit_serial
def _s32(op, i):
    return np.int32(op[_at(i)])


@njit_serial
def _v1(buffer, op, i):
    c = _at(i)
    return view(buffer, op[c], (op[c + 1],))


@njit_serial
def _part(buffer, op, i, start, end):
    # elements start..end-1 of argument i, a 1-D array
    return view(buffer, op[_at(i)] + start, (end - start,))


@njit_serial
def _v2(buffer, op, i):
    c = _at(i)
    return view(buffer, op[c], (op[c + 1], op[c + 2]))


@njit_serial
def _v3(buffer, op, i):
    c = _at(i)
    return view(buffer, op[c], (op[c + 1], op[c + 2], op[c + 3]))


@njit_serial
def _v4(buffer, op, i):
    c = _at(i)
    return view(buffer, op[c], (op[c + 1], op[c + 2], op[c + 3], op[c + 4]))


@njit_serial
def _pixels(buffer, op, i, n, p0, count):
    # argument i, an (N, HW, C) array, as image n's pixels p0..p0+count-1: (1, count, C)
    c = _at(i)
    hw, channels = op[c + 2], op[c + 3]
    return view(buffer, op[c] + (n * hw + p0) * channels, (1, count, channels))


@njit_serial
def _run_qtile(op, params, arena, sgemm, t, worker, addresses):
    """Tile t of int8 op `op` (a row): its kernel, at `addresses[kind]`, on the arguments the row
    names (views of the byte arena `arena`; `params` and `sgemm` are unused, the runner's)."""
    b, w, wide = arena.view(np.int8), arena.view(np.int32), arena.view(np.int64)
    kind, tr, total = op[KIND], op[TR], op[TOTAL]
    start = t * tr
    end = min(start + tr, total)
    if kind == PW_VNNI or kind == PW_PAIRS:
        width = op[_at(2) + 1]                  # the start vector's length: the packed width (vnni.pack_weight)
        col_tiles = (width + op[TC] - 1) // op[TC]
        start = (t // col_tiles) * tr
        end = min(start + tr, total)
        c0 = (t % col_tiles) * op[TC]
        args = (_v2(b, op, 0), _v1(w, op, 1), _v1(w, op, 2), _v1(w, op, 3), _v1(w, op, 4), _s32(op, 5), _s32(op, 6),
                _s32(op, 7), _s32(op, 8), _v2(b, op, 9), _v1(w, op, 10), _v1(wide, op, 11), _v2(b, op, 12), start, end,
                c0, min(c0 + op[TC], width))
        if kind == PW_VNNI:
            _pw_vnni(addresses[PW_VNNI], args)
        else:
            _pw_pairs(addresses[PW_PAIRS], args)
    elif kind == PW:
        _pw(addresses[PW], (_v2(b, op, 0), _s32(op, 1), _v2(b, op, 2), _v1(w, op, 3), _v1(w, op, 4), _v1(w, op, 5),
                            _s32(op, 6), _s32(op, 7), _s32(op, 8), _v2(b, op, 9), start, end))
    elif kind == DEPTHWISE:
        _depthwise(addresses[DEPTHWISE], (_v4(b, op, 0), _s32(op, 1), _v3(b, op, 2), _v1(w, op, 3), _v1(w, op, 4),
                                          _v1(w, op, 5), _s32(op, 6), _s32(op, 7), _s32(op, 8), op[_at(9)],
                                          op[_at(10)], op[_at(11)], op[_at(12)], op[_at(13)],
                                          op[_at(14)], _v4(b, op, 15), start, end))
    elif kind == DEPTHWISE_VNNI:
        channels = op[_at(15) + 4]              # y's last axis
        col_tiles = (channels + op[TC] - 1) // op[TC]
        start = (t // col_tiles) * tr
        end = min(start + tr, total)
        c0 = (t % col_tiles) * op[TC]
        _depthwise_vnni(addresses[DEPTHWISE_VNNI], (_v4(b, op, 0), _v1(b, op, 1), _v3(w, op, 2), _v1(w, op, 3),
                                                    _v1(w, op, 4), _v1(w, op, 5), _s32(op, 6), op[_at(7)],
                                                    _s32(op, 8), _s32(op, 9), _s32(op, 10), op[_at(11)],
                                                    op[_at(12)], op[_at(13)], op[_at(14)], _v4(b, op, 15), start,
                                                    end, c0, min(c0 + op[TC], channels)))
    elif kind == IM2COL:
        _im2col(addresses[IM2COL], (_v4(b, op, 0), np.int8(op[_at(1)]), op[_at(2)], op[_at(3)],
                                    op[_at(4)], op[_at(5)], op[_at(6)], op[_at(7)], op[_at(8)],
                                    op[_at(9)], _v4(b, op, 10), start, end))
    elif kind == LOOKUP or kind == LOOKUP_VBMI or kind == LOOKUP_AVX2:     # one signature: any of their addresses
        _lookup(addresses[kind], (_part(b, op, 0, start, end), _v1(b, op, 1), _part(b, op, 2, start, end)))
    elif kind == ADD:
        _add(addresses[ADD], (_part(b, op, 0, start, end), _s32(op, 1), _s32(op, 2), _s32(op, 3),
                              _part(b, op, 4, start, end), _s32(op, 5), _s32(op, 6), _s32(op, 7), _s32(op, 8),
                              _s32(op, 9), _s32(op, 10), _s32(op, 11), _s32(op, 12), _s32(op, 13),
                              _part(b, op, 14, start, end)))
    elif kind == MEAN:
        n = t                                   # one image per tile
        c = _at(0)
        x = _pixels(b, op, 0, n, 0, op[c + 2])
        y = view(b, op[_at(5)] + n * op[c + 3], (1, op[c + 3]))
        _mean(addresses[MEAN], (x, _s32(op, 1), _s32(op, 2), _s32(op, 3), _s32(op, 4), y))
    elif kind == CHANNEL_SCALE:
        per_image = (total + tr - 1) // tr      # tiles of tr pixels, image by image
        n, p0 = t // per_image, (t % per_image) * tr
        count = min(tr, total - p0)
        channels = op[_at(0) + 3]
        g = view(b, op[_at(2)] + n * channels, (1, channels))
        _channel_scale(addresses[CHANNEL_SCALE], (_pixels(b, op, 0, n, p0, count), _s32(op, 1), g, _s32(op, 3),
                                                  _s32(op, 4), _s32(op, 5), _s32(op, 6), _pixels(b, op, 7, n, p0, count)))


_RUN_QTILE = CompiledCall(_run_qtile, (types.Array(types.int64, 1, "C"), _F1, _F1, _I, _I, _I,
                                       types.Array(types.int64, 1, "C")))


# -- building the table -----------------------------------------------------------------------------
class Arena:
    """`nbytes` bytes (held as float32, the runner's type) for a plan's activations and copies of
    its constants; `at(offset, shape)` the int8 array at a byte offset (offsets 64-byte aligned:
    `size`)."""

    ALIGN = 64

    def __init__(self, nbytes):
        self.nbytes = int(nbytes)
        self.buffer = np.zeros(-(-self.nbytes // 4), np.float32)
        self.bytes = self.buffer.view(np.int8)

    @staticmethod
    def size(nbytes):
        """`nbytes` rounded up to the alignment: the bytes a tensor of that size takes."""
        return -(-int(nbytes) // Arena.ALIGN) * Arena.ALIGN

    def at(self, offset, shape):
        return self.bytes[offset:offset + int(np.prod(shape, dtype=np.int64))].reshape(shape)

    def offset(self, a):
        """a's first element as an offset in a's dtype into this arena, or None if a is not in it."""
        if a.size == 0:
            return 0                                # never read
        start = a.ctypes.data - self.bytes.ctypes.data
        if start < 0 or start + a.nbytes > self.bytes.shape[0]:
            return None
        return start // a.itemsize


def _table_kernel(kernel, args):
    """(the row kernel, its arguments without the row range) of a call, or (None, None)."""
    kernel = PARALLEL.get(kernel, kernel)
    if kernel not in KERNELS:
        return None, None
    _, argtypes, _ = KERNELS[kernel]
    return kernel, args[:len(argtypes)]


def _tiling(kind, args, workers=2):
    """(TR, TOTAL, tiles, TC) of a call: rows, elements or pixels per tile and in all, and output
    channels per tile (VNNI pointwise and depthwise; else 0). Shapes and `workers` only.

    For several workers, tiles small enough to share a layer of few pixels (at least 8 tiles
    where the channels allow: a 7x7 layer split by its channels) and to even out the threads'
    finishing times before each op. For one worker, fewer and larger tiles: the sharing buys
    nothing there, and every tile costs its start (the table's dispatch, rebuilding its
    arguments) and, in a pointwise or depthwise layer split by channels or rows, rereading or
    rewriting its input. The integers do not depend on the tiling."""
    one = workers == 1
    row_tiles = 16 if one else 128          # VNNI pointwise and depthwise: row tiles at most
    min_tiles = 1 if one else 8             # ... and at least this many, split by channels
    if kind in (PW_VNNI, PW_PAIRS, PW):
        rows = args[-1].shape[0]                              # y (P, Cout)
        most = 128 if kind == PW else row_tiles               # (the portable kernel as for two)
        tr = qk.VNNI_CHUNK_ROWS * max(1, -(-rows // (qk.VNNI_CHUNK_ROWS * most)))
        row_tiles = -(-rows // tr)
        if kind == PW:
            return tr, rows, row_tiles, 0
        width = args[2].shape[0]                              # start: the packed width (vnni.pack_weight)
        # blocks of 16 channels
        col_tiles = min(width // 16, max(1, -(-min_tiles // row_tiles)))
        tc = 16 * -(-width // (16 * col_tiles))
        return tr, rows, row_tiles * -(-width // tc), tc
    if kind == DEPTHWISE_VNNI:
        y = args[-1]                                          # (N, Ho, Wo, C)
        rows, kh = y.shape[0] * y.shape[1], args[2].shape[1]  # words (C / 16, KH, ...)
        # tiles of at least 4 KH rows where the map has them (each input row rewritten about
        # (4 KH + KH - 1) / 4 KH times)
        tr = max(-(-rows // row_tiles), min(rows, 4 * kh))
        row_tiles = -(-rows // tr)
        blocks = -(-y.shape[3] // 16)
        col_tiles = min(blocks, max(1, -(-min_tiles // row_tiles)))
        tc = 16 * -(-blocks // col_tiles)
        return tr, rows, row_tiles * -(-y.shape[3] // tc), tc
    if kind in (DEPTHWISE, IM2COL):
        out = args[-1]                                        # y or cols (N, Ho, Wo, C)
        rows = out.shape[0] * out.shape[1]
        tr = max(1, -(-rows // 128))
        return tr, rows, -(-rows // tr), 0
    if kind in (LOOKUP, LOOKUP_VBMI, LOOKUP_AVX2, ADD):
        size = args[0].size
        # a multiple of the vector width: at least 4096 elements, at most 64 tiles (one worker:
        # 16384, 8)
        least, most = (16384, 8) if one else (4096, 64)
        tr = max(least, -(-size // (most * 64)) * 64)
        return tr, size, max(1, -(-size // tr)), 0
    if kind == MEAN:
        return 1, args[0].shape[0], args[0].shape[0], 0
    n, hw = args[0].shape[:2]                                 # CHANNEL_SCALE: x (N, HW, C)
    least, most = (1024, 8) if one else (256, 32)             # pixels per tile at least, tiles per image at most
    tr = max(least, -(-hw // most))
    return tr, hw, n * -(-hw // tr), 0


def build(calls, arena, workers=2):
    """A `Program` of `calls` (from `qplan.Int8Plan`, whose buffers are `arena`'s), or None when a
    call has no table kernel, tiled for `workers` threads (`_tiling`; any number of threads can
    run it). Constants are copied into a new arena that includes the old one."""
    rows, constants = [], {}                  # (data pointer, nbytes) -> its copy's byte offset
    extra = 0
    for kernel, args in calls:
        kernel, args = _table_kernel(kernel, args)
        if kernel is None:
            return None
        for a in args:
            if isinstance(a, np.ndarray) and arena.offset(a) is None and (a.ctypes.data, a.nbytes) not in constants:
                constants[(a.ctypes.data, a.nbytes)] = arena.nbytes + extra
                extra += Arena.size(a.nbytes)
    whole = Arena(arena.nbytes + extra)
    whole.bytes[:arena.nbytes] = arena.bytes[:arena.nbytes]
    copied = set()
    for kernel, args in calls:
        kernel, args = _table_kernel(kernel, args)
        kind = KERNELS[kernel][0]
        tr, total, tiles, tc = _tiling(kind, args, workers)
        row = np.full(ARGS + SLOT * MAX_ARGS, -1, np.int64)
        row[[KIND, TC, TILES, TR, TOTAL]] = kind, tc, tiles, tr, total
        for i, a in enumerate(args):
            c = ARGS + SLOT * i
            if not isinstance(a, np.ndarray):
                row[c] = int(a)
                continue
            if not a.flags.c_contiguous:
                raise ValueError("the int8 table's arrays must be C-contiguous")
            start = arena.offset(a)
            if start is None:
                byte = constants[(a.ctypes.data, a.nbytes)]
                if byte not in copied:
                    whole.bytes[byte:byte + a.nbytes] = np.ascontiguousarray(a).view(np.int8).reshape(-1)
                    copied.add(byte)
                start = byte // a.itemsize
            row[c] = start
            row[c + 1:c + 1 + a.ndim] = a.shape
        rows.append(row)
    calls = {kind: CALLS[kind] for kind in sorted({int(r[KIND]) for r in rows})}
    calls[RUN_TILE] = _RUN_QTILE
    return Program(rows, np.zeros(0, np.float32), whole.buffer, 0, calls)


__all__ = ["Arena", "build"]
