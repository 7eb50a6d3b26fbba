"""Boxes: corners `(x1, y1, x2, y2)` in pixels, their overlap, and SSD's box encoding.

An anchor (default box) `a` and a box `b` are related by the offsets (SSD paper, Eq. 2; Faster
R-CNN's parametrisation), scaled by weights (torchvision's SSD: 10, 10, 5, 5, i.e. the paper's
"variances" 0.1 and 0.2):

    t_x = w_x (b_cx - a_cx) / a_w,    t_y = w_y (b_cy - a_cy) / a_h,
    t_w = w_w log(b_w / a_w),         t_h = w_h log(b_h / a_h)

Decoding inverts it, with t_w / w_w and t_h / w_h clamped at log(1000 / 16) so that exp never
overflows (torchvision's `BoxCoder.bbox_xform_clip`).
"""
import math

import numpy as np

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BOX_CLIP = math.log(1000.0 / 16)


def check_boxes(boxes, name):
    """`boxes` as a float array (K, 4), or a clear error."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a number array of shape (K, 4) (x1, y1, x2, y2), got "
                         f"{boxes.dtype} {boxes.shape}")
    return boxes if boxes.dtype.kind == "f" else boxes.astype(np.float64)


def box_area(boxes):
    """(K, 4) -> (K,): (x2 - x1) (y2 - y1)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a, b):
    """Intersection over union of every pair: a (M, 4), b (K, 4) -> (M, K)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None)
    intersection = overlap[..., 0] * overlap[..., 1]
    return intersection / (box_area(a)[:, None] + box_area(b)[None, :] - intersection)


def _centres(boxes):
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * width, boxes[:, 1] + 0.5 * height, width, height


def encode_boxes(boxes, anchors, weights=BOX_WEIGHTS):
    """The offsets t (K, 4) that take each anchor (K, 4) to its box (K, 4)."""
    bx, by, bw, bh = _centres(boxes)
    ax, ay, aw, ah = _centres(anchors)
    wx, wy, ww, wh = weights
    return np.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * np.log(bw / aw), wh * np.log(bh / ah)], axis=1)


def decode_boxes(offsets, anchors, weights=BOX_WEIGHTS, clip=BOX_CLIP):
    """Boxes (K, 4) from offsets t (K, 4) relative to anchors (K, 4); the size offsets clamped at `clip`."""
    ax, ay, aw, ah = _centres(anchors.astype(offsets.dtype))
    wx, wy, ww, wh = weights
    cx = offsets[:, 0] / wx * aw + ax
    cy = offsets[:, 1] / wy * ah + ay
    half_w = 0.5 * np.exp(np.minimum(offsets[:, 2] / ww, clip)) * aw
    half_h = 0.5 * np.exp(np.minimum(offsets[:, 3] / wh, clip)) * ah
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)


def clip_boxes(boxes, image_size):
    """Boxes (K, 4) clamped to an image of (height, width)."""
    height, width = image_size
    out = boxes.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return out
