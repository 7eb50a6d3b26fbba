"""From SSD's head outputs to detections, as torchvision's `SSD.postprocess_detections`.

Per image: class probabilities by softmax over the logits; boxes decoded from the regression
offsets and clipped to the image; for each class but the background (0), the boxes scoring
above `score_threshold`, at most `topk_candidates` of them (the best); per-class NMS at
`nms_threshold` over all those candidates; the best `detections_per_image` kept, by score.
"""
import numpy as np

from npmobilenet.detection.boxes import BOX_CLIP, BOX_WEIGHTS, clip_boxes, decode_boxes
from npmobilenet.detection.nms import batched_nms

SCORE_THRESHOLD, TOPK_CANDIDATES, NMS_THRESHOLD, DETECTIONS_PER_IMAGE = 0.001, 300, 0.55, 300


def softmax(logits):
    """Softmax over the last axis, stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def postprocess_detections(cls_logits, bbox_regression, anchors, image_size, score_threshold=SCORE_THRESHOLD,
                           topk_candidates=TOPK_CANDIDATES, nms_threshold=NMS_THRESHOLD,
                           detections_per_image=DETECTIONS_PER_IMAGE, weights=BOX_WEIGHTS):
    """cls_logits (N, A, K), bbox_regression (N, A, 4), anchors (A, 4) xyxy pixels, image_size
    (height, width) -> a list of N dicts: `boxes` (D, 4) xyxy pixels, `scores` (D,), `labels` (D,)
    int64 in 1..K-1, by decreasing score, D <= detections_per_image."""
    cls_logits, bbox_regression = np.asarray(cls_logits), np.asarray(bbox_regression)
    if cls_logits.ndim != 3 or bbox_regression.shape != cls_logits.shape[:2] + (4,):
        raise ValueError(f"cls_logits must be (N, A, K) and bbox_regression (N, A, 4), got {cls_logits.shape} "
                         f"and {bbox_regression.shape}")
    if cls_logits.shape[2] < 2:
        raise ValueError(f"cls_logits must score the background and at least one class (K >= 2), got K = {cls_logits.shape[2]}")
    if np.shape(anchors) != (cls_logits.shape[1], 4):
        raise ValueError(f"anchors must be ({cls_logits.shape[1]}, 4), got {np.shape(anchors)}")
    scores_all = softmax(cls_logits)
    detections = []
    for scores, offsets in zip(scores_all, bbox_regression):
        boxes = clip_boxes(decode_boxes(offsets, np.asarray(anchors), weights, BOX_CLIP), image_size)
        chosen, chosen_scores, chosen_labels = [], [], []
        for label in range(1, scores.shape[1]):
            candidates = np.flatnonzero(scores[:, label] > score_threshold)
            best = np.argsort(-scores[candidates, label], kind="stable")[:topk_candidates]
            chosen.append(candidates[best])
            chosen_scores.append(scores[candidates[best], label])
            chosen_labels.append(np.full(len(best), label, np.int64))
        index, score, label = np.concatenate(chosen), np.concatenate(chosen_scores), np.concatenate(chosen_labels)
        keep = batched_nms(boxes[index], score, label, nms_threshold)[:detections_per_image]
        detections.append({"boxes": boxes[index[keep]], "scores": score[keep], "labels": label[keep]})
    return detections
