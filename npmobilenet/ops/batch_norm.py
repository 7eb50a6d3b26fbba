"""Batch normalisation over the channel axis of NHWC activations (Ioffe & Szegedy, 2015).

In NHWC the `P = N*H*W` pixels are the rows of a `(P, C)` matrix, and each channel's statistics
are column reductions. Training mode (Algorithm 1):

    mean_c = sum_p x_pc / P,     var_c = sum_p (x_pc - mean_c)^2 / P      (biased)
    y_pc   = gamma_c * (x_pc - mean_c) / sqrt(var_c + eps) + beta_c

and the backward pass (section 3; the statistics depend on x, hence the two extra terms):

    dbeta_c  = sum_p dy_pc,      dgamma_c = sum_p dy_pc * xhat_pc,     xhat = (x - mean) / std
    dx_pc    = gamma_c / std_c * (dy_pc - dbeta_c / P - xhat_pc * dgamma_c / P)

Each line is one Numba pass over the rows, where NumPy needed seven: training spent half its time
here. The statistics read x once: each block of rows that fits in cache is summed for its mean and
again around it (two passes' accuracy where |mean| >> std), and the blocks' moments are merged by
Chan, Golub and LeVeque's (1979) pairwise update. The backward pass
recomputes xhat from x, so nothing of the size of x is cached. Sums are taken in float64 over
a fixed number of row chunks and added in order: the chunks depend on the shape only, so every
thread count gives the same bits. Eval mode uses the running statistics.

The activation after batch norm (ReLU, ReLU6, hard-swish, hard-sigmoid: `layers.ConvBNAct`) can
run inside these passes: the forward pass activates each row as it is normalised, and the backward
pass takes the activation's derivative at the normalised value, recomputed from x by the same
expression, so no tensor between batch norm and its activation exists in either direction (as a
layer of its own, the activation took a pass forward and five NumPy passes backward, each with an
array of its own: about a sixth of V2's training step, README). The formulas are the activation layers' (`layers/activation.py`), derivatives at the kinks
included, so the result is the two layers'.
"""
import numpy as np
from numba import prange

from npmobilenet.config import choose_kernel, njit_serial, serial_and_parallel
from npmobilenet.ops import epilogue
from npmobilenet.ops.epilogue import HARDSWISH, IDENTITY, RELU, RELU6, activation_code

CHUNKS = 16     # row chunks of the per-channel sums (a function of nothing but this constant)

# The activations a batch norm can end with: the convolutions' codes (ops/epilogue.py) and one more.
HARDSIGMOID = max(epilogue.LINEAR_ACTIVATIONS.values()) + 1
ACTIVATIONS = dict(epilogue.ACTIVATIONS, hardsigmoid=HARDSIGMOID)
_F32 = np.float32   # constants that keep float32 arithmetic float32 (and float64 float64)


@njit_serial
def _activate_row(y, act):
    # y = act(y) in place, by the activation layers' formulas rather than epilogue.activate_run's
    # (inference's): `0 if v < 0 else v`, not max(v, 0), so that a NaN stays a NaN (training stops
    # on a NaN loss) as in NumPy's clip, and / 6 where inference multiplies by 1/6.
    zero, three, six = _F32(0), _F32(3), _F32(6)
    if act == RELU:
        for c in range(y.shape[0]):
            v = y[c]
            y[c] = zero if v < zero else v
    elif act == RELU6:
        for c in range(y.shape[0]):
            v = y[c]
            y[c] = zero if v < zero else (six if v > six else v)
    elif act == HARDSWISH:
        for c in range(y.shape[0]):
            v = y[c]
            t = v + three
            y[c] = v * ((zero if t < zero else (six if t > six else t)) / six)     # V3 paper, Eq. 2
    elif act == HARDSIGMOID:
        for c in range(y.shape[0]):
            t = y[c] + three
            y[c] = (zero if t < zero else (six if t > six else t)) / six


