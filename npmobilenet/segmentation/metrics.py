"""Mean intersection over union, as Pascal VOC computes it (VOC 2012 devkit, `VOCevalseg`).

One confusion matrix accumulated over every labelled pixel of the whole set (pixels labelled
`ignore_index`, 255, are left out); per class IoU = TP / (TP + FP + FN); mIoU is their mean over
the classes that occur, in the ground truth or the predictions (a class absent from both has no
IoU: 0 / 0). VOC's own figure averages over all 21 classes of its set, which all occur.
"""
import numpy as np

from npmobilenet.segmentation.loss import IGNORE_INDEX


def confusion_matrix(predictions, labels, num_classes, ignore_index=IGNORE_INDEX):
    """(K, K) counts: row = true class, column = predicted class, over pixels not ignored."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions and labels must have one shape, got {predictions.shape} and {labels.shape}")
    keep = labels != ignore_index
    truth, guess = labels[keep].astype(np.int64), predictions[keep].astype(np.int64)
    if truth.size and (truth.min() < 0 or truth.max() >= num_classes or guess.min() < 0 or guess.max() >= num_classes):
        raise ValueError(f"labels and predictions must lie in [0, {num_classes}) (or be ignore_index)")
    return np.bincount(truth * num_classes + guess, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion):
    """(K,) IoU of each class from a confusion matrix; NaN where the class occurs nowhere."""
    confusion = np.asarray(confusion, np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def mean_iou(predictions, labels, num_classes, ignore_index=IGNORE_INDEX):
    """(mIoU, per-class IoU (K,)) of predicted class maps against labels, both (N, H, W)."""
    per_class = iou_per_class(confusion_matrix(predictions, labels, num_classes, ignore_index))
    return float(np.nanmean(per_class)) if np.any(~np.isnan(per_class)) else float("nan"), per_class
