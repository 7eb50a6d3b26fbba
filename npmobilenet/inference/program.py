"""The whole fused network as one Numba call: a table of ops whose tiles every thread takes in turn.

Why: at batch 1 MobileNet is ~50 thin layers of 0.02-0.2 ms each. Run layer by layer, every
layer pays a Python call into Numba (~2 us) and, when parallel, the start and join of a parallel
region, whose worker has often gone to sleep during the serial layer before (tens of us to wake);
so most small layers were left serial, and 2 threads bought little (V3-Small: 3.2 -> 2.0 ms).
Here the network is data: an int64 table, one row per op (kind, activation, tensor offsets into
one activation arena, weight offsets into one parameter array, shapes, strides, padding, tiling).
The calling thread and helper threads (`workers.py`) run it, each in one compiled call: op by
op, each thread takes a tile of the op (compare-and-swap on the op's word of tiles left: the
caller from the op's first tile on, the helpers from its last one back, so that each mostly reads
rows it wrote itself), waits until every tile of the ops before it is finished (a done-count:
a thread moves to an op only when every tile of the ops before it is taken, so "all tiles of
earlier ops are done" is "the done-count has reached this op's first tile"), computes the tile,
and counts it done. Threads never wait for a tile that has not been taken, so any number of
threads, including the caller alone when its helpers are late or busy, finishes without
deadlock.

The tiles are those of the per-layer kernels (`kernels.py`): the convolution kinds' tiles of
`npmobilenet.ops` (a block of output pixels of a standard convolution, two output rows of a
depthwise one, a block of rows and columns of a pointwise one) and `tiles.py`'s (part of an
image's SE phase or pooling, a column block of a linear layer). Their sizes depend on shapes
only, so a tile is computed by the same instructions whichever thread takes it: outputs are
bitwise identical for every thread count, and equal to the layer-by-layer path's. (Tested for every model: with
fastmath the order of a sum is the compiler's choice wherever a tile is inlined, and a change to
a tile can make the op table and a layer's kernel differ in the last bit.) The table calls each
kind's tile through its address (`TILE_CALLS`, `indirect.py`), so a tile is compiled once, and
only for the kinds a model has.

Op kinds and their columns (offsets are in float32 elements; -1 is "none"):
- CONV: X (N, XH, XW, XC) -> Y (N, YH, YW, YC) with W (KH, KW, XC, YC), B; stride, padding, dilation;
  TR output pixels per tile; AUX: the workspace (BLOCKS, TR, KH*KW*XC) its GEMM path gathers
  receptive fields into, a block per worker (`ops.conv.workspace_shape`), or -1 (the stem). RUN 16:
  W packed as a (KH*KW*XC, YC) matrix for the register tile, as POINTWISE's, the stem's too (then
  with a workspace: its border pixels' fields are gathered; blocks of TR + ceil(8*YC/K) rows,
  `ops.conv_packed.workspace_rows`).
- DEPTHWISE: the same with W the tiled weight (KH*KW, RUN*XC) and B the bias repeated RUN times
  (`ops.depthwise.tiled_weight`, RUN pixels per run); AUX: row sums (N, YH, YC) for SE, or -1.
  RUN 0: a 5x5 or 3x3 kernel in the register tile (`ops.depthwise_avx512`), W (KH*KW, XC) and B
  (XC,) as they are; AUX2 (5x5): its workspace, BLOCKS blocks (one per worker) of a step's padded
  input rows (`ops.depthwise_avx512.workspace_elements` each). W2 >= 0 (RUN 0, 3x3): an
  inverted residual's expansion first (`layers.FusedExpansion`), X its input (N, XH, XW, S) and
  XC the expanded channels, W2 its weight in 16-channel slivers, B2 its bias, COUNT its activation;
  a tile is TR output rows of one image (`tiling.expansion_band_rows`), AUX2 the workspace of
  the expanded rows it reads, a block of BLOCKS elements per worker.
- SE_GATE: X = row sums (N, XH, XC) -> Y = gate (N, XC); W (XC, S), B (S,), W2 packed by part
  (`tiles.expand_parts`: (PARTS, S, `part_width(XC, 16)`)), B2 (XC,); AUX: workspace (N *
  PARTS, S), each part's sums of the hidden units; COUNT = positions averaged. Two rows per SE,
  BLOCKS the phase (0: the hidden units' parts, 1: the gate), N * PARTS tiles each
  (`tiles.squeeze_excite_tile`).
- GATE_ROWS: X (N*XH*XW, XC) scaled in place by AUX = gate (N, XC), TR rows per tile.
- POINTWISE: X (N*XH*XW, XC) -> Y (rows, YC) with W (XC, YC), B; AUX: residual (rows, YC) or
  -1; AUX2: gate (N, XC) or -1; TR x TC outputs per tile. RUN 16: W is packed in 16-channel
  slivers (`ops.register_tile.packed_weight`: (YC/16 rounded up, XC, 16)) for that module's
  register tile; -1: W as it is, for the OpenBLAS tile.
- POOL: X (N, XH*XW, XC) -> Y (N, XC); N * PARTS tiles (`tiles.global_avg_pool_tile`).
- LINEAR: X (N, XC) -> Y (N, YC) with W packed by column blocks of TC (`tiles.linear_blocks`:
  (YC/TC rounded up, XC, TC)), B; a block per tile. RUN 16: W in 16-channel slivers as POINTWISE's
  (`tiles.linear_tile_packed`), TC columns per tile.
- RESIZE: X (N, XH, XW, XC) -> Y (N, YH, YW, XC) bilinear; AUX: gate (N, XC) or -1; TR output
  rows per tile.
"""
import numba
import numpy as np
from numba import types

