"""The whole fused network as one Numba call: a table of ops whose tiles every thread takes in turn.

Why: at batch 1 MobileNet is ~50 thin layers of 0.02-0.2 ms each. Run layer by layer, every
layer pays a Python call into Numba (~2 us) and, when parallel, the start and join of a parallel
region, whose worker has often gone to sleep during the serial layer before (tens of us to wake);
so most small layers were left serial, and 2 threads bought little (V3-Small: 3.2 -> 2.0 ms).
Here the network is data: an int64 table, one row per op (kind, activation, tensor offsets into
one activation arena, weight offsets into one parameter array, shapes, strides, padding, tiling).
One parallel region runs it: each thread takes the next tile number from a shared counter
(`atomic_add`), finds its op, waits until every tile of the ops before it is finished (a second
counter: tiles are taken in order, so "all tiles of earlier ops are done" is "the done-count has
reached this op's first tile"), computes the tile, and counts it done. Threads never wait for a
tile that has not been taken, so any number of threads, including one running the region's
iterations one after another, finishes without deadlock.

The tiles are those of the per-layer kernels (`kernels.py`): the convolution kinds' tiles of
`npmobilenet.ops` (a block of output pixels of a standard convolution, two output rows of a
depthwise one, a block of rows and columns of a pointwise one) and `tiles.py`'s (an image of SE
or pooling, a column block of a linear layer). Their sizes depend on shapes only, so a tile is
computed by the same instructions whichever thread takes it: outputs are bitwise identical for
every thread count, and equal to the layer-by-layer path's. (Tested for every model: with
fastmath the order of a sum is the compiler's choice wherever a tile is inlined, and a change to
a tile can make the serial and parallel builds, or the op table and a layer's kernel, differ in
the last bit.)

Op kinds and their columns (offsets are in float32 elements; -1 is "none"):
- CONV: X (N, XH, XW, XC) -> Y (N, YH, YW, YC) with W (KH, KW, XC, YC), B; stride, padding, dilation;
  TR output pixels per tile; AUX: the workspace (BLOCKS, TR, KH*KW*XC) its GEMM path gathers
  receptive fields into, a block per worker (`ops.conv.workspace_shape`), or -1 (the stem).
- DEPTHWISE: the same with W the tiled weight (KH*KW, RUN*XC) and B the bias repeated RUN times
  (`ops.depthwise.tiled_weight`, RUN pixels per run); AUX: row sums (N, YH, YC) for SE, or -1.
- SE_GATE: X = row sums (N, XH, XC) -> Y = gate (N, XC); W (XC, S), B (S,), W2 (S, XC),
  B2 (XC,); AUX: hidden workspace (N, S); COUNT = positions averaged.
- GATE_ROWS: X (N*XH*XW, XC) scaled in place by AUX = gate (N, XC), TR rows per tile.
- POINTWISE: X (N*XH*XW, XC) -> Y (rows, YC) with W (XC, YC), B; AUX: residual (rows, YC) or
  -1; AUX2: gate (N, XC) or -1; TR x TC outputs per tile.
- POOL: X (N, XH*XW, XC) -> Y (N, XC).
- LINEAR: X (N, XC) -> Y (N, YC) with W (XC, YC), B; TC columns per tile.
"""
import numba
import numpy as np
from numba import prange

from npmobilenet.config import njit_parallel, njit_serial
from npmobilenet.inference.atomics import atomic_add, atomic_load, cpu_relax
from npmobilenet.inference.tiles import global_avg_pool_tile, linear_tile, squeeze_excite_tile
from npmobilenet.ops.conv import conv_tile
from npmobilenet.ops.depthwise import depthwise_tile
from npmobilenet.ops.pointwise import gate_rows_tile, pointwise_tile

CONV, DEPTHWISE, SE_GATE, GATE_ROWS, POINTWISE, POOL, LINEAR = range(7)

# Workers of one run (one per thread at most); workspaces hold a block for each.
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


@njit_serial
def _view(a, offset, size):
    """a[offset:offset+size], or an empty view for offset -1."""
    if offset < 0:
        return a[0:0]
    return a[offset:offset + size]


