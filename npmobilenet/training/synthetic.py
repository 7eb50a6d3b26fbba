"""A seeded synthetic dataset for segmentation and detection: shapes pasted on real pictures.

No segmentation or detection dataset ships offline, so this makes one whose answers are known
exactly. Each image is a crop of a real texture or photograph (scikit-image's `data`: brick,
grass, gravel, and photographs), scaled, flipped and tinted at random, with 1 to `max_shapes`
shapes pasted on it:

    class 1 disc, class 2 square (any rotation), class 3 triangle (any rotation); 0 the background

of varying size (`min_size`..`max_size` of the image side) and colour, shaded by a linear ramp
and a little noise, anti-aliased, and overlapping: a shape may hide part of an earlier one (at
most half of what was visible of it, so every object stays recognisable). The mask holds each
pixel's class, the topmost shape's; each box is the extent (x1, y1, x2, y2, pixels, exclusive
ends) of its shape's visible pixels. A shape left with fewer than `MIN_VISIBLE_PIXELS` visible
pixels is not placed. The same `seed` gives the same images on every machine.

Without scikit-image the backgrounds are procedural (noise, stripes and checks) and a warning
names the package to install.
"""
import warnings

import numpy as np

from npmobilenet.ops.resize import bilinear_resize

CLASSES = ("background", "disc", "square", "triangle")
TEXTURES = ("brick", "grass", "gravel")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "camera", "coins")
MIN_VISIBLE_PIXELS = 12
SUPERSAMPLE = 4                 # samples per pixel side for the anti-aliased shape edges


def background_pictures():
    """The pictures backgrounds are cut from: a list of (H, W, 3) float32 arrays in [0, 1]."""
    try:
        from skimage import data
    except ImportError:
        warnings.warn("synthetic backgrounds are procedural: for real textures and photographs install "
                      "scikit-image (pip install 'npmobilenet[demo]' or pip install scikit-image)", stacklevel=2)
        return _procedural_pictures()
    pictures = []
    for name in TEXTURES + PHOTOS:
        picture = np.asarray(getattr(data, name)(), np.float32) / 255.0
        if picture.ndim == 2:
            picture = np.repeat(picture[..., None], 3, axis=2)
        pictures.append(np.ascontiguousarray(picture[..., :3]))
    return pictures


def _procedural_pictures(size=256):
    rng = np.random.default_rng(12345)
    y, x = np.mgrid[0:size, 0:size] / size
    noise = rng.random((size // 8, size // 8, 3)).astype(np.float32)
    smooth = bilinear_resize(noise[None], (size, size))[0]
    stripes = (0.5 + 0.5 * np.sin(40 * x + 10 * y))[..., None] * np.array([0.8, 0.6, 0.4])
    checks = (((x * 12).astype(int) + (y * 12).astype(int)) % 2)[..., None] * np.array([0.5, 0.7, 0.6]) + 0.2
    return [np.ascontiguousarray(p, np.float32) for p in (smooth, stripes, checks)]


def _background(rng, pictures, size):
    picture = pictures[rng.integers(len(pictures))]
    height, width = picture.shape[:2]
    side = int(rng.integers(min(height, width) // 4, min(height, width) + 1))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = np.ascontiguousarray(picture[top:top + side, left:left + side])
    crop = bilinear_resize(crop[None], (size, size))[0]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    tint = rng.uniform(0.6, 1.2, 3).astype(np.float32)        # grey textures get a colour
    return np.clip(crop * tint, 0, 1)


def _shape_coverage(rng, kind, size, min_size, max_size):
    """(coverage (size, size) in [0, 1], anti-aliased) of one shape at a random place and angle."""
    extent = rng.uniform(min_size, max_size) * size                   # the shape's diameter / side
    centre = rng.uniform(extent * 0.3, size - extent * 0.3, 2)
    angle = rng.uniform(0, 2 * np.pi)
    grid = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    y, x = np.meshgrid(grid - centre[0], grid - centre[1], indexing="ij")
    u, v = np.cos(angle) * x + np.sin(angle) * y, -np.sin(angle) * x + np.cos(angle) * y
    if kind == 1:                                                      # disc
        inside = u * u + v * v <= (extent / 2) ** 2
    elif kind == 2:                                                    # square
        inside = (np.abs(u) <= extent / 2) & (np.abs(v) <= extent / 2)
    else:                                                              # equilateral triangle of side `extent`:
        inside = np.ones_like(u, bool)                                 # three half-planes at the inradius
        for k in range(3):
            theta = np.pi / 2 + 2 * np.pi * k / 3
            inside &= u * np.cos(theta) + v * np.sin(theta) <= extent / (2 * np.sqrt(3))
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def _paint(rng, size):
    """A random colour shaded by a linear ramp and noise: (size, size, 3)."""
    colour = rng.uniform(0, 1, 3)
    direction = rng.normal(size=2)
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    ramp = 1 + rng.uniform(0.1, 0.5) * (direction[0] * y + direction[1] * x)
    return np.clip(colour * ramp[..., None] + rng.normal(0, 0.03, (size, size, 3)), 0, 1)


def make_image(rng, pictures, size=64, max_shapes=4, min_size=0.2, max_size=0.5):
    """One example: (image (size, size, 3) float32 in [0, 1], mask (size, size) uint8,
    boxes (G, 4) float32, labels (G,) int64)."""
    image = _background(rng, pictures, size)
    owner = np.full((size, size), -1)                  # which shape each pixel shows (-1: background)
    kinds, tries = [], 0
    wanted = int(rng.integers(1, max_shapes + 1))
    while len(kinds) < wanted and tries < 8 * max_shapes:
        tries += 1
        kind = int(rng.integers(1, len(CLASSES)))
        coverage = _shape_coverage(rng, kind, size, min_size, max_size)
        solid = coverage >= 0.5
        if solid.sum() < MIN_VISIBLE_PIXELS:
            continue
        # at most half of what each earlier shape still shows may be hidden
        if any((solid & (owner == i)).sum() > 0.5 * (owner == i).sum() for i in range(len(kinds))):
            continue
        alpha = coverage[..., None]
        image = image * (1 - alpha) + _paint(rng, size) * alpha
        owner[solid] = len(kinds)
        kinds.append(kind)
    mask = np.zeros((size, size), np.uint8)
    boxes, labels = [], []
    for i, kind in enumerate(kinds):
        rows, columns = np.nonzero(owner == i)
        mask[owner == i] = kind
        boxes.append([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1])
        labels.append(kind)
    return (image.astype(np.float32), mask, np.array(boxes, np.float32).reshape(-1, 4),
            np.array(labels, np.int64))


def make_dataset(count, size=64, seed=0, max_shapes=4, min_size=0.2, max_size=0.5):
    """`count` examples: a dict with `images` (N, size, size, 3) float32 in [0, 1], `masks`
    (N, size, size) uint8 (0 background, 1 disc, 2 square, 3 triangle), `boxes` (a list of (G, 4)
    float32 xyxy pixel boxes), `labels` (a list of (G,) int64), and `classes`."""
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    if not 0 < min_size <= max_size <= 1:
        raise ValueError(f"need 0 < min_size <= max_size <= 1, got {min_size!r} and {max_size!r}")
    rng = np.random.default_rng(seed)
    pictures = background_pictures()
    examples = [make_image(rng, pictures, size, max_shapes, min_size, max_size) for _ in range(count)]
    return {
        "images": np.stack([e[0] for e in examples]),
        "masks": np.stack([e[1] for e in examples]),
        "boxes": [e[2] for e in examples],
        "labels": [e[3] for e in examples],
        "classes": CLASSES,
    }