from npmobilenet.config import njit_inline, njit_serial
from npmobilenet.inference.atomics import atomic_add, atomic_cas, atomic_load, atomic_store, cpu_relax, cycle_counter
from npmobilenet.ops.compile_ahead import compile_all
from npmobilenet.ops.indirect import CompiledCall
from npmobilenet.inference.tiling import expansion_band
from npmobilenet.inference.tiles import (PARTS, global_avg_pool_tile, linear_tile, linear_tile_packed, part_width,
                                        resize_tile, squeeze_excite_tile)
from npmobilenet.inference.views import view
from npmobilenet.inference.workers import GENERATION, tile_workers
from npmobilenet.ops.conv import conv_direct_tile, conv_tile
from npmobilenet.ops.conv_packed import conv_tile_packed, workspace_rows
from npmobilenet.ops.depthwise import depthwise_steps_3x3, depthwise_steps_kxk
from npmobilenet.ops import depthwise_avx512, register_tile
from npmobilenet.ops.depthwise_avx512 import (depthwise_steps_3x3 as depthwise_blocks_3x3, depthwise_steps_5x5,
                                              workspace_elements as depthwise_workspace)
from npmobilenet.ops.pointwise import gate_rows_tile, pointwise_tile, pointwise_tile_packed

CONV, DEPTHWISE, SE_GATE, GATE_ROWS, POINTWISE, POOL, LINEAR, RESIZE = range(8)
KINDS = 8
# more slots of the address table
(CONV_DIRECT, DEPTHWISE_3X3, POINTWISE_PACKED, CONV_PACKED, DEPTHWISE_5X5, DEPTHWISE_3X3_BLOCKS, LINEAR_PACKED,
 PRODUCT_SPAN, BORDERS, BLOCKS_3X3, BLOCKS_5X5, TAPS_5X5, EXPANSION_TILE, OTHER_TILE, RUN_TILE) = range(KINDS, KINDS + 15)
# the slots `_run_other_tile` runs (`_run_tile` the others)
OTHER_SLOTS = (POINTWISE, DEPTHWISE, DEPTHWISE_3X3, CONV_DIRECT, CONV, LINEAR, RESIZE)

# Workers of one run (the caller and its helpers, one per thread at most); workspaces hold a block for each.
MAX_WORKERS = numba.config.NUMBA_NUM_THREADS

COLUMNS = ("KIND", "ACT", "TILES", "X", "N", "XH", "XW", "XC", "Y", "YH", "YW", "YC", "W", "B", "KH", "KW",
           "SH", "SW", "PT", "PL", "RH", "RW", "AUX", "AUX2", "W2", "B2", "S", "COUNT", "TR", "TC", "RUN", "BLOCKS")
(KIND, ACT, TILES, X, N, XH, XW, XC, Y, YH, YW, YC, W, B, KH, KW,
 SH, SW, PT, PL, RH, RW, AUX, AUX2, W2, B2, S, COUNT, TR, TC, RUN, BLOCKS) = range(len(COLUMNS))


def op_row(**fields):
    """One row of the op table from named columns (the rest -1)."""
    row = np.full(len(COLUMNS), -1, np.int64)
    for name, value in fields.items():
        row[COLUMNS.index(name)] = int(value)
    return row


