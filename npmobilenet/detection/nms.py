"""Greedy non-maximum suppression (NMS), per class, as a Numba kernel.

Boxes are visited by decreasing score; a box is kept unless a kept box of the same class overlaps
it with IoU > the threshold (strictly, as torchvision's `nms`). Classes never suppress each other
(torchvision's `batched_nms`). The result lists the kept boxes by decreasing score; equal scores
keep their input order. The kernel sees boxes already grouped by class and sorted
by score within each group, so its work is the sum over classes of (boxes of the class)^2, not
the square of all boxes (SSD's post-processing gives up to 90 x 300 candidates).
"""
import numpy as np

from npmobilenet.config import njit_serial
from npmobilenet.detection.boxes import check_boxes


@njit_serial
def _nms_groups(boxes, group_starts, iou_threshold, keep):
    # boxes (K, 4) grouped by class and sorted by decreasing score in each group; group g is
    # rows group_starts[g] .. group_starts[g + 1] - 1; keep[i] is set to 1 for each kept box
    for g in range(group_starts.shape[0] - 1):
        start, stop = group_starts[g], group_starts[g + 1]
        for i in range(start, stop):
            keep[i] = 1
            x1, y1, x2, y2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
            area_i = (x2 - x1) * (y2 - y1)
            for j in range(start, i):
                if keep[j] == 0:
                    continue
                width = min(x2, boxes[j, 2]) - max(x1, boxes[j, 0])
                height = min(y2, boxes[j, 3]) - max(y1, boxes[j, 1])
                if width <= 0 or height <= 0:
                    continue
                intersection = width * height
                area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
                if intersection / (area_i + area_j - intersection) > iou_threshold:
                    keep[i] = 0
                    break


def batched_nms(boxes, scores, labels, iou_threshold):
    """Indices (int64) of the boxes kept by per-class NMS, by decreasing score.

    boxes (K, 4) (x1, y1, x2, y2); scores (K,); labels (K,) integers (one NMS per label);
    iou_threshold: a box is suppressed by a kept one of its class when their IoU exceeds it.
    """
    boxes = check_boxes(boxes, "boxes")
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != (boxes.shape[0],) or labels.shape != (boxes.shape[0],):
        raise ValueError(f"scores and labels must have shape ({boxes.shape[0]},) like boxes, got {scores.shape} "
                         f"and {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if not 0 <= float(iou_threshold) <= 1:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    by_score = np.argsort(-scores, kind="stable")
    order = by_score[np.argsort(labels[by_score], kind="stable")]      # grouped by label, by score within
    sorted_labels = labels[order]
    group_starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1], True]).astype(np.int64)
    if boxes.shape[0] == 0:
        group_starts = np.zeros(1, np.int64)
    keep = np.zeros(boxes.shape[0], np.uint8)
    _nms_groups(np.ascontiguousarray(boxes[order], np.float64), group_starts, float(iou_threshold), keep)
    kept = np.sort(order[keep.astype(bool)])
    return kept[np.argsort(-scores[kept], kind="stable")].astype(np.int64)


def nms(boxes, scores, iou_threshold):
    """Indices of the boxes kept by NMS over all boxes (one class), by decreasing score."""
    return batched_nms(boxes, scores, np.zeros(len(np.asarray(scores)), np.int64), iou_threshold)
