"""Images in, model inputs out: Pillow loading and the standard ImageNet preprocessing.

    resize the shorter side to 256 (bilinear; Pillow antialiases when shrinking)
    centre-crop 224 x 224
    scale to [0, 1], subtract the mean and divide by the standard deviation, per channel

exactly as torchvision's `Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)` does on a
PIL image (the sizes, rounding and float32 arithmetic follow torchvision's code), but producing
NHWC arrays, our layout. Every step is configurable through `Preprocess`.

Images that are not 8-bit RGB are converted (`to_rgb8`, shared with training's image folders),
and `load_image` says how (grayscale replicated to three channels, alpha dropped, palette
expanded, 16-bit scaled to 8 bits), so the caller can tell the user. An image's size is checked
from its header before it is decoded (`check_image_size`, `open_image`).
"""
import struct
import warnings
from dataclasses import dataclass

import numpy as np

from npmobilenet.extras import require
from npmobilenet.io.limits import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing recipe (defaults: torchvision's ImageNet evaluation transform)."""

    resize: int = 256
    crop: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self):
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) must not exceed resize ({self.resize})")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(np.isfinite(v) for v in value):
                raise ValueError(f"{name} must be three finite numbers (R, G, B), got {value!r}")
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std must be positive, got {self.std!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")


def check_image_size(width, height, path):
    """Refuse, from the header's size alone, an image that would cost far more to decode and
    resize than a photograph: over `limits.MAX_IMAGE_PIXELS` pixels, or a side more than
    `limits.MAX_ASPECT_RATIO` times the other (its shorter side resized to 256, a 50000 x 1 image
    would be 12.8 million pixels wide)."""
    if width < 1 or height < 1:
        raise ValueError(f"{path} is {width}x{height} pixels: an empty image")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{path} is {width}x{height} = {width * height:,} pixels; npmobilenet reads images of up to "
                         f"{MAX_IMAGE_PIXELS:,} pixels (shrink it first)")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ValueError(f"{path} is {width}x{height} pixels, one side over {MAX_ASPECT_RATIO} times the other; "
                         "crop it first")


def open_image(path):
    """Open `path` with Pillow and decode it, after checking its size from the header
    (`check_image_size`); Pillow's decompression-bomb limit is reported as a ValueError too.

    Raises ValueError for a file that is not an image, is truncated or too large,
    FileNotFoundError if absent.
    """
    Image = require("PIL.Image", "reading images")
    from PIL import UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            try:
                check_image_size(*image.size, path)
                image.load()  # decode now, so a truncated file fails here, with its name
            except BaseException:
                image.close()
                raise
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise ValueError(f"cannot read image {path}: {exc.strerror}") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{path} is too large to decode safely ({exc})") from None
    except ValueError:
        raise
    except (OSError, SyntaxError, EOFError, IndexError, TypeError, ZeroDivisionError, struct.error) as exc:
        raise ValueError(f"{path} is a damaged or truncated image ({exc})") from None
    return image


def to_rgb8(image):
    """A decoded PIL image as 8-bit RGB: (image, note), note None or how it was converted.

    The one conversion training and prediction share: grayscale repeated over three channels,
    16-bit scaled by 1/257 (65535 -> 255), 32-bit integers by their maximum, alpha dropped,
    palettes expanded; floating-point images refused.
    """
    from PIL import Image

    mode, note = image.mode, None
    if mode == "RGB":
        return image, None
    if mode in ("L", "1"):
        note = f"grayscale ({mode}) image converted to RGB by repeating the channel"
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        scale = 1 / 257 if mode.startswith("I;16") else 255 / max(1, int(np.asarray(image).max()))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) * scale + 0.5, 0, 255).astype(np.uint8), "L")
        note = f"{mode} grayscale image scaled to 8 bits and converted to RGB"
    elif mode == "F":
        raise ValueError("a floating-point image (mode F); save it as 8-bit RGB first")
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        note = f"{mode} image: alpha channel dropped, converted to RGB"
    elif mode == "P":
        note = "palette image converted to RGB"
    else:
        note = f"{mode} image converted to RGB"
    return image.convert("RGB"), note


def load_image(path):
    """Open `path` with Pillow as an 8-bit RGB image: (image, note), note None or how it was converted
    (`open_image`, the camera's orientation tag applied, then `to_rgb8`).

    Raises ValueError for a file that is not an image, is truncated or too large,
    FileNotFoundError if absent.
    """
    from PIL import ImageOps

    image = open_image(path)
    try:
        image = ImageOps.exif_transpose(image)  # photographs: honour the camera's orientation tag
    except (OSError, ValueError, TypeError, SyntaxError, IndexError, struct.error):
        pass
    try:
        return to_rgb8(image)
    except ValueError as exc:
        raise ValueError(f"{path} is {exc}") from None


def resize_shorter_side(image, size, interpolation="bilinear"):
    """Resize so the shorter side is `size`, keeping the aspect ratio (torchvision's rounding: the
    longer side is int(size * long / short))."""
    from PIL import Image

    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    if new_size == (width, height):
        return image
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                "lanczos": Image.LANCZOS}[interpolation]
    return image.resize(new_size, resample)


def center_crop(image, size):
    """The central size x size crop (torchvision's rounding of the offsets: round half to even)."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} image")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def normalise(pixels, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 (..., 3) -> float32 (pixels / 255 - mean) / std, in float32 as torchvision computes it."""
    x = np.asarray(pixels, dtype=np.float32) / np.float32(255)
    return (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)


def preprocess_image(image, config=Preprocess()):
    """A PIL RGB image -> (crop, crop, 3) float32, normalised."""
    image = center_crop(resize_shorter_side(image, config.resize, config.interpolation), config.crop)
    return normalise(np.asarray(image, dtype=np.uint8), config.mean, config.std)


def load_batch(paths, config=Preprocess(), notes=None):
    """Load and preprocess images into one (N, crop, crop, 3) float32 NHWC batch.

    `notes`, if a list, receives (path, note) for each image that had to be converted.
    """
    arrays = []
    for path in paths:
        image, note = load_image(path)
        if note is not None and notes is not None:
            notes.append((path, note))
        arrays.append(preprocess_image(image, config))
    if not arrays:
        raise ValueError("no images given")
    return np.stack(arrays)