@njit_serial
def _gated_row(dy, x, center, scale, shift, act, g):
    # g = dy * act'(z) with z = (x - center) * scale + shift, the value the forward pass activated,
    # by the same expression; the derivatives at the kinks are PyTorch's, as in layers/activation.py
    zero, one, two, three, six = _F32(0), _F32(1), _F32(2), _F32(3), _F32(6)
    if act == RELU:
        for c in range(g.shape[0]):
            z = (x[c] - center[c]) * scale[c] + shift[c]
            g[c] = dy[c] * (one if z > zero else zero)
    elif act == RELU6:
        for c in range(g.shape[0]):
            z = (x[c] - center[c]) * scale[c] + shift[c]
            g[c] = dy[c] * (one if z > zero and z < six else zero)
    elif act == HARDSWISH:
        for c in range(g.shape[0]):
            z = (x[c] - center[c]) * scale[c] + shift[c]
            g[c] = dy[c] * (zero if z < -three else ((two * z + three) / six if z <= three else one))
    else:
        for c in range(g.shape[0]):
            z = (x[c] - center[c]) * scale[c] + shift[c]
            g[c] = dy[c] * (one if z > -three and z < three else zero) / six


def _gradient_sums(dy, x, center, scale, shift, act, out_dy, out_dyx):
    # per chunk k: out_dy[k, c] = sum of dy[p, c]; out_dyx[k, c] = sum of dy[p, c] * (x[p, c] - center[c]),
    # dy taken through the activation's derivative first when there is one
    rows, channels = x.shape
    chunks = out_dy.shape[0]
    for k in prange(chunks):
        p0, p1 = k * rows // chunks, (k + 1) * rows // chunks
        sum_dy, sum_dyx = out_dy[k], out_dyx[k]
        gated = np.empty(channels, x.dtype)
        for c in range(channels):
            sum_dy[c] = 0.0
            sum_dyx[c] = 0.0
        for p in range(p0, p1):
            dyp, xp = dy[p], x[p]
            if act != IDENTITY:
                _gated_row(dyp, xp, center, scale, shift, act, gated)
                dyp = gated
            for c in range(channels):
                sum_dy[c] += dyp[c]
                sum_dyx[c] += dyp[c] * (xp[c] - center[c])


def _column_moments(x, block, means, squares):
    # per chunk k: means[k, c], the mean of x[p, c] over chunk k's rows, and squares[k, c], the sum
    # of (x[p, c] - means[k, c])^2 there. A block of rows (in cache) is summed twice, for its mean
    # and then around it, and merged into the chunk's by Chan, Golub and LeVeque's update: one
    # read of x from memory, with the accuracy of two passes.
    rows, channels = x.shape
    chunks = means.shape[0]
    for k in prange(chunks):
        p0, p1 = k * rows // chunks, (k + 1) * rows // chunks
        mean, m2 = means[k], squares[k]
        block_mean, block_m2 = np.empty(channels), np.empty(channels)
        for c in range(channels):
            mean[c] = 0.0
            m2[c] = 0.0
        count = 0
        for b0 in range(p0, p1, block):
            b1 = min(b0 + block, p1)
            for c in range(channels):
                block_mean[c] = 0.0
                block_m2[c] = 0.0
            for p in range(b0, b1):
                xp = x[p]
                for c in range(channels):
                    block_mean[c] += xp[c]
            for c in range(channels):
                block_mean[c] /= b1 - b0
            for p in range(b0, b1):
                xp = x[p]
                for c in range(channels):
                    d = xp[c] - block_mean[c]
                    block_m2[c] += d * d
            _merge_moments(mean, m2, count, block_mean, block_m2, b1 - b0)
            count += b1 - b0


@njit_serial
def _merge_moments(mean, m2, count, other_mean, other_m2, other_count):
    # (mean, m2) of `count` values joined by those of `other_count` more, in place
    total = count + other_count
    for c in range(mean.shape[0]):
        delta = other_mean[c] - mean[c]
        mean[c] += delta * other_count / total
        m2[c] += other_m2[c] + delta * delta * count * other_count / total


