"""Softmax cross-entropy: values from the definition, stability, and the backward against finite differences."""
import math

import numpy as np
import pytest

from npmobilenet.training.loss import (
    log_softmax, softmax_cross_entropy, softmax_cross_entropy_backward, softmax_cross_entropy_forward,
)


def naive_loss(logits, labels, eps=0.0):
    """-sum_k q_k log p_k averaged over the batch, straight from the definition, in float64."""
    n, k = logits.shape
    total = 0.0
    for i in range(n):
        z = [float(v) for v in logits[i]]
        log_norm = math.log(sum(math.exp(v) for v in z))
        for j in range(k):
            q = (1 - eps) * (j == labels[i]) + eps / k
            total -= q * (z[j] - log_norm)
    return total / n


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_loss_matches_the_definition(eps):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 7))
    labels = rng.integers(0, 7, 5)
    loss, _ = softmax_cross_entropy_forward(logits, labels, eps)
    assert loss == pytest.approx(naive_loss(logits, labels, eps), rel=1e-12)


def test_uniform_logits_give_log_k():
    loss, dz = softmax_cross_entropy(np.zeros((3, 10), np.float32), np.array([0, 4, 9]))
    assert loss == pytest.approx(math.log(10))
    assert dz.dtype == np.float32


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_backward_matches_central_differences(eps):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, 6)) * 3
    labels = rng.integers(0, 6, 4)
    _, dz = softmax_cross_entropy(logits, labels, eps)
    h = 1e-6
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[idx] += h
        minus[idx] -= h
        numeric[idx] = (softmax_cross_entropy_forward(plus, labels, eps)[0]
                        - softmax_cross_entropy_forward(minus, labels, eps)[0]) / (2 * h)
    err = np.abs(dz - numeric).max()
    print("max |dz - finite difference| =", err)
    assert err < 1e-8


def test_large_logits_are_stable():
    # exp(1e4) overflows; the shifted form gives the exact answer: one logit 1e4, the rest 0
    logits = np.array([[1e4, 0.0, 0.0], [0.0, 1e4, -1e4]], dtype=np.float32)
    labels = np.array([0, 0])
    loss, dz = softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.isfinite(dz).all()
    # example 0 is right with certainty (loss 0); example 1 is wrong by 1e4 (loss 1e4)
    assert loss == pytest.approx((0.0 + 1e4) / 2)
    assert np.allclose(dz, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-7)
    assert np.allclose(log_softmax(logits.astype(np.float64) + 5e3), log_softmax(logits.astype(np.float64)))


def test_label_smoothing_targets_and_gradient_sum():
    logits = np.array([[2.0, -1.0, 0.5, 0.0]])
    _, cache = softmax_cross_entropy_forward(logits, [2], 0.1)
    dz = softmax_cross_entropy_backward(cache)
    p = np.exp(logits) / np.exp(logits).sum()
    q = np.array([0.025, 0.025, 0.925, 0.025])
    assert np.allclose(dz, p - q)
    assert abs(dz.sum()) < 1e-12  # both p and q sum to one


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="labels must lie in"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="label_smoothing"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), 1.0)
    with pytest.raises(ValueError, match="labels must be integers"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