# Each kind's tile, compiled once in its own module and called through its address (see
# indirect.py: linked into the table's loop, every tile was optimised and compiled again at each
# level of calls above it). The argument types are those `_run_tile` passes, checked when it
# compiles.
_I = types.int64
_A1, _A2, _A3, _A4 = (types.Array(types.float32, ndim, "C") for ndim in (1, 2, 3, 4))
TILE_CALLS = {
    POINTWISE: CompiledCall(pointwise_tile, (_A2, _A2, _A1, _I, _A2, _A2, _I, _I, _I, _I, _A2, _I)),
    POINTWISE_PACKED: CompiledCall(pointwise_tile_packed, (_A2, _A1, _A1, _I, _A2, _A2, _I, _I, _I, _A2, _I, _I)),
    # depthwise: 3x3 kernels and the others apart (`ops.depthwise.depthwise_steps`), so that a model
    # with 3x3 kernels only compiles none of the other sizes' code
    DEPTHWISE: CompiledCall(depthwise_steps_kxk, (_A4, _A2, _I, _I, _A1, _I, _A3) + (_I,) * 6 + (_A4, _I, _I)),
    DEPTHWISE_3X3: CompiledCall(depthwise_steps_3x3, (_A4, _A2, _I, _I, _A1, _I, _A3) + (_I,) * 6 + (_A4, _I, _I)),
    DEPTHWISE_5X5: CompiledCall(depthwise_steps_5x5, (_A4, _A2, _I, _I, _A1, _I, _A3) + (_I,) * 6
                                + (_A4, _I, _I, _A1, _I, _I, _I)),
    DEPTHWISE_3X3_BLOCKS: CompiledCall(depthwise_blocks_3x3, (_A4, _A2, _I, _I, _A1, _I, _A3) + (_I,) * 6
                                       + (_A4, _I, _I, _I, _I)),
    SE_GATE: CompiledCall(squeeze_excite_tile, (_A3, _I, _A2, _A1, _A3, _A1, _A2, _A2, _I, _I)),
    GATE_ROWS: CompiledCall(gate_rows_tile, (_A2, _A2, _I, _I, _I)),
    CONV: CompiledCall(conv_tile, (_A4, _A4, _A1, _I) + (_I,) * 6 + (_A2, _I, _I, _A4, _I)),
    CONV_PACKED: CompiledCall(conv_tile_packed, (_A4, _A1, _I, _I, _A1, _I) + (_I,) * 6 + (_A2, _I, _A4, _I, _I)),
    # the stem (3x3 over RGB, BLOCKS 0): conv_tile's direct path alone, without the GEMM path
    CONV_DIRECT: CompiledCall(conv_direct_tile, (_A4, _A4, _A1, _I, _I, _I, _I, _I, _I, _A4, _I)),
    POOL: CompiledCall(global_avg_pool_tile, (_A3, _A2, _I)),
    LINEAR: CompiledCall(linear_tile, (_A2, _A3, _A1, _I, _I, _A2, _I)),
    LINEAR_PACKED: CompiledCall(linear_tile_packed, (_A2, _A1, _A1, _I, _I, _A2, _I, _I)),
    RESIZE: CompiledCall(resize_tile, (_A4, _A2, _I, _A4, _I)),
}
# the functions some tiles call through an address they are passed (`_run_tile` passes
# addresses[callee]): the register tile's product, the depthwise register tiles' border pixels and
# blocks (`ops.depthwise_avx512`)
CALLEE_CALLS = {PRODUCT_SPAN: register_tile.SPAN, BORDERS: depthwise_avx512.BORDERS,
                BLOCKS_3X3: depthwise_avx512.BLOCKS_3X3, BLOCKS_5X5: depthwise_avx512.BLOCKS,
                TAPS_5X5: depthwise_avx512.BLOCKS_TAPS}
CALLEES = {POINTWISE_PACKED: (PRODUCT_SPAN,), CONV_PACKED: (PRODUCT_SPAN,), LINEAR_PACKED: (PRODUCT_SPAN,),
           DEPTHWISE_3X3_BLOCKS: (BORDERS, BLOCKS_3X3), DEPTHWISE_5X5: (BORDERS, BLOCKS_5X5, TAPS_5X5)}
_pointwise, _depthwise, _se_gate = TILE_CALLS[POINTWISE].call, TILE_CALLS[DEPTHWISE].call, TILE_CALLS[SE_GATE].call
_gate_rows, _conv, _pool, _linear = (TILE_CALLS[k].call for k in (GATE_ROWS, CONV, POOL, LINEAR))
_conv_direct, _depthwise_3x3 = TILE_CALLS[CONV_DIRECT].call, TILE_CALLS[DEPTHWISE_3X3].call
_depthwise_5x5, _depthwise_3x3_blocks = TILE_CALLS[DEPTHWISE_5X5].call, TILE_CALLS[DEPTHWISE_3X3_BLOCKS].call
_resize, _pointwise_packed, _conv_packed = (TILE_CALLS[k].call for k in (RESIZE, POINTWISE_PACKED, CONV_PACKED))
_linear_packed = TILE_CALLS[LINEAR_PACKED].call


def _slot(row):
    """The address slot of an op table row: its kind's, but CONV_DIRECT for a convolution without
    workspace blocks (the stem), DEPTHWISE_5X5 and DEPTHWISE_3X3_BLOCKS for a 5x5 and a 3x3
    depthwise convolution in the register tile (RUN 0), DEPTHWISE_3X3 for a 3x3 one in the loop
    tile, and POINTWISE_PACKED, CONV_PACKED and LINEAR_PACKED for pointwise, standard and fully
    connected layers on packed weights (RUN > 0)."""
    if row[KIND] == POINTWISE and row[RUN] > 0:
        return POINTWISE_PACKED
    if row[KIND] == LINEAR and row[RUN] > 0:
        return LINEAR_PACKED
    if row[KIND] == CONV and row[BLOCKS] > 0 and row[RUN] > 0:
        return CONV_PACKED
    if row[KIND] == CONV and row[BLOCKS] <= 0:
        return CONV_DIRECT
    if row[KIND] == DEPTHWISE and row[RUN] == 0:
        return DEPTHWISE_5X5 if row[KH] == 5 else DEPTHWISE_3X3_BLOCKS
    if row[KIND] == DEPTHWISE and row[KH] == 3 and row[KW] == 3:
        return DEPTHWISE_3X3
    return int(row[KIND])


