"""Detection pieces against torchvision (tests/fixtures/detection_torch.npz, made by
make_detection_fixture.py): SSDLite320's anchors, box decoding and encoding, NMS against the
brute-force reference, post-processing."""
import os

import numpy as np
import pytest

from npmobilenet.detection import anchors as anchor_module
from npmobilenet.detection.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes
from npmobilenet.detection.nms import batched_nms, nms
from npmobilenet.detection.postprocess import postprocess_detections
from npmobilenet.ops import reference

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "detection_torch.npz")


@pytest.fixture(scope="module")
def torch_data():
    return np.load(FIXTURE)


def test_ssdlite320_anchors_match_torchvision(torch_data):
    grids = [tuple(g) for g in torch_data["grids"]]
    boxes = anchor_module.default_boxes(grids, (320, 320))
    assert boxes.shape == (3234, 4) and boxes.dtype == np.float32
    assert anchor_module.boxes_per_location(anchor_module.SSDLITE_ASPECT_RATIOS) == [6] * 6
    np.testing.assert_allclose(boxes, torch_data["anchors"], rtol=0, atol=1e-4)
    # the first cell of the 20x20 map: centre (8, 8), a 64-pixel square (s_0 = 0.2) first
    np.testing.assert_allclose(boxes[0], [8 - 32, 8 - 32, 8 + 32, 8 + 32], atol=1e-4)


def test_anchor_scales_follow_the_paper():
    scales = anchor_module.box_scales(6, 0.2, 0.95)
    np.testing.assert_allclose(scales, [0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    sizes = anchor_module.box_sizes(((2,),), 0.2, 0.9)[0]   # one map: scales [0.2, 0.9]
    np.testing.assert_allclose(sizes, [[0.2, 0.2], [np.sqrt(0.18)] * 2, [0.2 * np.sqrt(2), 0.2 / np.sqrt(2)],
                                       [0.2 / np.sqrt(2), 0.2 * np.sqrt(2)]], rtol=1e-6)
    with pytest.raises(ValueError, match="grid_sizes must list one"):
        anchor_module.default_boxes([(2, 2)], (64, 64))


def test_decode_matches_torchvision_and_inverts_encode(torch_data):
    anchors, offsets = torch_data["anchors"], torch_data["bbox_regression"][0]
    decoded = decode_boxes(offsets, anchors)
    np.testing.assert_allclose(decoded, torch_data["decoded"], rtol=1e-5, atol=1e-3)
    assert np.all(np.isfinite(decoded[:5]))                      # offsets of 40 clamped
    # encode is decode's inverse where the clamp does not act
    boxes = decode_boxes(offsets[5:].astype(np.float64), anchors[5:].astype(np.float64))
    np.testing.assert_allclose(encode_boxes(boxes, anchors[5:].astype(np.float64)), offsets[5:], atol=1e-5)


def test_iou_and_clip_by_hand():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], np.float64)
    b = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [0, 0, 5, 10]], np.float64)
    np.testing.assert_allclose(box_iou(a, b), [[1, 0, 0.5], [25 / 175, 25 / 175, 0]])
    np.testing.assert_array_equal(clip_boxes(np.array([[-5.0, 3, 400, 330]]), (320, 300)), [[0, 3, 300, 320]])


@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 120))
    xy = rng.uniform(0, 50, (count, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 30, (count, 2))], axis=1)
    scores = rng.random(count) if seed % 2 else rng.integers(0, 5, count).astype(float)   # ties too
    labels = rng.integers(0, 3, count)
    for threshold in (0.0, 0.3, 0.55, 1.0):
        expected = reference.non_max_suppression(boxes, scores, labels, threshold)
        np.testing.assert_array_equal(batched_nms(boxes, scores, labels, threshold), expected)
    one_class = reference.non_max_suppression(boxes, scores, np.zeros(count, int), 0.5)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), one_class)


def test_nms_edge_cases():
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).shape == (0,)
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_array_equal(nms(boxes, np.array([0.5, 0.9, 0.1]), 0.5), [1, 2])
    np.testing.assert_array_equal(batched_nms(boxes, np.array([0.5, 0.9, 0.1]), np.array([1, 2, 1]), 0.5), [1, 0, 2])
    with pytest.raises(ValueError, match="boxes must be a number array of shape"):
        nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        nms(boxes, np.zeros(3), 1.5)
    with pytest.raises(TypeError, match="labels must be integers"):
        batched_nms(boxes, np.zeros(3), np.zeros(3), 0.5)


def test_postprocess_matches_torchvision(torch_data):
    detections = postprocess_detections(torch_data["cls_logits"], torch_data["bbox_regression"],
                                        torch_data["anchors"], (320, 320))
    for i, d in enumerate(detections):
        assert len(d["boxes"]) == len(torch_data[f"det_boxes_{i}"]) == 300
        np.testing.assert_array_equal(d["labels"], torch_data[f"det_labels_{i}"])
        np.testing.assert_allclose(d["scores"], torch_data[f"det_scores_{i}"], rtol=1e-5)
        np.testing.assert_allclose(d["boxes"], torch_data[f"det_boxes_{i}"], rtol=1e-5, atol=1e-3)


def test_postprocess_thresholds():
    rng = np.random.default_rng(0)
    anchors = anchor_module.default_boxes([(2, 2)], (64, 64), aspect_ratios=((2,),))
    logits = rng.standard_normal((1, len(anchors), 3))
    logits[0, :, 0] = 8.0                                       # background everywhere ...
    logits[0, 3, 2] = 12.0                                      # ... but one confident box of class 2
    d = postprocess_detections(logits, np.zeros((1, len(anchors), 4)), anchors, (64, 64), score_threshold=0.5)[0]
    assert d["labels"].tolist() == [2] and d["scores"][0] > 0.9
    np.testing.assert_allclose(d["boxes"][0], np.clip(anchors[3], 0, 64))
    with pytest.raises(ValueError, match="K >= 2"):
        postprocess_detections(logits[..., :1], np.zeros((1, len(anchors), 4)), anchors, (64, 64))
