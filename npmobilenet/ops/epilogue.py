"""What a convolution tile does to its output while it is still in cache: its *epilogue*.

Fused inference folds batch norm into each convolution (see `npmobilenet.graph.passes`), so a layer is

    y = act(conv(x, w) + bias)        [+ residual]       (act: none, ReLU, ReLU6, hard-swish)

and each convolution tile (`ops/conv.py`, `ops/depthwise.py`, `ops/pointwise.py`) finishes its
own rows with the helpers here: one pass over the tile's output instead of one per operation.
Training's forward calls the same tiles with no bias and `IDENTITY`, and the epilogue does nothing.

The activation is an int code, so one compiled kernel serves every activation; each helper has
one loop per activation, so that each loop vectorises without a branch inside. (The activation
applied inside a tile's sum loop instead, `act` a loop-invariant branch there, made the stem 10-20%
slower: LLVM did not split the loop. So the epilogue is a pass of its own over each run of the
output, right after the run is computed, while it is in L1.)
"""
import numpy as np

from npmobilenet.config import njit_serial

# Activation codes the kernels take.
IDENTITY, RELU, RELU6, HARDSWISH, SIGMOID = 0, 1, 2, 3, 4
ACTIVATIONS = {None: IDENTITY, "relu": RELU, "relu6": RELU6, "hardswish": HARDSWISH}
# A linear layer's epilogue (`bias_act`) also computes the logistic sigmoid: LR-ASPP's gate
# (V3 paper, sec. 6.3). The convolution tiles have their own activation loops without it.
LINEAR_ACTIVATIONS = dict(ACTIVATIONS, sigmoid=SIGMOID)

_F32 = np.float32
# Indices the compiler cannot prove non-negative are made unsigned (`_U`): Numba wraps negative
# indices around (x[-1] is the last element), a select per index that hides the addresses'
# pattern from the vectoriser. Measured: the stem 2.3x and a loop over columns m0..m1 10x slower
# with signed indices (loops from 0 need nothing: their index is known non-negative).
_U = np.uint64

NO_ROWS = np.zeros((0, 1), np.float32)         # "no bias / residual / gate" (float32 kernels)
NO_ROW_SUMS = np.zeros((0, 1, 1), np.float32)  # "no row sums"


def activation_code(activation, codes=ACTIVATIONS):
    """The int code of `activation` in `codes` (the convolutions': None, "relu", "relu6" or
    "hardswish"; `LINEAR_ACTIVATIONS` adds "sigmoid"), or a ValueError."""
    if activation not in codes:
        raise ValueError(f"activation must be one of {sorted(k for k in codes if k)} or None, got {activation!r}")
    return codes[activation]


@njit_serial
def activate_run(y, act):
    """y = act(y) in place, y 1-D."""
    zero, three, six, sixth = _F32(0), _F32(3), _F32(6), _F32(1 / 6)
    length = y.shape[0]
    if act == RELU:
        for m in range(length):
            y[m] = max(y[m], zero)
    elif act == RELU6:
        for m in range(length):
            y[m] = min(max(y[m], zero), six)
    elif act == HARDSWISH:
        for m in range(length):
            v = y[m]
            y[m] = v * min(max(v + three, zero), six) * sixth


@njit_serial
def bias_act(y, p0, p1, m0, m1, bias, act):
    """y[p0:p1, m0:m1] = act(y + bias) in place. y: (P, C), bias: (C,)."""
    zero, three, six, sixth = _F32(0), _F32(3), _F32(6), _F32(1 / 6)
    for p in range(p0, p1):
        row = y[p]
        if act == RELU:
            for c in range(m0, m1):
                uc = _U(c)
                row[uc] = max(row[uc] + bias[uc], zero)
        elif act == RELU6:
            for c in range(m0, m1):
                uc = _U(c)
                row[uc] = min(max(row[uc] + bias[uc], zero), six)
        elif act == HARDSWISH:
            for c in range(m0, m1):
                uc = _U(c)
                v = row[uc] + bias[uc]
                row[uc] = v * min(max(v + three, zero), six) * sixth    # x relu6(x + 3) / 6 (V3, Eq. 2)
        elif act == SIGMOID:
            for c in range(m0, m1):
                uc = _U(c)
                row[uc] = _F32(1) / (_F32(1) + np.exp(-(row[uc] + bias[uc])))
        else:
            for c in range(m0, m1):
                uc = _U(c)
                row[uc] += bias[uc]


@njit_serial
def bias_act_run(y, bias, act):
    """y = act(y + bias[:len(y)]) in place, y and bias 1-D: one run of pixels of a row (several
    pixels' channels when bias is repeated per pixel), so that rows of few channels vectorise too."""
    zero, three, six, sixth = _F32(0), _F32(3), _F32(6), _F32(1 / 6)
    length = y.shape[0]
    if act == RELU:
        for m in range(length):
            y[m] = max(y[m] + bias[m], zero)
    elif act == RELU6:
        for m in range(length):
            y[m] = min(max(y[m] + bias[m], zero), six)
    elif act == HARDSWISH:
        for m in range(length):
            v = y[m] + bias[m]
            y[m] = v * min(max(v + three, zero), six) * sixth
    else:
        for m in range(length):
            y[m] += bias[m]


@njit_serial
def bias_residual(y, p0, p1, m0, m1, bias, residual):
    """y[p0:p1, m0:m1] += bias + residual in place: the linear bottleneck's projection joined to
    the shortcut (V2 paper, Fig. 3b; no activation after the add)."""
    for p in range(p0, p1):
        row, res = y[p], residual[p]
        for c in range(m0, m1):
            uc = _U(c)
            row[uc] = row[uc] + bias[uc] + res[uc]


@njit_serial
def finish(y, p0, p1, m0, m1, bias, act, residual):
    """The epilogue of rows p0..p1-1, columns m0..m1-1 of y (P, C): + bias + residual when
    `residual` (P, C) is not empty, else act(y + bias); nothing when `bias` is empty (training)."""
    if bias.shape[0] == 0:
        return
    if residual.shape[0] > 0:
        bias_residual(y, p0, p1, m0, m1, bias, residual)
    else:
        bias_act(y, p0, p1, m0, m1, bias, act)


@njit_serial
def sum_rows(y, sums):
    """sums[c] = sum over rows of y (P, C): squeeze-and-excitation's squeeze, one output row at a time."""
    channels = y.shape[1]
    for c in range(channels):
        sums[c] = 0
    for p in range(y.shape[0]):
        for c in range(channels):
            sums[c] += y[p, c]


@njit_serial
def scale_by_gate(x, p0, p1, gate, rows_per_image):
    """x[p] *= gate[image of p] for rows p0..p1-1 of x: (P, C); gate: (N, C). Squeeze-and-excitation's
    scale, applied by the projection that reads x (V3 paper, sec. 5.3)."""
    channels = x.shape[1]
    for p in range(p0, p1):
        row, g = x[p], gate[p // rows_per_image]
        for c in range(channels):
            row[c] *= g[c]