def table_calls(ops):
    """{slot: CompiledCall}: the tile of each slot (`_slot`) the table `ops` uses (a model compiles
    only the kinds it has); at the slots of the functions those tiles call by address (`CALLEES`),
    theirs; at OTHER_TILE, `_run_other_tile` where a row needs it; at RUN_TILE, `_run_tile`."""
    calls = {}
    for row in ops:
        slot = _slot(row)
        calls.setdefault(slot, TILE_CALLS[slot])
        if slot == DEPTHWISE_3X3_BLOCKS and row[W2] >= 0:     # an expansion first (`_expansion_band`)
            calls.setdefault(EXPANSION_TILE, _EXPANSION_BAND)
            calls.setdefault(POINTWISE_PACKED, TILE_CALLS[POINTWISE_PACKED])
            calls.setdefault(PRODUCT_SPAN, CALLEE_CALLS[PRODUCT_SPAN])
        for callee in CALLEES.get(slot, ()):
            # (the 5x5 tile's tap-by-tap rows only at a stride over 2 or a dilation)
            if not (callee == TAPS_5X5 and depthwise_avx512.in_blocks(row[SW], row[RH], row[RW])):
                calls.setdefault(callee, CALLEE_CALLS[callee])
        if slot in OTHER_SLOTS:
            calls.setdefault(OTHER_TILE, _RUN_OTHER_TILE)
    calls[RUN_TILE] = _RUN_TILE
    return calls