def _normalize(x, mean, scale, beta, act, y):
    # y[p, c] = act((x[p, c] - mean[c]) * scale[c] + beta[c]). The mean is subtracted before scaling:
    # folding it into one offset (x * scale + (beta - mean * scale)) cancels catastrophically in
    # float32 when |mean| >> std (seen: 7x7 and 1x1 maps at small batches stopped training).
    rows, channels = x.shape
    chunks = min(rows, 4 * CHUNKS)
    for k in prange(chunks):
        p0, p1 = k * rows // chunks, (k + 1) * rows // chunks
        for p in range(p0, p1):
            xp, yp = x[p], y[p]
            for c in range(channels):
                yp[c] = (xp[c] - mean[c]) * scale[c] + beta[c]
            if act != IDENTITY:
                _activate_row(yp, act)      # while the row is in L1


def _input_gradient(dy, x, k1, k2, k3, mean, scale, shift, act, dx):
    # dx[p, c] = k1[c] * dy[p, c] + k2[c] * (x[p, c] - mean[c]) + k3[c], dy through the activation's derivative
    rows, channels = x.shape
    chunks = min(rows, 4 * CHUNKS)
    for k in prange(chunks):
        p0, p1 = k * rows // chunks, (k + 1) * rows // chunks
        gated = np.empty(channels, x.dtype)
        for p in range(p0, p1):
            dyp, xp, dxp = dy[p], x[p], dx[p]
            if act != IDENTITY:
                _gated_row(dyp, xp, mean, scale, shift, act, gated)
                dyp = gated
            for c in range(channels):
                dxp[c] = k1[c] * dyp[c] + k2[c] * (xp[c] - mean[c]) + k3[c]


_MOMENTS = serial_and_parallel(_column_moments)
BLOCK_VALUES = 16384    # a block of rows of the statistics: 64 KiB of float32, in L2 for its second sum
_GRADIENT_SUMS = serial_and_parallel(_gradient_sums)
_NORMALIZE = serial_and_parallel(_normalize)
_DX = serial_and_parallel(_input_gradient)


@njit_serial
def _column_statistics(means, squares, rows, mean, var):
    # the chunks' moments merged in order: mean[c], and var[c] = m2 / rows (biased)
    chunks = means.shape[0]
    m2 = np.zeros(mean.shape[0])
    mean[:] = 0.0
    count = 0
    for k in range(chunks):
        size = (k + 1) * rows // chunks - k * rows // chunks
        _merge_moments(mean, m2, count, means[k], squares[k], size)
        count += size
    for c in range(mean.shape[0]):
        var[c] = m2[c] / rows


@njit_serial
def _forward_coefficients(mean, var, gamma, beta, eps, center, scale, shift):
    # in x's dtype: center = mean, scale = gamma / sqrt(var + eps), shift = beta
    for c in range(mean.shape[0]):
        center[c] = mean[c]
        scale[c] = np.float64(gamma[c]) / np.sqrt(np.float64(var[c]) + eps)
        shift[c] = beta[c]


@njit_serial
def _backward_coefficients(partial_dy, partial_dyx, var, gamma, eps, count, training, dgamma, dbeta, k1, k2, k3):
    # dbeta = sum dy, dgamma = sum dy * xhat; dx = k1 * dy + k2 * (x - mean) + k3 (see the module doc)
    for c in range(partial_dy.shape[1]):
        sum_dy, sum_dyx = 0.0, 0.0
        for k in range(partial_dy.shape[0]):
            sum_dy += partial_dy[k, c]
            sum_dyx += partial_dyx[k, c]
        inv_std = 1.0 / np.sqrt(np.float64(var[c]) + eps)
        scale = np.float64(gamma[c]) * inv_std
        dbeta[c] = sum_dy
        dgamma[c] = sum_dyx * inv_std
        k1[c] = scale
        k2[c] = -scale * inv_std * dgamma[c] / count if training else 0.0
        k3[c] = -scale * sum_dy / count if training else 0.0


