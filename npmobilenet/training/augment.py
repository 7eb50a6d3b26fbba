"""Augmentation and preprocessing on NHWC batches, in NumPy alone.

Functions take a batch `x: (N, H, W, C)` (uint8 or float) and, when random, a
`numpy.random.Generator`; they return a new batch and never modify `x`. Crops and flips keep the
dtype; `resize` keeps uint8 as uint8 (rounded) and floats as they are; `to_float` and `normalize`
return float32.

The transform classes (`RandomCrop`, `RandomHorizontalFlip`, `RandomResizedCrop`, `Resize`,
`ToFloat`, `Normalize`) wrap these as callables `t(x, rng)`, and `Compose` chains them; the data
loader calls a transform once per batch with its seeded generator.
"""
import math

import numpy as np


def _check_batch(x, name="x"):
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"{name} must be a batch (N, H, W, C), got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise TypeError(f"{name} must be uint8 or float, got {x.dtype}")
    return x


def _as_size(size):
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return h, w


# -- resizing ---------------------------------------------------------------------------------
def interpolation_matrix(in_size, out_size, method="bilinear"):
    """The `(out_size, in_size)` matrix that resamples one axis.

    Resizing is linear, so an image resize is `Mh @ image @ Mw.T` per channel. Sample positions use
    half-pixel centres, `src = (dst + 0.5) * in / out - 0.5` (as PIL and PyTorch's
    `align_corners=False`), clamped to the edge; bilinear weights each output by its two nearest
    inputs, nearest picks `floor((dst + 0.5) * in / out)`. No anti-aliasing when shrinking.
    """
    m = np.zeros((out_size, in_size), dtype=np.float64)
    dst = np.arange(out_size)
    if method == "nearest":
        src = np.minimum(np.floor((dst + 0.5) * in_size / out_size).astype(np.intp), in_size - 1)
        m[dst, src] = 1.0
    elif method == "bilinear":
        src = np.clip((dst + 0.5) * in_size / out_size - 0.5, 0.0, in_size - 1)
        i0 = np.floor(src).astype(np.intp)
        i1 = np.minimum(i0 + 1, in_size - 1)
        w1 = src - i0
        np.add.at(m, (dst, i0), 1.0 - w1)
        np.add.at(m, (dst, i1), w1)
    else:
        raise ValueError(f"method must be 'bilinear' or 'nearest', got {method!r}")
    return m


def resize(x, size, method="bilinear"):
    """Resize a batch `(N, H, W, C)` -> `(N, size_h, size_w, C)` (bilinear or nearest)."""
    x = _check_batch(x)
    out_h, out_w = _as_size(size)
    _, h, w, _ = x.shape
    if (h, w) == (out_h, out_w):
        return x.copy()
    dtype = x.dtype if x.dtype.kind == "f" else np.float32
    mh = interpolation_matrix(h, out_h, method).astype(dtype)
    mw = interpolation_matrix(w, out_w, method).astype(dtype)
    # y[n, o, p, c] = sum_{h, w} mh[o, h] x[n, h, w, c] mw[p, w]
    y = np.einsum("oh,nhwc->nowc", mh, x.astype(dtype, copy=False), optimize=True)
    y = np.einsum("pw,nowc->nopc", mw, y, optimize=True)
    if x.dtype == np.uint8:
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(y)


# -- value scaling ----------------------------------------------------------------------------
def to_float(x):
    """uint8 images in [0, 255] -> float32 in [0, 1]; float images -> float32 unchanged."""
    x = _check_batch(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32, copy=True)


def normalize(x, mean, std):
    """Per-channel `(x - mean) / std` as float32; uint8 input is first scaled to [0, 1]."""
    x = to_float(x)
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    std = np.asarray(std, dtype=np.float32).reshape(-1)
    c = x.shape[-1]
    if mean.size not in (1, c) or std.size not in (1, c):
        raise ValueError(f"mean and std must have 1 or {c} values, got {mean.size} and {std.size}")
    if np.any(std <= 0):
        raise ValueError(f"std must be > 0, got {std}")
    return (x - mean) / std


def channel_stats(x):
    """Per-channel mean and std of a batch (on the [0, 1] scale for uint8): `(C,)`, `(C,)`."""
    x = to_float(x).astype(np.float64)
    return x.mean(axis=(0, 1, 2)).astype(np.float32), x.std(axis=(0, 1, 2)).astype(np.float32)


