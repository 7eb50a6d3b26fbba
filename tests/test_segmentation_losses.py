"""Per-pixel cross-entropy with an ignore index (values written out, gradient by finite
differences) and mIoU as Pascal VOC computes it (cases by hand)."""
import math

import numpy as np
import pytest

from gradcheck import assert_close, numeric_grad, sample_indices
from npmobilenet.segmentation import confusion_matrix, mean_iou, pixel_cross_entropy


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((2, 3, 4, 5)) * 3
    labels = rng.integers(0, 5, (2, 3, 4))
    labels[0, 0, :2] = 255
    labels[1, 2, 3] = 255
    return logits, labels


def test_loss_written_out():
    logits, labels = _problem()
    loss, _ = pixel_cross_entropy(logits, labels)
    terms = [math.log(sum(math.exp(v) for v in logits[n, i, j])) - logits[n, i, j, labels[n, i, j]]
             for n in range(2) for i in range(3) for j in range(4) if labels[n, i, j] != 255]
    assert len(terms) == 21 and loss == pytest.approx(sum(terms) / len(terms), rel=1e-12)


def test_gradient_by_finite_differences():
    logits, labels = _problem(1)
    _, grad = pixel_cross_entropy(logits, labels)
    assert not np.any(grad[0, 0, :2]) and not np.any(grad[1, 2, 3])        # ignored pixels: no gradient
    rng = np.random.default_rng(1)
    for idx in sample_indices(logits.shape, 12, rng):
        assert_close(grad[idx], numeric_grad(lambda: pixel_cross_entropy(logits, labels)[0], logits, idx), f"dz{idx}")


def test_dtype_large_logits_and_nothing_labelled():
    logits, labels = _problem(2)
    loss, grad = pixel_cross_entropy((logits * 1e3).astype(np.float32), labels)
    assert np.isfinite(loss) and grad.dtype == np.float32
    loss, grad = pixel_cross_entropy(logits, np.full(labels.shape, 255))
    assert loss == 0.0 and not np.any(grad)
    with pytest.raises(ValueError, match="labels must lie in"):
        pixel_cross_entropy(logits, np.full(labels.shape, 7))
    with pytest.raises(ValueError, match="labels must be integers of shape"):
        pixel_cross_entropy(logits, labels[0])


def test_mean_iou_by_hand():
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    predictions = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    # class 0: TP 1, FP 1 (pixel 5), FN 1 (pixel 1): 1/3; class 1: TP 3, FP 1, FN 0: 3/4; class 2: TP 1, FN 1: 1/2
    confusion = confusion_matrix(predictions, labels, 4)
    assert confusion.sum() == 7 and confusion[0, 1] == 1 and confusion[2, 0] == 1
    mean, per_class = mean_iou(predictions, labels, 4)
    np.testing.assert_allclose(per_class[:3], [1 / 3, 3 / 4, 1 / 2])
    assert np.isnan(per_class[3]) and mean == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    with pytest.raises(ValueError, match="lie in"):
        mean_iou(predictions + 3, labels, 4)
