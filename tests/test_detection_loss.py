"""SSD's matching and loss against torchvision (values and autograd gradients from
tests/fixtures/detection_torch.npz), and the hand-written gradient by finite differences."""
import os

import numpy as np
import pytest

from gradcheck import assert_close, numeric_grad
from npmobilenet.detection.anchors import default_boxes
from npmobilenet.detection.loss import match_anchors, ssd_loss

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "detection_torch.npz")


def _targets(data):
    return [{"boxes": data[f"gt_boxes_{i}"], "labels": data[f"gt_labels_{i}"]} for i in range(2)]


def test_matching_matches_torchvision():
    data = np.load(FIXTURE)
    for i, t in enumerate(_targets(data)):
        matches = match_anchors(t["boxes"], data["anchors"])
        np.testing.assert_array_equal(np.maximum(matches, -1), np.maximum(data[f"matched_{i}"], -1))
        # every ground truth has an anchor, even one that overlaps none by 0.5
        assert set(matches[matches >= 0]) == set(range(len(t["boxes"])))


def test_loss_and_gradient_match_torchvision():
    data = np.load(FIXTURE)
    loss, dcls, dbox, parts = ssd_loss(data["cls_logits"].astype(np.float64),
                                       data["bbox_regression"].astype(np.float64), data["anchors"], _targets(data))
    np.testing.assert_allclose(parts["bbox_regression"], data["loss_bbox_regression"], rtol=1e-6)
    np.testing.assert_allclose(parts["classification"], data["loss_classification"], rtol=1e-6)
    assert loss == pytest.approx(parts["bbox_regression"] + parts["classification"])
    np.testing.assert_allclose(dcls, data["dcls_logits"], rtol=1e-6, atol=1e-12)
    # torchvision encodes the float32 ground truth in float32: offsets 5e-8 apart
    np.testing.assert_allclose(dbox, data["dbbox_regression"], rtol=1e-6, atol=2e-7)


def _problem(seed):
    rng = np.random.default_rng(seed)
    anchors = default_boxes([(4, 4), (2, 2)], (64, 64), aspect_ratios=((2,), (2,)))
    targets = [{"boxes": np.array([[4.0, 6, 30, 28], [30, 30, 60, 62]]), "labels": np.array([1, 2])},
               {"boxes": np.array([[10.0, 10, 50, 40]]), "labels": np.array([2])},
               {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}]            # an image of background only
    logits = rng.standard_normal((3, len(anchors), 3))
    offsets = rng.standard_normal((3, len(anchors), 4)) * 1.5                       # both sides of smooth-L1's knee
    return anchors, targets, logits, offsets


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_by_finite_differences(seed):
    anchors, targets, logits, offsets = _problem(seed)
    loss, dcls, dbox, _ = ssd_loss(logits, offsets, anchors, targets)
    # an image without objects has no positives, so no hard negatives either (3 x 0): no gradient
    assert loss > 0 and not np.any(dcls[2]) and not np.any(dbox[2])
    rng = np.random.default_rng(seed)
    f = lambda: ssd_loss(logits, offsets, anchors, targets)[0]  # noqa: E731
    positive = np.argwhere(np.abs(dbox).sum(axis=2) > 0)
    for n, a in positive[rng.choice(len(positive), 4, replace=False)]:
        for k in range(4):
            assert_close(dbox[n, a, k], numeric_grad(f, offsets, (n, a, k)), f"dbox[{n}, {a}, {k}]")
    for idx in [tuple(i) for i in np.argwhere(dcls != 0)[:: 7]] + [(0, 0, 0), (1, 5, 2)]:
        assert_close(dcls[idx], numeric_grad(f, logits, idx), f"dcls{idx}")


def test_hard_negatives_are_three_per_positive():
    anchors, targets, logits, offsets = _problem(0)
    _, dcls, dbox, _ = ssd_loss(logits[:2], offsets[:2], anchors, targets[:2])
    for n in range(2):
        positives = int((np.abs(dbox[n]).sum(axis=1) > 0).sum())
        selected = int((np.abs(dcls[n]).sum(axis=1) > 0).sum())
        assert positives >= len(targets[n]["boxes"]) and selected == 4 * positives


def test_bad_targets():
    anchors, targets, logits, offsets = _problem(0)
    with pytest.raises(ValueError, match="labels'\\] must lie in \\[1, 3\\)"):
        ssd_loss(logits, offsets, anchors, [{"boxes": np.array([[0.0, 0, 5, 5]]), "labels": np.array([0])}] * 3)
    with pytest.raises(ValueError, match="must have x2 > x1"):
        ssd_loss(logits, offsets, anchors, [{"boxes": np.array([[5.0, 0, 5, 5]]), "labels": np.array([1])}] * 3)
    with pytest.raises(ValueError, match="one dict per image"):
        ssd_loss(logits, offsets, anchors, targets[:1])