# -- random geometry --------------------------------------------------------------------------
def _gather_crops(x, top, left, h, w):
    """Crop `(h, w)` windows at per-image offsets `top`, `left` (N,) from a batch, vectorised."""
    n = x.shape[0]
    rows = top[:, None] + np.arange(h)[None, :]  # (N, h)
    cols = left[:, None] + np.arange(w)[None, :]  # (N, w)
    return x[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_crop(x, size, padding, rng, fill=0):
    """Pad each image by `padding` pixels of `fill` on every side, then crop `size` at a random place.

    The classic CIFAR augmentation (32x32, padding 4): a random shift by up to `padding` pixels.
    Offsets are uniform on `[0, H + 2 * padding - size_h]`, independently per image.
    """
    x = _check_batch(x)
    h, w = _as_size(size)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=fill)
    n, hp, wp, _ = padded.shape
    if h > hp or w > wp:
        raise ValueError(f"crop {h}x{w} is larger than the padded image {hp}x{wp}")
    top = rng.integers(0, hp - h + 1, size=n)
    left = rng.integers(0, wp - w + 1, size=n)
    return _gather_crops(padded, top, left, h, w)


def horizontal_flip(x, rng, p=0.5):
    """Mirror each image left-right with probability `p` (an exact mirror: `x[:, :, ::-1]`)."""
    x = _check_batch(x)
    flip = rng.random(x.shape[0]) < p
    out = x.copy()
    out[flip] = x[flip, :, ::-1]
    return out


def random_resized_crop_box(height, width, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """`(top, left, h, w)` of a random crop: area a `scale` fraction, aspect `ratio` log-uniform.

    The Inception recipe (Szegedy et al. 2015), as torchvision draws it: up to `attempts` tries,
    then a centre crop with the aspect ratio clamped into `ratio`. The box always lies inside
    the image.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(x, size, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), method="bilinear"):
    """Crop a random box per image (see `random_resized_crop_box`) and resize it to `size`."""
    x = _check_batch(x)
    out_h, out_w = _as_size(size)
    n, height, width, _ = x.shape
    out = np.empty((n, out_h, out_w, x.shape[3]), dtype=x.dtype)
    for i in range(n):
        top, left, h, w = random_resized_crop_box(height, width, rng, scale, ratio)
        out[i] = resize(x[i : i + 1, top : top + h, left : left + w], (out_h, out_w), method)[0]
    return out


# -- transforms: callables t(x, rng) ------------------------------------------------------------
class Compose:
    """Apply transforms in order: `Compose([RandomCrop(32, 4), Normalize(mean, std)])(x, rng)`."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class RandomCrop:
    def __init__(self, size, padding=0, fill=0):
        self.size, self.padding, self.fill = _as_size(size), int(padding), fill

    def __call__(self, x, rng):
        return random_crop(x, self.size, self.padding, rng, self.fill)

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, x, rng):
        return horizontal_flip(x, rng, self.p)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResizedCrop:
    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), method="bilinear"):
        self.size, self.scale, self.ratio, self.method = _as_size(size), tuple(scale), tuple(ratio), method

    def __call__(self, x, rng):
        return random_resized_crop(x, self.size, rng, self.scale, self.ratio, self.method)

    def __repr__(self):
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class Resize:
    def __init__(self, size, method="bilinear"):
        self.size, self.method = _as_size(size), method

    def __call__(self, x, rng=None):
        return resize(x, self.size, self.method)

    def __repr__(self):
        return f"Resize(size={self.size}, method={self.method!r})"


class ToFloat:
    def __call__(self, x, rng=None):
        return to_float(x)

    def __repr__(self):
        return "ToFloat()"


class Normalize:
    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)

    def __call__(self, x, rng=None):
        return normalize(x, self.mean, self.std)

    def __repr__(self):
        return f"Normalize(mean={self.mean.round(4).tolist()}, std={self.std.round(4).tolist()})"


def preprocessing(resolution=None, mean=None, std=None):
    """The deterministic part of a pipeline, as stored in a checkpoint's metadata: resize to
    `resolution` (if given), then normalise by `mean`/`std` (if given), else scale to [0, 1]."""
    steps = [Resize(resolution)] if resolution else []
    steps.append(Normalize(mean, std) if mean is not None and std is not None else ToFloat())
    return Compose(steps)