@njit_inline
def _slivers(params, op, k):
    """The weight of a row on packed weights (RUN > 0): YC/RUN slivers (rounded up) of k rows of
    RUN numbers, flat (`ops.register_tile.packed_weight`)."""
    return view(params, op[W], ((op[YC] + op[RUN] - 1) // op[RUN] * op[RUN] * k,))


@njit_inline
def _depthwise_args(op, params, arena, t):
    """The arguments every depthwise tile takes (`depthwise_tile(..., t)` is
    `depthwise_steps(..., t, t + 1)`)."""
    n, yh, yc = op[N], op[YH], op[YC]
    run = max(op[RUN], 1) * op[XC]
    sums = view(arena, op[AUX], (n if op[AUX] >= 0 else 0, yh, yc))
    return (view(arena, op[X], (n, op[XH], op[XW], op[XC])), view(params, op[W], (op[KH] * op[KW], run)), op[KH],
            op[KW], view(params, op[B], (run,)), op[ACT], sums, op[SH], op[SW], op[PT], op[PL], op[RH], op[RW],
            view(arena, op[Y], (n, yh, op[YW], yc)), t, t + 1)


@njit_serial
def _expansion_band(op, params, arena, sgemm, t, worker, addresses):
    """Tile t of an expansion and depthwise convolution in one op (a DEPTHWISE row with W2 >= 0,
    `layers.FusedExpansion`): TR output rows of one image. The expanded rows they read (the
    expansion of the rows of X their 3x3 windows reach: a band's first or last row again where the
    band beside it reads it too) are made by the pointwise register tile into the worker's block
    of the workspace AUX2 (BLOCKS elements each), where the depthwise register tile reads them as
    a map of those rows, padded above or below only at the image's edges: every output is the
    same sum as the two layers' apart. Compiled on its own, at EXPANSION_TILE, for a table that has
    such rows only (`_run_tile` calls it by address: its code is not compiled into every table's)."""
    xh, xw, xc, cin, sh, kh = op[XH], op[XW], op[XC], op[S], op[SH], op[KH]
    yh, yw = op[YH], op[YW]
    n, first, last, start, end, pad = expansion_band(t, op[TR], yh, xh, kh, sh, op[PT])
    rows = (end - start) * xw
    block = op[AUX2] + worker * op[BLOCKS]
    width = (xc + register_tile.LANES - 1) // register_tile.LANES * register_tile.LANES
    _pointwise_packed(addresses[POINTWISE_PACKED], (view(arena, op[X] + (n * xh + start) * xw * cin, (rows, cin)),
                                                    view(params, op[W2], (width * cin,)), view(params, op[B2], (xc,)),
                                                    op[COUNT], view(arena, 0, (0, xc)), view(arena, 0, (0, cin)), rows,
                                                    rows, width, view(arena, block, (rows, xc)), 0,
                                                    addresses[PRODUCT_SPAN]))
    sums = view(arena, op[AUX] + (n * yh + first) * xc, (1 if op[AUX] >= 0 else 0, last - first, xc))
    _depthwise_3x3_blocks(addresses[DEPTHWISE_3X3_BLOCKS], (
        view(arena, block, (1, end - start, xw, xc)), view(params, op[W], (kh * op[KW], xc)), kh, op[KW],
        view(params, op[B], (xc,)), op[ACT], sums, sh, op[SW], pad, op[PL], op[RH], op[RW],
        view(arena, op[Y] + (n * yh + first) * yw * xc, (1, last - first, yw, xc)), 0, (last - first + 1) // 2,
        addresses[BORDERS], addresses[BLOCKS_3X3]))


@njit_serial
def _run_tile(op, params, arena, sgemm, t, worker, addresses):
    """Tile t of op `op` (a row of the table), run by worker `worker` (whose workspace blocks it
    uses), by calling its kind's tile at `addresses[kind]`. Tensors are views of the arena and
    weights of the parameters (`views.view`); an absent one (offset -1) is given no rows. Here the
    slots of the register tiles, and SE, gating and pooling; the others (`OTHER_SLOTS`: OpenBLAS's
    tiles, the loop depthwise tiles, the stem's direct taps, resizing) in `_run_other_tile`."""
    kind, act = op[KIND], op[ACT]
    n, xh, xw, xc = op[N], op[XH], op[XW], op[XC]
    yh, yw, yc = op[YH], op[YW], op[YC]
    if kind == POINTWISE and op[RUN] > 0:
        rows = n * xh * xw
        residual = view(arena, op[AUX], (rows if op[AUX] >= 0 else 0, yc))
        gate = view(arena, op[AUX2], (n if op[AUX2] >= 0 else 0, xc))
        _pointwise_packed(addresses[POINTWISE_PACKED], (view(arena, op[X], (rows, xc)), _slivers(params, op, xc),
                                                        view(params, op[B], (yc,)), act, residual, gate, xh * xw,
                                                        op[TR], op[TC], view(arena, op[Y], (rows, yc)), t,
                                                        addresses[PRODUCT_SPAN]))
    elif kind == DEPTHWISE and op[RUN] == 0 and op[W2] >= 0:
        _expansion_at(addresses[EXPANSION_TILE], (op, params, arena, sgemm, t, worker, addresses))
    elif kind == DEPTHWISE and op[RUN] == 0 and op[KH] == 3:
        _depthwise_3x3_blocks(addresses[DEPTHWISE_3X3_BLOCKS], _depthwise_args(op, params, arena, t)
                              + (addresses[BORDERS], addresses[BLOCKS_3X3]))
    elif kind == DEPTHWISE and op[RUN] == 0:
        block = depthwise_workspace(yh, yw, yc, op[SH], op[SW], op[RH], op[RW])
        _depthwise_5x5(addresses[DEPTHWISE_5X5], _depthwise_args(op, params, arena, t)
                       + (view(arena, op[AUX2] + worker * block, (block,)), addresses[BORDERS],
                          addresses[BLOCKS_5X5], addresses[TAPS_5X5]))
    elif kind == SE_GATE:
        s = op[S]
        _se_gate(addresses[SE_GATE], (view(arena, op[X], (n, xh, xc)), op[COUNT], view(params, op[W], (xc, s)),
                                      view(params, op[B], (s,)),
                                      view(params, op[W2], (PARTS, s, part_width(xc, 16))), view(params, op[B2], (xc,)),
                                      view(arena, op[AUX], (n * PARTS, s)), view(arena, op[Y], (n, xc)), t,
                                      op[BLOCKS]))
    elif kind == GATE_ROWS:
        _gate_rows(addresses[GATE_ROWS], (view(arena, op[X], (n * xh * xw, xc)), view(arena, op[AUX], (n, xc)),
                                          xh * xw, op[TR], t))
    elif kind == CONV and op[BLOCKS] > 0 and op[RUN] > 0:
        k = op[KH] * op[KW] * xc
        rows = workspace_rows(op[TR], k, yc)
        block = view(arena, op[AUX] + worker * rows * k, (rows, k))
        _conv_packed(addresses[CONV_PACKED], (view(arena, op[X], (n, xh, xw, xc)),
                                              _slivers(params, op, k),
                                              op[KH], op[KW], view(params, op[B], (yc,)), act, op[SH], op[SW], op[PT],
                                              op[PL], op[RH], op[RW], block, op[TR], view(arena, op[Y], (n, yh, yw, yc)),
                                              t, addresses[PRODUCT_SPAN]))
    elif kind == POOL:
        _pool(addresses[POOL], (view(arena, op[X], (n, xh * xw, xc)), view(arena, op[Y], (n, xc)), t))
    elif kind == LINEAR and op[RUN] > 0:
        _linear_packed(addresses[LINEAR_PACKED], (view(arena, op[X], (n, xc)), _slivers(params, op, xc),
                                                  view(params, op[B], (yc,)), act, op[TC], view(arena, op[Y], (n, yc)),
                                                  t, addresses[PRODUCT_SPAN]))
    else:
        _run_other_at(addresses[OTHER_TILE], (op, params, arena, sgemm, t, worker, addresses))


@njit_serial
def _run_other_tile(op, params, arena, sgemm, t, worker, addresses):
    """`_run_tile` for the slots of `OTHER_SLOTS`: compiled (and its address at OTHER_TILE) only
    for a table that has such rows. Apart, V2's cold start on AVX2 (the register tiles) compiled
    none of their views (one function for every kind took 2.2-2.5 s to compile)."""
    kind, act = op[KIND], op[ACT]
    n, xh, xw, xc = op[N], op[XH], op[XW], op[XC]
    yh, yw, yc = op[YH], op[YW], op[YC]
    if kind == POINTWISE:
        rows = n * xh * xw
        residual = view(arena, op[AUX], (rows if op[AUX] >= 0 else 0, yc))
        gate = view(arena, op[AUX2], (n if op[AUX2] >= 0 else 0, xc))
        _pointwise(addresses[POINTWISE], (view(arena, op[X], (rows, xc)), view(params, op[W], (xc, yc)),
                                          view(params, op[B], (yc,)), act, residual, gate, xh * xw, op[TR],
                                          op[TC], sgemm, view(arena, op[Y], (rows, yc)), t))
    elif kind == DEPTHWISE and op[KH] == 3 and op[KW] == 3:
        _depthwise_3x3(addresses[DEPTHWISE_3X3], _depthwise_args(op, params, arena, t))
    elif kind == DEPTHWISE:
        _depthwise(addresses[DEPTHWISE], _depthwise_args(op, params, arena, t))
    elif kind == CONV and op[BLOCKS] <= 0:      # the stem: taps directly, no workspace
        _conv_direct(addresses[CONV_DIRECT], (view(arena, op[X], (n, xh, xw, xc)),
                                              view(params, op[W], (op[KH], op[KW], xc, yc)), view(params, op[B], (yc,)),
                                              act, op[SH], op[SW], op[PT], op[PL], op[TR],
                                              view(arena, op[Y], (n, yh, yw, yc)), t))
    elif kind == CONV:
        k = op[KH] * op[KW] * xc
        block = view(arena, op[AUX] + worker * op[TR] * k, (op[TR], k))
        _conv(addresses[CONV], (view(arena, op[X], (n, xh, xw, xc)), view(params, op[W], (op[KH], op[KW], xc, yc)),
                                view(params, op[B], (yc,)), act, op[SH], op[SW], op[PT], op[PL], op[RH], op[RW],
                                block, op[TR], sgemm, view(arena, op[Y], (n, yh, yw, yc)), t))
    elif kind == LINEAR:
        tc = op[TC]
        _linear(addresses[LINEAR], (view(arena, op[X], (n, xc)), view(params, op[W], ((yc + tc - 1) // tc, xc, tc)),
                                    view(params, op[B], (yc,)), act, sgemm, view(arena, op[Y], (n, yc)), t))
    elif kind == RESIZE:
        gate = view(arena, op[AUX], (n if op[AUX] >= 0 else 0, xc))
        _resize(addresses[RESIZE], (view(arena, op[X], (n, xh, xw, xc)), gate, op[TR],
                                    view(arena, op[Y], (n, yh, yw, xc)), t))


# _run_tile is called through its address too (addresses[RUN_TILE]): linked into the table loop,
# its views of seven kinds were compiled again in the loop and in the function that leads a run.
_TILE_ARGS = (types.Array(types.int64, 1, "C"), _A1, _A1, _I, _I, _I, types.Array(types.int64, 1, "C"))
_RUN_TILE = CompiledCall(_run_tile, _TILE_ARGS)
_RUN_OTHER_TILE = CompiledCall(_run_other_tile, _TILE_ARGS)
_EXPANSION_BAND = CompiledCall(_expansion_band, _TILE_ARGS)
_run_tile_at, _run_other_at, _expansion_at = _RUN_TILE.call, _RUN_OTHER_TILE.call, _EXPANSION_BAND.call

# counters of a job (one per op table and range of ops): RUNS, the number of runs started; DONE,
# tiles finished over all runs; TRACED, the tiles a traced run has recorded; from ENDS on, one word
# per op: the run it belongs to and the op's tiles not yet taken, front..back-1 (`_word`)
RUNS, DONE, TRACED, ENDS = 0, 1, 2, 8
_TILE_BITS, _RUN_BITS = 20, 23
_TILE_MASK, _RUN_MASK = (1 << _TILE_BITS) - 1, (1 << _RUN_BITS) - 1
MAX_TILES = _TILE_MASK          # tiles per op
# a traced run's record of each tile (`Program.trace_records`): who ran it, its op and its index
# there, and cycle counts when it was taken, when the ops before it were finished (its wait over)
# and when it was done
WORKER, OP, TILE, TAKEN, STARTED, ENDED = range(6)


def traced_op_ms(records, ops, rate):
    """Each of `ops` ops' computing time in ms in a traced run's `records`
    (`Program.trace_records`): the sum of its tiles' cycles from STARTED to ENDED, at `rate`
    cycles a second (`atomics.cycle_rate`)."""
    ms = np.zeros(ops)
    np.add.at(ms, records[:, OP], (records[:, ENDED] - records[:, STARTED]) / rate * 1e3)
    return ms


@njit_serial
def _word(run, front, back):
    """An op's word: run (its low 23 bits) | front | back, tiles front..back-1 left."""
    return (((run & _RUN_MASK) << (2 * _TILE_BITS)) | (front << _TILE_BITS)) | back


@njit_serial
def _take_tiles(ops, first_tile, params, arena, sgemm, counters, addresses, trace, worker):
    """Worker `worker` takes tiles of the current run until none are left: op by op, the caller
    (worker 0) from an op's first tile on, the helpers from its last one back. So at batch 1,
    where an op's tiles are bands of rows (or of channels), each thread mostly reads what it wrote
    itself one op before, from its own core's cache (one shared counter dealt neighbouring tiles
    to alternate threads, each reading about half its input from the other core; the README has
    the traced CPU time of the same tiles on one and two threads, before and after).

    A tile of op k runs once every tile before op k in the table is finished (DONE reaches the
    run's count of them): ops are in order, and a tile may read anything an earlier op wrote. A
    tile is taken by compare-and-swap on its op's word, which names the run: a helper still in an
    earlier run (woken late, or finishing when the next run starts) takes nothing. With `trace`
    not empty, (tiles, 6), each tile's record is stored in it.
    """
    total = first_tile[first_tile.shape[0] - 1]
    run = atomic_load(counters, RUNS)
    base = (run - 1) * total                    # tiles of earlier runs, all finished
    tag = run & _RUN_MASK
    traced = trace.shape[0] > 0
    for k in range(ops.shape[0]):
        while True:
            word = atomic_load(counters, ENDS + k)
            if (word >> (2 * _TILE_BITS)) != tag:
                return                          # a later run has started: this one is over
            front, back = (word >> _TILE_BITS) & _TILE_MASK, word & _TILE_MASK
            if front >= back:
                break                           # every tile of op k taken: on to the next op
            t = front if worker == 0 else back - 1
            taken = _word(run, front + 1, back) if worker == 0 else _word(run, front, back - 1)
            if not atomic_cas(counters, ENDS + k, word, taken):
                continue                        # another worker took a tile of op k meanwhile
            taken_at = cycle_counter() if traced else 0
            while atomic_load(counters, DONE) < base + first_tile[k]:
                cpu_relax()                     # an earlier op is still being finished by another thread
            started = cycle_counter() if traced else 0
            _run_tile_at(addresses[RUN_TILE], (ops[k], params, arena, sgemm, t, worker, addresses))
            if traced:
                i = atomic_add(counters, TRACED, 1)
                trace[i, WORKER], trace[i, OP], trace[i, TILE], trace[i, TAKEN] = worker, k, t, taken_at
                trace[i, STARTED], trace[i, ENDED] = started, cycle_counter()
            atomic_add(counters, DONE, 1)


@njit_serial
def _lead(ops, first_tile, params, arena, sgemm, counters, addresses, trace, control):
    """One run, led by the calling thread (worker 0): open it (every op's word for the new run,
    then RUNS), let the helpers in (control[GENERATION] += 1; `control` empty: no helpers), take
    tiles, and return when every tile is finished."""
    run = atomic_load(counters, RUNS) + 1       # the last run is finished
    for k in range(ops.shape[0]):
        atomic_store(counters, ENDS + k, _word(run, np.int64(0), ops[k, TILES]))
    atomic_store(counters, TRACED, 0)
    atomic_store(counters, RUNS, run)
    if control.shape[0] > 0:
        atomic_add(control, GENERATION, 1)
    _take_tiles(ops, first_tile, params, arena, sgemm, counters, addresses, trace, np.int64(0))   # the helpers' build
    end = run * first_tile[first_tile.shape[0] - 1]
    while atomic_load(counters, DONE) < end:
        cpu_relax()                             # a helper is finishing its last tile


_NO_HELPERS = np.zeros(0, np.int64)
_NO_TRACE = np.zeros((0, 6), np.int64)
class Program:
    """An op table over one plan's arena and a model's packed parameters; `run(threads)`."""

    def __init__(self, rows, params, arena, sgemm, calls=None, workers=MAX_WORKERS):
        self.ops = np.ascontiguousarray(np.stack(rows), np.int64)
        tiles = self.ops[:, TILES]
        if np.any(tiles < 1) or np.any(tiles > MAX_TILES):
            raise ValueError(f"every op needs at least one tile and at most {MAX_TILES}")
        self.first_tile = np.concatenate([[0], np.cumsum(tiles)]).astype(np.int64)
        self.params, self.arena, self.sgemm = params, arena, int(sgemm)
        self.workers = min(int(workers), MAX_WORKERS)     # the workspace blocks the rows' offsets hold
        # `calls`: another table's tiles and its own `_run_tile` by slot (the int8 table's)
        calls = table_calls(self.ops) if calls is None else calls
        self.addresses = np.zeros(RUN_TILE + 1, np.int64)
        # every function the first run needs, compiled up front (by two processes on a cold start;
        # the helper threads call `_take_tiles` from Python: loaded here, not late in whichever joins first)
        counters = np.zeros(ENDS + len(self.ops), np.int64)
        args = (self.ops, self.first_tile, self.params, self.arena, self.sgemm, counters, self.addresses)
        runner = tuple(numba.typeof(a) for a in args + (_NO_TRACE,))
        compile_all([(call.dispatcher, call.argtypes) for call in calls.values()]
                    + [(_lead, runner + runner[-2:-1]), (_take_tiles, runner + (types.int64,))])
        for slot, call in calls.items():
            self.addresses[slot] = call.address()
        self._jobs = {}
        # whether any tile calls OpenBLAS's SGEMM (the OpenBLAS tiles; none where the register
        # tiles run every product), so whether a run must keep OpenBLAS on the calling threads
        self.calls_sgemm = bool(self.sgemm) and any(slot in (POINTWISE, CONV, LINEAR) for slot in calls)

    @property
    def tiles(self):
        return int(self.first_tile[-1])

    def _job(self, ops):
        """(ops, first_tile, counters) of the whole table or of ops k0..k1-1: each range counts its
        own tiles, so a helper still holding one range never takes a tile of another."""
        if ops not in self._jobs:
            if ops is None:
                rows, first_tile = self.ops, self.first_tile
            else:
                k0, k1 = ops
                rows, first_tile = self.ops[k0:k1], self.first_tile[k0:k1 + 1] - self.first_tile[k0]
            self._jobs[ops] = (np.ascontiguousarray(rows), np.ascontiguousarray(first_tile),
                               np.zeros(ENDS + len(rows), np.int64))
        return self._jobs[ops]

    def run(self, threads=1, ops=None, trace=None):
        """Every op (or ops k0..k1-1 for `ops=(k0, k1)`, e.g. one layer's, to time it alone) on
        `threads` threads: the calling thread and helpers (`workers.py`); when they are busy
        (another caller) or late, the calling thread takes their tiles. One call at a time per
        table. The caller keeps OpenBLAS single-threaded (see blas.py). With `trace`, an int64
        array (tiles, 6) (`trace_records`), each tile's record is stored in it."""
        rows, first_tile, counters = self._job(None if ops is None else tuple(int(k) for k in ops))
        if trace is None:
            trace = _NO_TRACE
        elif not (isinstance(trace, np.ndarray) and trace.dtype == np.int64 and trace.flags.c_contiguous
                  and trace.shape == (int(first_tile[-1]), 6)):
            raise ValueError(f"trace must be a C-contiguous int64 array of shape ({int(first_tile[-1])}, 6), "
                             f"one row per tile, got {getattr(trace, 'dtype', type(trace).__name__)} "
                             f"{getattr(trace, 'shape', '')}")
        args = (rows, first_tile, self.params, self.arena, self.sgemm, counters, self.addresses, trace)
        workers = min(int(threads), self.workers)      # a workspace block each (see CONV)
        helpers = tile_workers() if workers > 1 else None
        if helpers is not None and helpers.lock.acquire(blocking=False):
            try:
                helpers.publish(workers, lambda worker: _take_tiles(*args, worker))
                _lead(*args, helpers.control)
            finally:
                helpers.retire()
                helpers.lock.release()
        else:
            _lead(*args, _NO_HELPERS)

    def trace_records(self, threads=1, ops=None):
        """One run (as `run`), traced: an int64 array (tiles, 6), a row per tile in the order they
        were finished, its columns WORKER (0: the caller), OP (the op's index in the table, or
        within `ops`), TILE (the tile's index within its op), and the cycle counter
        (`atomics.cycle_counter`) when the tile was TAKEN, STARTED (the ops before it finished) and
        ENDED: what `benchmarks/threads.py --trace` sums into time waiting at op boundaries and
        time computing."""
        rows, first_tile, _ = self._job(None if ops is None else tuple(int(k) for k in ops))
        trace = np.zeros((int(first_tile[-1]), 6), np.int64)
        self.run(threads, ops, trace)
        return trace

    def describe(self):
        """[(kind name, tiles)] per op, for reading the table."""
        names = ("conv", "depthwise", "se-gate", "gate-rows", "pointwise", "pool", "linear", "resize")
        return [(names[row[KIND]], int(row[TILES])) for row in self.ops]
