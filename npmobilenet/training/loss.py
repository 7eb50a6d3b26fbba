"""Softmax cross-entropy with optional label smoothing: the forward loss and its backward.

With `K` classes, smoothing `eps` replaces the one-hot target by

    q_k = (1 - eps) * [k == y] + eps / K                    (Szegedy et al. 2016, Sec. 7)

and the loss of one example is `-sum_k q_k log p_k` with `p = softmax(z)`. Its gradient with
respect to the logits is the familiar `p - q`; averaged over the batch, `dz = (p - q) / N`.

Numerical stability: `log p_k = z_k - max(z) - log(sum_j exp(z_j - max(z)))`, so no `exp` ever
sees a positive argument and logits of 1e4 give an exact, finite loss.
"""
import numpy as np


def _check(logits, labels, label_smoothing):
    if not isinstance(logits, np.ndarray) or logits.ndim != 2 or logits.dtype.kind != "f":
        raise TypeError(f"logits must be a float array (N, K), got {getattr(logits, 'shape', type(logits))}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must be integers of shape ({logits.shape[0]},), got {labels.dtype} {labels.shape}")
    num_classes = logits.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return labels.astype(np.intp)


def log_softmax(logits):
    """Row-wise log-softmax of `(N, K)` logits, stable for large values."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def smoothed_targets(labels, num_classes, label_smoothing, dtype=np.float64):
    """The target distribution q: `(N,)` labels -> `(N, K)` rows summing to 1."""
    q = np.full((labels.shape[0], num_classes), label_smoothing / num_classes, dtype=dtype)
    q[np.arange(labels.shape[0]), labels] += 1.0 - label_smoothing
    return q


def softmax_cross_entropy_forward(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy of `logits` (N, K) against integer `labels` (N,).

    Returns `(loss, cache)`: loss a Python float (accumulated in float64), cache what the
    backward needs (the softmax probabilities, the labels, the smoothing).
    """
    labels = _check(logits, labels, label_smoothing)
    n, num_classes = logits.shape
    log_p = log_softmax(logits.astype(np.float64))
    q = smoothed_targets(labels, num_classes, label_smoothing)
    loss = float(-(q * log_p).sum() / n)
    return loss, (np.exp(log_p), labels, label_smoothing, logits.dtype)


def softmax_cross_entropy_backward(cache):
    """d(mean loss)/d(logits): `(p - q) / N`, shape (N, K), in the logits' dtype."""
    probs, labels, label_smoothing, dtype = cache
    n, num_classes = probs.shape
    dlogits = (probs - smoothed_targets(labels, num_classes, label_smoothing)) / n
    return dlogits.astype(dtype)


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """Forward and backward at once: `(loss, dlogits)`."""
    loss, cache = softmax_cross_entropy_forward(logits, labels, label_smoothing)
    return loss, softmax_cross_entropy_backward(cache)
