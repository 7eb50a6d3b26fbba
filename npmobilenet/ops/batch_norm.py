"""Batch normalisation over the channel axis of NHWC activations (Ioffe & Szegedy, 2015).

In NHWC the `P = N*H*W` pixels are the rows of a `(P, C)` matrix, and each channel's statistics
are column reductions. Training mode (Algorithm 1):

    mean_c = sum_p x_pc / P,     var_c = sum_p (x_pc - mean_c)^2 / P      (biased)
    y_pc   = gamma_c * (x_pc - mean_c) / sqrt(var_c + eps) + beta_c

and the backward pass (section 3; the statistics depend on x, hence the two extra terms):

    dbeta_c  = sum_p dy_pc,      dgamma_c = sum_p dy_pc * xhat_pc,     xhat = (x - mean) / std
    dx_pc    = gamma_c / std_c * (dy_pc - dbeta_c / P - xhat_pc * dgamma_c / P)

Each line is one Numba pass over the rows (the variance a second pass after the mean, for
accuracy), where NumPy needed seven: training spent half its time here. The backward pass
recomputes xhat from x, so nothing of the size of x is cached. Sums are taken in float64 over
a fixed number of row chunks and added in order: the chunks depend on the shape only, so every
thread count gives the same bits. Eval mode uses the running statistics.
"""
import numpy as np
from numba import prange

from npmobilenet.config import choose_kernel, njit_serial, serial_and_parallel

CHUNKS = 16     # row chunks of the per-channel sums (a function of nothing but this constant)


def _gradient_sums(dy, x, center, out_dy, out_dyx):
    # per chunk k: out_dy[k, c] = sum of dy[p, c]; out_dyx[k, c] = sum of dy[p, c] * (x[p, c] - center[c])
    rows, channels = x.shape
    chunks = out_dy.shape[0]
    for k in prange(chunks):
        p0, p1 = k * rows // chunks, (k + 1) * rows // chunks
        sum_dy, sum_dyx = out_dy[k], out_dyx[k]
        for c in range(channels):
            sum_dy[c] = 0.0
            sum_dyx[c] = 0.0
        for p in range(p0, p1):
            dyp, xp = dy[p], x[p]
            for c in range(channels):
                sum_dy[c] += dyp[c]
                sum_dyx[c] += dyp[c] * (xp[c] - center[c])


def _column_moments(x, center, order, out):
    # out[k, c] = sum over chunk k's rows of (x[p, c] - center[c]) ** order, order 1 or 2
    rows, channels = x.shape
    chunks = out.shape[0]
    for k in prange(chunks):
        p0, p1 = k * rows // chunks, (k + 1) * rows // chunks
        acc = out[k]
        for c in range(channels):
            acc[c] = 0.0
        for p in range(p0, p1):
            xp = x[p]
            if order == 1:
                for c in range(channels):
                    acc[c] += xp[c] - center[c]
            else:
                for c in range(channels):
                    d = xp[c] - center[c]
                    acc[c] += d * d


def _normalize(x, mean, scale, beta, y):
    # y[p, c] = (x[p, c] - mean[c]) * scale[c] + beta[c]. The mean is subtracted before scaling:
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


def _input_gradient(dy, x, k1, k2, k3, mean, dx):
    # dx[p, c] = k1[c] * dy[p, c] + k2[c] * (x[p, c] - mean[c]) + k3[c]
    rows, channels = x.shape
    chunks = min(rows, 4 * CHUNKS)
    for k in prange(chunks):
        p0, p1 = k * rows // chunks, (k + 1) * rows // chunks
        for p in range(p0, p1):
            dyp, xp, dxp = dy[p], x[p], dx[p]
            for c in range(channels):
                dxp[c] = k1[c] * dyp[c] + k2[c] * (xp[c] - mean[c]) + k3[c]


_MOMENTS = serial_and_parallel(_column_moments)
_GRADIENT_SUMS = serial_and_parallel(_gradient_sums)
_NORMALIZE = serial_and_parallel(_normalize)
_DX = serial_and_parallel(_input_gradient)


@njit_serial
def _column_total(partial, count, total, total_as_x):
    # total[c] = sum over chunks k, in order, of partial[k, c], divided by count; also in x's dtype
    for c in range(partial.shape[1]):
        t = 0.0
        for k in range(partial.shape[0]):
            t += partial[k, c]
        total[c] = t / count
        total_as_x[c] = total[c]


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
    partial = np.empty((_chunks(count), channels), np.float64)
    mean, var, center = np.empty(channels), np.empty(channels), np.empty(channels, rows.dtype)
    _kernel(_MOMENTS, rows)(rows, np.zeros(channels, rows.dtype), 1, partial)
    _column_total(partial, count, mean, center)
    _kernel(_MOMENTS, rows)(rows, center, 2, partial)
    _column_total(partial, count, var, np.empty(channels, rows.dtype))
    return mean, var


def batch_norm_forward(x, mean, var, gamma, beta, eps):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel, in one pass."""
    rows = _rows(x, "x")
    channels = rows.shape[1]
    center, scale, shift = (np.empty(channels, rows.dtype) for _ in range(3))
    _forward_coefficients(mean, var, gamma, beta, float(eps), center, scale, shift)
    y = np.empty_like(rows)
    _kernel(_NORMALIZE, rows)(rows, center, scale, shift, y)
    return y.reshape(x.shape)


def batch_norm_backward(dy, x, mean, var, gamma, eps, training):
    """(dx, dgamma, dbeta) of `batch_norm_forward` at x with statistics (mean, var); `training`:
    the statistics are x's own (batch statistics), so dx has the two extra terms."""
    rows, dy_rows = _rows(x, "x"), _rows(dy, "dy")
    if dy_rows.shape != rows.shape:
        raise ValueError(f"dy must have x's shape {x.shape}, got {dy.shape}")
    dy_rows = dy_rows.astype(rows.dtype, copy=False)
    count, channels = rows.shape
    dtype = rows.dtype
    center = np.asarray(mean).astype(dtype)
    partial_dy = np.empty((_chunks(count), channels), np.float64)
    partial_dyx = np.empty_like(partial_dy)
    _kernel(_GRADIENT_SUMS, rows)(dy_rows, rows, center, partial_dy, partial_dyx)
    dgamma, dbeta = np.empty(channels), np.empty(channels)
    k1, k2, k3 = (np.empty(channels, dtype) for _ in range(3))
    _backward_coefficients(partial_dy, partial_dyx, var, gamma, float(eps), count, bool(training),
                           dgamma, dbeta, k1, k2, k3)
    dx = np.empty_like(rows)
    _kernel(_DX, rows)(dy_rows, rows, k1, k2, k3, center, dx)
    return dx.reshape(x.shape), dgamma, dbeta
