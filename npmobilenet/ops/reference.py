"""Slow, obviously correct NumPy convolutions: the oracle every kernel is tested against.

An algorithmic reference in the spirit of llm.c's naive layers. It deliberately shares no code
with the kernels or with `geometry.py` (its own argument parsing, padding and output size), so a
bug there cannot hide in both. Each convolution is written as a sum over kernel taps:

    y[n, oh, ow, :] = sum_{i, j} x_pad[n, oh*sh + i*rh, ow*sw + j*rw, :] (*) w[i, j]      (rh, rw: dilation)

where (*) is a matrix product over channels for the standard and pointwise convolutions and an
elementwise product for the depthwise one. The backward functions are the transposes of the same
sum, tap by tap (the input gradient is scattered into a padded buffer that is then cropped).

Layouts: x `(N, H, W, C)`; weights standard `(KH, KW, Cin, Cout)`, depthwise `(KH, KW, C)`,
pointwise `(Cin, Cout)`. `stride` and `dilation` are an int or `(vertical, horizontal)`;
`padding` an int, `(ph, pw)` or `((top, bottom), (left, right))`.

MAC counting: the forward functions take `counter=None`; given a one-element list, each adds to
`counter[0]` the multiply-accumulates it performs, counted where they happen: at every kernel tap,
(output elements) x (channel products per output element at that tap). Taps that land on padding
are counted (they are multiplied, by zero): this is the convention of the MobileNet papers, whose
cost is `KH * KW * Cin_per_group * Cout * Ho * Wo` per image.
"""
import numpy as np


def _pair(value):
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _sides(padding):
    """padding as ((top, bottom), (left, right))."""
    if isinstance(padding, (tuple, list)):
        vertical, horizontal = padding
        if isinstance(vertical, (tuple, list)):
            return (int(vertical[0]), int(vertical[1])), (int(horizontal[0]), int(horizontal[1]))
        return (int(vertical), int(vertical)), (int(horizontal), int(horizontal))
    return (int(padding), int(padding)), (int(padding), int(padding))


def _pad(x, padding):
    (top, bottom), (left, right) = _sides(padding)
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def _taps(x_padded, kh, kw, stride, dilation):
    """Yield (i, j, window) for every kernel tap; window[n, oh, ow] = x_padded[n, oh*sh + i*dilation_h, ow*sw + j*dilation_w]."""
    sh, sw = _pair(stride)
    dilation_h, dilation_w = _pair(dilation)
    _, hp, wp, _ = x_padded.shape
    ho = (hp - dilation_h * (kh - 1) - 1) // sh + 1
    wo = (wp - dilation_w * (kw - 1) - 1) // sw + 1
    assert ho >= 1 and wo >= 1, "reference: padded input smaller than the dilated kernel"
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dilation_h, i * dilation_h + sh * (ho - 1) + 1, sh)
            cols = slice(j * dilation_w, j * dilation_w + sw * (wo - 1) + 1, sw)
            yield i, j, (slice(None), rows, cols, slice(None))


def _crop(x_padded, padding):
    (top, bottom), (left, right) = _sides(padding)
    _, hp, wp, _ = x_padded.shape
    return x_padded[:, top:hp - bottom, left:wp - right, :]


# -- standard convolution: x (N, H, W, Cin), w (KH, KW, Cin, Cout) -> y (N, Ho, Wo, Cout) ----------
def conv2d(x, w, stride=1, padding=0, dilation=1, *, counter=None):
    kh, kw, _, cout = w.shape
    xp = _pad(x, padding)
    y = None
    for i, j, window in _taps(xp, kh, kw, stride, dilation):
        patch = xp[window]  # (N, Ho, Wo, Cin)
        term = np.einsum("nhwc,cd->nhwd", patch, w[i, j])
        y = term if y is None else y + term
        if counter is not None:
            counter[0] += term.size * w.shape[2]  # each output element: Cin products at this tap
    return y.astype(x.dtype, copy=False)


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1):
    kh, kw, _, _ = w.shape
    xp = _pad(x, padding)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i, j, window in _taps(xp, kh, kw, stride, dilation):
        dxp[window] += np.einsum("nhwd,cd->nhwc", dy, w[i, j])
        dw[i, j] = np.einsum("nhwc,nhwd->cd", xp[window], dy)
    return _crop(dxp, padding).copy(), dw


# -- depthwise convolution: x (N, H, W, C), w (KH, KW, C) -> y (N, Ho, Wo, C) ----------------------
def depthwise_conv2d(x, w, stride=1, padding=0, dilation=1, *, counter=None):
    kh, kw, _ = w.shape
    xp = _pad(x, padding)
    y = None
    for i, j, window in _taps(xp, kh, kw, stride, dilation):
        term = xp[window] * w[i, j]  # each channel filtered by its own kernel
        y = term if y is None else y + term
        if counter is not None:
            counter[0] += term.size  # one product per output element at this tap
    return y.astype(x.dtype, copy=False)


