"""SSD's default boxes (anchors), as torchvision's `DefaultBoxGenerator` makes them.

SSD paper (Liu et al., 2016), sec. 2.2: the k-th of m feature maps gets boxes of scale

    s_k = s_min + (s_max - s_min) k / (m - 1),   k = 0 .. m - 1      (and s_m = 1)

one square box of side s_k, one of side sqrt(s_k s_{k+1}), and for each aspect ratio r a box
s_k sqrt(r) wide and s_k / sqrt(r) high and its transpose; each box is centred on every cell,
((j + 0.5) / W_k, (i + 0.5) / H_k), sizes clipped to [0, 1], then scaled to pixels. SSDLite320
(torchvision): six maps, ratios (2, 3) on each (6 boxes per location), s_min 0.2, s_max 0.95;
at 320x320 the maps are 20, 10, 5, 3, 2 and 1 cells wide: 3,234 boxes.

Order (torchvision's, which the heads' outputs follow): map by map; within a map row-major over
cells (y, then x); within a cell the boxes in the order above.
"""
import math

import numpy as np

SSDLITE_ASPECT_RATIOS = ((2, 3),) * 6
SSDLITE_MIN_RATIO, SSDLITE_MAX_RATIO = 0.2, 0.95


def box_scales(num_maps, min_ratio, max_ratio):
    """s_0 .. s_{m-1} and 1.0 (torchvision's scales; one map: [min_ratio, max_ratio])."""
    if num_maps == 1:
        return [min_ratio, max_ratio]
    return [min_ratio + (max_ratio - min_ratio) * k / (num_maps - 1.0) for k in range(num_maps)] + [1.0]


def box_sizes(aspect_ratios, min_ratio, max_ratio):
    """Per map, the (width, height) of its boxes relative to the image: a list of (B_k, 2) arrays."""
    scales = box_scales(len(aspect_ratios), min_ratio, max_ratio)
    sizes = []
    for k, ratios in enumerate(aspect_ratios):
        s, s_prime = scales[k], math.sqrt(scales[k] * scales[k + 1])
        pairs = [[s, s], [s_prime, s_prime]]
        for r in ratios:
            pairs += [[s * math.sqrt(r), s / math.sqrt(r)], [s / math.sqrt(r), s * math.sqrt(r)]]
        sizes.append(np.array(pairs, np.float32))
    return sizes


def boxes_per_location(aspect_ratios):
    """Boxes per cell of each map: 2 + 2 per aspect ratio."""
    return [2 + 2 * len(r) for r in aspect_ratios]


def default_boxes(grid_sizes, image_size, aspect_ratios=SSDLITE_ASPECT_RATIOS, min_ratio=SSDLITE_MIN_RATIO,
                  max_ratio=SSDLITE_MAX_RATIO, clip=True):
    """Default boxes (A, 4) float32, (x1, y1, x2, y2) in pixels, in torchvision's order.

    grid_sizes: (H_k, W_k) of each feature map; image_size: (height, width) of the input. Computed
    in float32 as torchvision computes them.
    """
    if len(grid_sizes) != len(aspect_ratios):
        raise ValueError(f"grid_sizes must list one (H, W) per feature map ({len(aspect_ratios)}), got {len(grid_sizes)}")
    height, width = image_size
    scale = np.array([width, height], np.float32)
    boxes = []
    for (rows, columns), sizes in zip(grid_sizes, box_sizes(aspect_ratios, min_ratio, max_ratio)):
        centre_x = ((np.arange(columns) + 0.5) / columns).astype(np.float32)
        centre_y = ((np.arange(rows) + 0.5) / rows).astype(np.float32)
        cy, cx = np.meshgrid(centre_y, centre_x, indexing="ij")
        centres = np.repeat(np.stack([cx.ravel(), cy.ravel()], axis=1), len(sizes), axis=0)
        wh = np.tile(np.clip(sizes, 0, 1) if clip else sizes, (rows * columns, 1))
        boxes.append(np.concatenate([(centres - np.float32(0.5) * wh) * scale,
                                     (centres + np.float32(0.5) * wh) * scale], axis=1))
    return np.concatenate(boxes).astype(np.float32)
