"""SSD's training loss and its hand-written gradient (SSD paper, sec. 2.2; torchvision's SSD).

Matching: each anchor takes the ground truth it overlaps most when that IoU is >= 0.5, else the
background; then every ground truth is forced onto its best anchor (so none goes unmatched).

Loss, over a batch with P matched (positive) anchors in all:

    L = (1 / max(1, P)) [ sum_pos smoothL1(t_pred - t_gt) + sum_pos CE + sum_hard-neg CE ]

t_gt the matched box encoded against its anchor (`boxes.encode_boxes`), smooth-L1 with beta 1
summed over the four offsets, CE the softmax cross-entropy of the anchor's logits against its
class (the background, 0, for negatives), and the hard negatives of an image its 3 x (its
positives) background anchors of highest CE (hard-negative mining, sec. 2.2 "Hard negative
mining"). The selection is piecewise constant in the logits, so the gradient is that of the sum
over the selected anchors: (softmax - one_hot) / max(1, P) on their logits, the smooth-L1
derivative clip(t_pred - t_gt, -1, 1) / max(1, P) on the positives' offsets, zero elsewhere.
"""
import numpy as np

from npmobilenet.detection.boxes import BOX_WEIGHTS, box_iou, check_boxes, encode_boxes

IOU_THRESHOLD, NEGATIVES_PER_POSITIVE = 0.5, 3


def match_anchors(gt_boxes, anchors, iou_threshold=IOU_THRESHOLD):
    """Per anchor, the index of its ground truth, or -1 (background). gt_boxes (G, 4), anchors (A, 4)."""
    if len(gt_boxes) == 0:
        return np.full(len(anchors), -1, np.int64)
    iou = box_iou(gt_boxes, anchors)                      # (G, A)
    matches = iou.argmax(axis=0)
    matches[iou.max(axis=0) < iou_threshold] = -1
    matches[iou.argmax(axis=1)] = np.arange(len(gt_boxes))  # every ground truth on its best anchor
    return matches


def _check_targets(targets, count, num_classes):
    if len(targets) != count:
        raise ValueError(f"targets must hold one dict per image ({count}), got {len(targets)}")
    checked = []
    for i, t in enumerate(targets):
        boxes = check_boxes(t["boxes"], f"targets[{i}]['boxes']")
        labels = np.asarray(t["labels"])
        if labels.shape != (len(boxes),) or labels.dtype.kind not in "iu":
            raise ValueError(f"targets[{i}]['labels'] must be integers of shape ({len(boxes)},), got "
                             f"{labels.dtype} {labels.shape}")
        if labels.size and (labels.min() < 1 or labels.max() >= num_classes):
            raise ValueError(f"targets[{i}]['labels'] must lie in [1, {num_classes}) (0 is the background), got "
                             f"[{labels.min()}, {labels.max()}]")
        if boxes.size and np.any(boxes[:, 2:] <= boxes[:, :2]):
            raise ValueError(f"targets[{i}]['boxes'] must have x2 > x1 and y2 > y1")
        checked.append((boxes, labels.astype(np.int64)))
    return checked


def ssd_loss(cls_logits, bbox_regression, anchors, targets, iou_threshold=IOU_THRESHOLD,
             negatives_per_positive=NEGATIVES_PER_POSITIVE, weights=BOX_WEIGHTS):
    """SSD's loss and its gradient.

    cls_logits (N, A, K) and bbox_regression (N, A, 4): the heads' outputs; anchors (A, 4) xyxy
    pixels; targets: N dicts with `boxes` (G, 4) xyxy pixels and `labels` (G,) in 1..K-1.
    Returns `(loss, dcls_logits, dbbox_regression, parts)`: the loss a float, the gradients in
    the outputs' shapes and dtypes, parts {"bbox_regression", "classification"} as torchvision's
    `SSD.compute_loss` returns them (their sum is the loss).
    """
    cls_logits, bbox_regression = np.asarray(cls_logits), np.asarray(bbox_regression)
    if cls_logits.ndim != 3 or bbox_regression.shape != cls_logits.shape[:2] + (4,):
        raise ValueError(f"cls_logits must be (N, A, K) and bbox_regression (N, A, 4), got {cls_logits.shape} "
                         f"and {bbox_regression.shape}")
    anchors = check_boxes(anchors, "anchors")
    if anchors.shape[0] != cls_logits.shape[1]:
        raise ValueError(f"anchors must be ({cls_logits.shape[1]}, 4), got {anchors.shape}")
    images, count, num_classes = cls_logits.shape
    targets = _check_targets(targets, images, num_classes)

    logits = cls_logits.astype(np.float64)
    shifted = logits - logits.max(axis=2, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=2))
    probs = np.exp(shifted - log_norm[..., None])

    dcls = np.zeros_like(logits)
    dbox = np.zeros(bbox_regression.shape, np.float64)
    box_sum = class_sum = 0.0
    positives_total = 0
    for n, (gt_boxes, gt_labels) in enumerate(targets):
        matches = match_anchors(gt_boxes, anchors, iou_threshold)
        positive = matches >= 0
        positives = int(positive.sum())
        positives_total += positives
        # regression: smooth-L1 (beta 1) of the positives' offsets against the encoded matches
        if positives:
            diff = bbox_regression[n, positive].astype(np.float64) - encode_boxes(
                gt_boxes[matches[positive]].astype(np.float64), anchors[positive].astype(np.float64), weights)
            small = np.abs(diff) < 1
            box_sum += float(np.where(small, 0.5 * diff * diff, np.abs(diff) - 0.5).sum())
            dbox[n, positive] = np.clip(diff, -1, 1)
        # classification: the positives and the 3 x positives hardest negatives
        classes = np.where(positive, gt_labels[np.maximum(matches, 0)] if len(gt_labels) else 0, 0)
        cross_entropy = log_norm[n] - shifted[n, np.arange(count), classes]
        negative_loss = np.where(positive, -np.inf, cross_entropy)
        hardest = np.argsort(-negative_loss, kind="stable")[:negatives_per_positive * positives]
        selected = positive.copy()
        selected[hardest] = True
        class_sum += float(cross_entropy[selected].sum())
        dcls[n, selected] = probs[n, selected]
        dcls[n, np.flatnonzero(selected), classes[selected]] -= 1.0
    scale = 1.0 / max(1, positives_total)
    parts = {"bbox_regression": box_sum * scale, "classification": class_sum * scale}
    return (parts["bbox_regression"] + parts["classification"], (dcls * scale).astype(cls_logits.dtype),
            (dbox * scale).astype(bbox_regression.dtype), parts)