def _kernel(pair, x):
    return choose_kernel(pair[0], pair[1], x.size)


def _rows(x, name):
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be a float32/float64 array of shape (N, H, W, C), got "
                        f"{getattr(x, 'shape', type(x).__name__)} {getattr(x, 'dtype', '')}")
    return np.ascontiguousarray(x).reshape(-1, x.shape[3])


def _chunks(rows):
    return max(1, min(CHUNKS, rows))


def batch_statistics(x):
    """(mean, biased variance) per channel of x `(N, H, W, C)`, float64 `(C,)` each."""
    rows = _rows(x, "x")
    count, channels = rows.shape
    means = np.empty((_chunks(count), channels), np.float64)
    squares = np.empty_like(means)
    _kernel(_MOMENTS, rows)(rows, max(1, BLOCK_VALUES // channels), means, squares)
    mean, var = np.empty(channels), np.empty(channels)
    _column_statistics(means, squares, count, mean, var)
    return mean, var


def _coefficients(rows, mean, var, gamma, beta, eps):
    center, scale, shift = (np.empty(rows.shape[1], rows.dtype) for _ in range(3))
    _forward_coefficients(mean, var, gamma, beta, float(eps), center, scale, shift)
    return center, scale, shift


def batch_norm_forward(x, mean, var, gamma, beta, eps, activation=None):
    """y = act(gamma * (x - mean) / sqrt(var + eps) + beta), per channel, in one pass; `activation`
    one of None, "relu", "relu6", "hardswish", "hardsigmoid"."""
    act = activation_code(activation, ACTIVATIONS)
    rows = _rows(x, "x")
    center, scale, shift = _coefficients(rows, mean, var, gamma, beta, eps)
    y = np.empty_like(rows)
    _kernel(_NORMALIZE, rows)(rows, center, scale, shift, act, y)
    return y.reshape(x.shape)


def batch_norm_backward(dy, x, mean, var, gamma, eps, training, activation=None, beta=None):
    """(dx, dgamma, dbeta) of `batch_norm_forward` at x with statistics (mean, var); `training`:
    the statistics are x's own (batch statistics), so dx has the two extra terms. With an
    `activation`, dy is the gradient of the activated output (`beta` is then needed too: the
    derivative is taken at the normalised value)."""
    act = activation_code(activation, ACTIVATIONS)
    if act != IDENTITY and beta is None:
        raise ValueError(f"batch_norm_backward with activation={activation!r} needs beta")
    rows, dy_rows = _rows(x, "x"), _rows(dy, "dy")
    if dy_rows.shape != rows.shape:
        raise ValueError(f"dy must have x's shape {x.shape}, got {dy.shape}")
    dy_rows = dy_rows.astype(rows.dtype, copy=False)
    count, channels = rows.shape
    dtype = rows.dtype
    center, scale, shift = _coefficients(rows, mean, var, gamma, beta if beta is not None else np.zeros(channels), eps)
    partial_dy = np.empty((_chunks(count), channels), np.float64)
    partial_dyx = np.empty_like(partial_dy)
    _kernel(_GRADIENT_SUMS, rows)(dy_rows, rows, center, scale, shift, act, partial_dy, partial_dyx)
    dgamma, dbeta = np.empty(channels), np.empty(channels)
    k1, k2, k3 = (np.empty(channels, dtype) for _ in range(3))
    _backward_coefficients(partial_dy, partial_dyx, var, gamma, float(eps), count, bool(training),
                           dgamma, dbeta, k1, k2, k3)
    dx = np.empty_like(rows)
    _kernel(_DX, rows)(dy_rows, rows, k1, k2, k3, center, scale, shift, act, dx)
    return dx.reshape(x.shape), dgamma, dbeta
