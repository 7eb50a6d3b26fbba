"""Object detection with MobileNet backbones: SSD's pieces (SSD paper, Liu et al. 2016; SSDLite,
V2 paper sec. 6.2), as torchvision's SSDLite320 uses them.

    anchors.py      default boxes (torchvision's DefaultBoxGenerator): scales, ratios, order
    boxes.py        IoU, box encoding and decoding (weights 10, 10, 5, 5 and the clamp)
    nms.py          per-class greedy non-maximum suppression (a Numba kernel)
    postprocess.py  head outputs -> boxes, scores, labels (torchvision's postprocess_detections)
    loss.py         matching, smooth-L1 + cross-entropy with 3:1 hard-negative mining, gradients
    metrics.py      mAP@0.5 as Pascal VOC computes it
"""
from npmobilenet.detection.anchors import default_boxes
from npmobilenet.detection.boxes import box_iou, decode_boxes, encode_boxes
from npmobilenet.detection.loss import match_anchors, ssd_loss
from npmobilenet.detection.metrics import mean_average_precision
from npmobilenet.detection.nms import batched_nms, nms
from npmobilenet.detection.postprocess import postprocess_detections

__all__ = ["default_boxes", "box_iou", "encode_boxes", "decode_boxes", "match_anchors", "ssd_loss",
           "mean_average_precision", "batched_nms", "nms", "postprocess_detections"]
