"""Mean average precision at IoU 0.5, as Pascal VOC defines it (VOC 2010-2012 devkit, `VOCevaldet`).

Per class, the detections of all images are taken by decreasing score; each is a true positive
if its IoU with the best-overlapping ground truth of its class in its image exceeds 0.5 and that
ground truth is not already taken by a higher-scoring detection, else a false positive.
Precision and recall follow down the ranking; AP is the area under the precision envelope
(precision made monotonically decreasing, sampled at every recall step: the "all points"
interpolation of VOC 2010 on; VOC 2007 sampled 11 recall points instead, `eleven_point=True`).
mAP is the mean over the classes that have ground truth. (COCO's AP50 differs in using IoU >= 0.5
and 101 recall points.)
"""
import numpy as np

from npmobilenet.detection.boxes import box_iou


def average_precision(recall, precision, eleven_point=False):
    """Area under the precision envelope of one class: recall, precision (D,) down the ranking."""
    if eleven_point:
        return float(np.mean([precision[recall >= t].max() if np.any(recall >= t) else 0.0
                              for t in np.linspace(0, 1, 11)]))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]           # the envelope: best precision at this recall or beyond
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(detections, ground_truths, num_classes, iou_threshold=0.5, eleven_point=False):
    """(mAP, {class: AP}) over classes 1..num_classes-1 that have ground truth.

    detections: per image a dict with `boxes` (D, 4), `scores` (D,), `labels` (D,);
    ground_truths: per image a dict with `boxes` (G, 4) and `labels` (G,).
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"detections and ground_truths must list the same images, got {len(detections)} "
                         f"and {len(ground_truths)}")
    per_class = {}
    for label in range(1, num_classes):
        truths = [np.asarray(g["boxes"], np.float64)[np.asarray(g["labels"]) == label] for g in ground_truths]
        total = sum(len(t) for t in truths)
        if total == 0:
            continue
        found = []                                  # (score, image, box)
        for image, d in enumerate(detections):
            mask = np.asarray(d["labels"]) == label
            for score, box in zip(np.asarray(d["scores"])[mask], np.asarray(d["boxes"], np.float64)[mask]):
                found.append((float(score), image, box))
        found.sort(key=lambda f: -f[0])
        taken = [np.zeros(len(t), bool) for t in truths]
        hits = np.zeros(len(found))
        for rank, (_, image, box) in enumerate(found):
            if len(truths[image]) == 0:
                continue
            overlaps = box_iou(box[None], truths[image])[0]
            best = int(overlaps.argmax())
            if overlaps[best] > iou_threshold and not taken[image][best]:
                taken[image][best] = True
                hits[rank] = 1
        true_positives = np.cumsum(hits)
        recall = true_positives / total
        precision = true_positives / np.arange(1, len(found) + 1)
        per_class[label] = average_precision(recall, precision, eleven_point)
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return mean, per_class