def depthwise_conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1):
    kh, kw, _ = w.shape
    xp = _pad(x, padding)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i, j, window in _taps(xp, kh, kw, stride, dilation):
        dxp[window] += dy * w[i, j]
        dw[i, j] = np.einsum("nhwc,nhwc->c", xp[window], dy)
    return _crop(dxp, padding).copy(), dw


# -- pointwise (1x1) convolution: x (N, H, W, Cin), w (Cin, Cout) -> y (N, H, W, Cout) -------------
def pointwise_conv2d(x, w, *, counter=None):
    y = np.einsum("nhwc,cd->nhwd", x, w)
    if counter is not None:
        counter[0] += y.size * w.shape[0]
    return y.astype(x.dtype, copy=False)


def pointwise_conv2d_backward(dy, x, w):
    dx = np.einsum("nhwd,cd->nhwc", dy, w)
    dw = np.einsum("nhwc,nhwd->cd", x, dy)
    return dx, dw


# -- batch normalisation (Ioffe & Szegedy, 2015): x (N, H, W, C), statistics per channel -----------
def batch_statistics(x):
    """Per-channel mean and biased variance over N, H, W, in float64."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(0, 1, 2))
    return mean, ((x - mean) ** 2).mean(axis=(0, 1, 2))


def batch_norm(x, mean, var, gamma, beta, eps):
    x_hat = (np.asarray(x, np.float64) - mean) / np.sqrt(var + eps)
    return gamma * x_hat + beta


def batch_norm_backward(dy, x, mean, var, gamma, eps, training):
    """(dx, dgamma, dbeta); with `training` the statistics are x's own, and dx follows the chain
    rule through them: Algorithm 1 differentiated term by term (not the simplified formula)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    count = x.shape[0] * x.shape[1] * x.shape[2]
    std = np.sqrt(var + eps)
    x_hat = (x - mean) / std
    dgamma = (dy * x_hat).sum(axis=(0, 1, 2))
    dbeta = dy.sum(axis=(0, 1, 2))
    dx_hat = dy * gamma
    if not training:
        return dx_hat / std, dgamma, dbeta
    dvar = (dx_hat * (x - mean)).sum(axis=(0, 1, 2)) * -0.5 * (var + eps) ** -1.5
    dmean = -(dx_hat / std).sum(axis=(0, 1, 2)) + dvar * (-2.0 * (x - mean)).mean(axis=(0, 1, 2))
    return dx_hat / std + dvar * 2.0 * (x - mean) / count + dmean / count, dgamma, dbeta


# -- bilinear resize (PyTorch's align_corners=False): x (N, H, W, C) -> y (N, Ho, Wo, C) ------------
def _interpolation_matrix(size, out_size):
    """(out_size, size): row o holds the weights output position o gives the input positions.
    Output o samples the input at (o + 0.5) size / out_size - 0.5, moved up to 0 if below it,
    between its two neighbouring pixels (one pixel past the last)."""
    matrix = np.zeros((out_size, size))
    for o in range(out_size):
        source = max((o + 0.5) * size / out_size - 0.5, 0.0)
        below = int(np.floor(source))
        if below >= size - 1:
            matrix[o, size - 1] = 1.0
        else:
            matrix[o, below] = 1.0 - (source - below)
            matrix[o, below + 1] = source - below
    return matrix


def bilinear_resize(x, size):
    """y[n, o, p] = sum_{h, w} A_h[o, h] A_w[p, w] x[n, h, w]: separable interpolation matrices."""
    rows, columns = _interpolation_matrix(x.shape[1], size[0]), _interpolation_matrix(x.shape[2], size[1])
    return np.einsum("oh,nhwc,pw->nopc", rows, x, columns).astype(x.dtype, copy=False)


def bilinear_resize_backward(dy, input_size):
    """The transpose: dx[n, h, w] = sum_{o, p} A_h[o, h] A_w[p, w] dy[n, o, p]."""
    rows, columns = _interpolation_matrix(input_size[0], dy.shape[1]), _interpolation_matrix(input_size[1], dy.shape[2])
    return np.einsum("oh,nopc,pw->nhwc", rows, dy, columns).astype(dy.dtype, copy=False)


# -- non-maximum suppression, brute force: boxes (K, 4) (x1, y1, x2, y2), scores (K,) -------------------
def _overlap(a, b):
    """IoU of two boxes, written out."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def non_max_suppression(boxes, scores, labels, iou_threshold):
    """Kept indices, by decreasing score: repeatedly take the best remaining box (the first of equal
    scores) and drop every remaining box of its label overlapping it with IoU > iou_threshold."""
    remaining = list(range(len(scores)))
    keep = []
    while remaining:
        best = max(remaining, key=lambda i: (scores[i], -i))
        keep.append(best)
        remaining = [i for i in remaining
                     if i != best and not (labels[i] == labels[best] and _overlap(boxes[best], boxes[i]) > iou_threshold)]
    return np.array(keep, np.int64)
