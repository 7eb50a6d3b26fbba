"""mAP@0.5 as Pascal VOC computes it, on cases worked by hand."""
import numpy as np
import pytest

from npmobilenet.detection.metrics import average_precision, mean_average_precision


def _det(boxes, scores, labels):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "scores": np.array(scores, float),
            "labels": np.array(labels, int)}


def _gt(boxes, labels):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels, int)}


def test_perfect_detections_score_one():
    gts = [_gt([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2]), _gt([[5, 5, 15, 15]], [1])]
    dets = [_det(g["boxes"], [0.9] * len(g["labels"]), g["labels"]) for g in gts]
    mean, per_class = mean_average_precision(dets, gts, num_classes=3)
    assert mean == 1.0 and per_class == {1: 1.0, 2: 1.0}


def test_ranking_duplicates_and_wrong_class_by_hand():
    # class 1: two objects. Ranked: hit (0.9), duplicate of it (0.8: false positive), miss (0.7),
    # hit on the second (0.6). precision 1, 1/2, 1/3, 1/2 at recall 1/2, 1/2, 1/2, 1.
    # Envelope: 1 up to recall 1/2, then 1/2: AP = 1/2 * 1 + 1/2 * 1/2 = 0.75.
    gts = [_gt([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1])]
    dets = [_det([[0, 0, 10, 10], [0, 0, 10, 9], [100, 100, 110, 110], [50, 50, 60, 61], [0, 0, 10, 10]],
                 [0.9, 0.8, 0.7, 0.6, 0.95], [1, 1, 1, 1, 2])]      # a class-2 box scores for class 2 only
    mean, per_class = mean_average_precision(dets, gts, num_classes=3)
    assert per_class == {1: pytest.approx(0.75)} and mean == pytest.approx(0.75)


def test_iou_must_exceed_half():
    gts = [_gt([[0, 0, 10, 10]], [1])]
    half = _det([[0, 0, 10, 5]], [0.9], [1])                       # IoU exactly 0.5: a miss in VOC
    assert mean_average_precision([half], gts, 2)[0] == 0.0
    more = _det([[0, 0, 10, 5.1]], [0.9], [1])
    assert mean_average_precision([more], gts, 2)[0] == 1.0


def test_eleven_point_interpolation():
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert average_precision(recall, precision) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(recall, precision, eleven_point=True) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)


def test_no_detections_and_mismatched_lists():
    gts = [_gt([[0, 0, 10, 10]], [1])]
    assert mean_average_precision([_det([], [], [])], gts, 2)[0] == 0.0
    with pytest.raises(ValueError, match="the same images"):
        mean_average_precision([], gts, 2)
