"""Semantic segmentation with MobileNet backbones (LR-ASPP, V3 paper sec. 6.3).

    loss.py      per-pixel softmax cross-entropy with an ignore index, and its gradient
    metrics.py   confusion matrix and mIoU as Pascal VOC computes it
"""
from npmobilenet.segmentation.loss import IGNORE_INDEX, pixel_cross_entropy
from npmobilenet.segmentation.metrics import confusion_matrix, iou_per_class, mean_iou

__all__ = ["IGNORE_INDEX", "pixel_cross_entropy", "confusion_matrix", "iou_per_class", "mean_iou"]
