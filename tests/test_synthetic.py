"""The seeded synthetic segmentation/detection set: deterministic, consistent masks and boxes,
several occluding shapes of every class on real pictures."""
import sys

import numpy as np
import pytest

from npmobilenet.detection.boxes import box_iou
from npmobilenet.training import synthetic


@pytest.fixture(scope="module")
def data():
    return synthetic.make_dataset(24, size=48, seed=3)


def test_shapes_and_determinism(data):
    assert data["images"].shape == (24, 48, 48, 3) and data["images"].dtype == np.float32
    assert data["masks"].shape == (24, 48, 48) and data["masks"].dtype == np.uint8
    assert 0 <= data["images"].min() and data["images"].max() <= 1
    again = synthetic.make_dataset(24, size=48, seed=3)
    np.testing.assert_array_equal(again["images"], data["images"])
    other = synthetic.make_dataset(2, size=48, seed=4)
    assert not np.array_equal(other["images"], data["images"][:2])


def test_masks_and_boxes_agree(data):
    counts = [len(b) for b in data["boxes"]]
    assert min(counts) >= 1 and max(counts) >= 3                      # several shapes per image
    assert set(np.concatenate(data["labels"]).tolist()) == {1, 2, 3}  # every class occurs
    for mask, boxes, labels in zip(data["masks"], data["boxes"], data["labels"]):
        covered = np.zeros(mask.shape, bool)
        for (x1, y1, x2, y2), label in zip(boxes.astype(int), labels):
            assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48
            inside = mask[y1:y2, x1:x2] == label
            # the box is tight: its shape's pixels touch all four sides
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y1:y2, x1:x2] |= inside
        assert np.array_equal(covered, mask > 0)                       # every shape pixel is in a box of its class


def test_shapes_occlude_and_backgrounds_vary(data):
    overlapping = sum(bool(np.any(np.triu(box_iou(b, b), 1) > 0)) for b in data["boxes"] if len(b) > 1)
    assert overlapping >= 3
    background = [img[m == 0].mean(axis=0) for img, m in zip(data["images"], data["masks"])]
    assert np.std(background, axis=0).min() > 0.03                     # not one backdrop


def test_fallback_without_scikit_image(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)                   # import skimage now fails
    with pytest.warns(UserWarning, match="install scikit-image"):
        d = synthetic.make_dataset(2, size=32, seed=0)
    assert d["images"].shape == (2, 32, 32, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="count must be"):
        synthetic.make_dataset(0)
    with pytest.raises(ValueError, match="size must be"):
        synthetic.make_dataset(2, size=8)
    with pytest.raises(ValueError, match="min_size <= max_size"):
        synthetic.make_dataset(2, min_size=0.6, max_size=0.3)