@njit_serial
def _run_tile(op, params, arena, sgemm, t, worker):
    """Tile t of op `op` (a row of the table), run by worker `worker` (whose workspace blocks it uses)."""
    kind, act = op[KIND], op[ACT]
    n, xh, xw, xc = op[N], op[XH], op[XW], op[XC]
    yh, yw, yc = op[YH], op[YW], op[YC]
    if kind == POINTWISE:
        rows = n * xh * xw
        x = _view(arena, op[X], rows * xc).reshape((rows, xc))
        y = _view(arena, op[Y], rows * yc).reshape((rows, yc))
        w = _view(params, op[W], xc * yc).reshape((xc, yc))
        bias = _view(params, op[B], yc)
        residual = _view(arena, op[AUX], rows * yc).reshape((rows if op[AUX] >= 0 else 0, yc))
        gate = _view(arena, op[AUX2], n * xc).reshape((n if op[AUX2] >= 0 else 0, xc))
        pointwise_tile(x, w, bias, act, residual, gate, xh * xw, op[TR], op[TC], sgemm, y, t)
    elif kind == DEPTHWISE:
        x = _view(arena, op[X], n * xh * xw * xc).reshape((n, xh, xw, xc))
        y = _view(arena, op[Y], n * yh * yw * yc).reshape((n, yh, yw, yc))
        run = op[RUN] * xc
        w = _view(params, op[W], op[KH] * op[KW] * run).reshape((op[KH] * op[KW], run))
        bias = _view(params, op[B], run)
        sums = _view(arena, op[AUX], n * yh * yc).reshape((n if op[AUX] >= 0 else 0, yh, yc))
        depthwise_tile(x, w, op[KH], op[KW], bias, act, sums, op[SH], op[SW], op[PT], op[PL], op[RH], op[RW], y, t)
    elif kind == SE_GATE:
        s = op[S]
        sums = _view(arena, op[X], n * xh * xc).reshape((n, xh, xc))
        gate = _view(arena, op[Y], n * xc).reshape((n, xc))
        hidden = _view(arena, op[AUX], n * s).reshape((n, s))
        w_reduce = _view(params, op[W], xc * s).reshape((xc, s))
        w_expand = _view(params, op[W2], s * xc).reshape((s, xc))
        squeeze_excite_tile(sums, op[COUNT], w_reduce, _view(params, op[B], s), w_expand,
                            _view(params, op[B2], xc), hidden, gate, t)
    elif kind == GATE_ROWS:
        rows = n * xh * xw
        x = _view(arena, op[X], rows * xc).reshape((rows, xc))
        gate = _view(arena, op[AUX], n * xc).reshape((n, xc))
        gate_rows_tile(x, gate, xh * xw, op[TR], t)
    elif kind == CONV:
        x = _view(arena, op[X], n * xh * xw * xc).reshape((n, xh, xw, xc))
        y = _view(arena, op[Y], n * yh * yw * yc).reshape((n, yh, yw, yc))
        w = _view(params, op[W], op[KH] * op[KW] * xc * yc).reshape((op[KH], op[KW], xc, yc))
        k = op[KH] * op[KW] * xc
        if op[BLOCKS] > 0:
            block = _view(arena, op[AUX] + worker * op[TR] * k, op[TR] * k).reshape((op[TR], k))
        else:
            block = _view(arena, -1, 0).reshape((0, k))     # the direct path needs none
        conv_tile(x, w, _view(params, op[B], yc), act, op[SH], op[SW], op[PT], op[PL], op[RH], op[RW], block, op[TR],
                  sgemm, y, t)
    elif kind == POOL:
        x = _view(arena, op[X], n * xh * xw * xc).reshape((n, xh * xw, xc))
        global_avg_pool_tile(x, _view(arena, op[Y], n * xc).reshape((n, xc)), t)
    elif kind == LINEAR:
        x = _view(arena, op[X], n * xc).reshape((n, xc))
        y = _view(arena, op[Y], n * yc).reshape((n, yc))
        w = _view(params, op[W], xc * yc).reshape((xc, yc))
        linear_tile(x, w, _view(params, op[B], yc), act, op[TC], sgemm, y, t)


@njit_serial
def _take_tiles(ops, first_tile, params, arena, sgemm, counters, worker):
    """Worker `worker` takes tiles in order until none are left: counters[0] is the next tile,
    counters[1] the number finished. first_tile[k] is op k's first tile number; first_tile[-1]
    the total."""
    total = first_tile[first_tile.shape[0] - 1]
    k = 0
    while True:
        t = atomic_add(counters, 0, 1)
        if t >= total:
            return
        while first_tile[k + 1] <= t:
            k += 1
        while atomic_load(counters, 1) < first_tile[k]:
            cpu_relax()                 # an earlier op is still being finished by another thread
        _run_tile(ops[k], params, arena, sgemm, t - first_tile[k], worker)
        atomic_add(counters, 1, 1)


@njit_parallel
def _run_program(ops, first_tile, params, arena, sgemm, counters, workers):
    # ops: (K, len(COLUMNS)) int64; counters: (2,) int64, zero on entry; workers <= MAX_WORKERS.
    # Parallel build only: one worker calls _take_tiles directly. A serial build of this function
    # would recompile every tile kernel inlined once more (about a fifth of a cold start).
    for worker in prange(workers):
        _take_tiles(ops, first_tile, params, arena, sgemm, counters, worker)


class Program:
    """An op table over one plan's arena and a model's packed parameters; `run(threads)`."""

    def __init__(self, rows, params, arena, sgemm):
        self.ops = np.ascontiguousarray(np.stack(rows), np.int64)
        tiles = self.ops[:, TILES]
        if np.any(tiles < 1):
            raise ValueError("every op needs at least one tile")
        self.first_tile = np.concatenate([[0], np.cumsum(tiles)]).astype(np.int64)
        self.params, self.arena, self.sgemm = params, arena, int(sgemm)
        self.counters = np.zeros(2, np.int64)

    @property
    def tiles(self):
        return int(self.first_tile[-1])

    def run(self, threads=1, ops=None):
        """Every op (or ops k0..k1-1 for `ops=(k0, k1)`, e.g. one layer's, to time it alone) on
        `threads` threads; fewer running threads still finish. The caller keeps OpenBLAS
        single-threaded (see blas.py)."""
        ops_, first_tile = self.ops, self.first_tile
        if ops is not None:
            k0, k1 = ops
            ops_, first_tile = self.ops[k0:k1], self.first_tile[k0:k1 + 1] - self.first_tile[k0]
        self.counters[:] = 0
        workers = min(int(threads), MAX_WORKERS)     # a workspace block each (see CONV)
        if workers > 1:
            _run_program(ops_, first_tile, self.params, self.arena, self.sgemm, self.counters, workers)
        else:   # one worker taking every tile: no parallel region, and no serial build to compile
            _take_tiles(ops_, first_tile, self.params, self.arena, self.sgemm, self.counters, 0)

    def describe(self):
        """[(kind name, tiles)] per op, for reading the table."""
        names = ("conv", "depthwise", "se-gate", "gate-rows", "pointwise", "pool", "linear")
        return [(names[row[KIND]], int(row[TILES])) for row in self.ops]
