"""What reading a file may cost, and what it may claim: the budgets every loader enforces.

A weights file, a checkpoint or an image is data from strangers. Reading one must cost time and
memory bounded by what the file honestly declares, and never more than these caps:

    MAX_LOAD_BYTES     array bytes one file may make us hold (.pth storages, .npz arrays,
                       .safetensors tensors): generous for real models, a clear error beyond
    MAX_PICKLE_BYTES   a .pth's pickle (a state dict's is kilobytes; the tensors are elsewhere)
    MAX_NESTING        containers inside containers in a .pth's pickle
    MAX_IMAGE_PIXELS   pixels of one image, read from its header before decoding
    MAX_ASPECT_RATIO   longer side over shorter side (a 50000 x 1 image resized to a 256 shorter
                       side would be 12.8 million pixels wide)
    MAX_RESOLUTION     a training resolution stored in a checkpoint's metadata
    CONFIG_BOUNDS      the largest value a stored model config may give each build option

`ByteBudget` counts bytes against a cap as a loader reads; `check_config` bounds a stored config
and compares the model it describes with the arrays the file stores, before anything is built;
`warn_non_finite` names the arrays holding NaN or infinity.
"""
import math
import numbers
import warnings

import numpy as np

MAX_LOAD_BYTES = 4 * 2 ** 30
MAX_PICKLE_BYTES = 256 * 2 ** 20
MAX_NESTING = 1000
MAX_IMAGE_PIXELS = 64 * 2 ** 20
MAX_ASPECT_RATIO = 64
MAX_RESOLUTION = 4096     # a stored training resolution

# option: (smallest, largest) allowed in a stored config (the builder checks the rest)
CONFIG_BOUNDS = {
    "width": (1e-3, 10.0),
    "num_classes": (1, 100_000),
    "stem_channels": (1, 2 ** 16),
    "head_channels": (1, 2 ** 16),
    "last_channels": (1, 2 ** 16),
    "expanded_channels": (1, 2 ** 16),
    "se_channels": (0, 2 ** 16),
    "repeats": (1, 64),
}


class BudgetExceededError(ValueError):
    """A file asks for more memory than the loader's cap allows."""


class ByteBudget:
    """Bytes a loader has committed to, against `limit`; `take(n, what)` raises beyond it."""

    def __init__(self, limit=None, path="<file>"):
        self.limit = MAX_LOAD_BYTES if limit is None else int(limit)
        self.used = 0
        self.path = path

    def take(self, nbytes, what):
        self.used += int(nbytes)
        if self.used > self.limit:
            raise BudgetExceededError(
                f"{self.path}: {what} takes the file's arrays to {self.used:,} bytes, over the "
                f"{self.limit:,}-byte limit for one file (max_bytes=); a corrupt or hostile file declares "
                f"sizes it does not hold"
            )


def _numbers(value):
    """The numbers a config option holds: itself, or the items of a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _lower_bound_parameters(config):
    """Parameters the model `config` describes has at least: each block's last projection
    (expanded x out; a conv row's in x out), the head conv and the classifier's linear layers.
    Layers replaced by a low-rank pair (`factorized`) are left out."""
    from npmobilenet.applications import APPLICATIONS
    from npmobilenet.models import arch_spec

    factorized = config.get("factorized") or {}
    options = {k: v for k, v in config.items() if k not in ("arch", "width", "num_classes", "factorized")}
    if config["arch"] in APPLICATIONS:
        # LR-ASPP and SSDLite hold a V3-Large backbone: its blocks before the last stage (SSDLite
        # halves that stage) are a lower bound; the heads' other options are theirs, not the backbone's
        spec = arch_spec("mobilenet_v3_large", config.get("width", 1.0))
        return sum(block.expanded_channels * block.out_channels for block in spec.blocks[:-3]
                   if block.kind != "conv") + int(config.get("num_classes", 21))
    spec = arch_spec(config["arch"], config.get("width", 1.0), **options)
    total = 0
    for i, block in enumerate(spec.blocks):
        if any(str(name).startswith(f"blocks.{i}.") for name in factorized):
            continue
        fan_in = block.in_channels if block.kind == "conv" else block.expanded_channels
        total += fan_in * block.out_channels
    features = spec.blocks[-1].out_channels
    if spec.head_channels:
        total += features * spec.head_channels
        features = spec.head_channels
    if not any(str(name).startswith("classifier") for name in factorized):
        if spec.last_channels:
            total += features * spec.last_channels
            features = spec.last_channels
        total += features * int(config.get("num_classes", 1000))
    return total


def check_config(config, stored_values, path):
    """Refuse a stored model config before building it: options outside `CONFIG_BOUNDS`, or a
    model with more parameters than the `stored_values` (elements of the file's model arrays)."""
    for key, (least, most) in CONFIG_BOUNDS.items():
        if key not in config or config[key] is None:
            continue
        for value in _numbers(config[key]):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or not least <= value <= most:
                raise ValueError(f"{path}: its stored config has {key}={config[key]!r:.80}; "
                                 f"npmobilenet builds {key} between {least:g} and {most:g}")
    if not isinstance(config.get("arch"), str):
        raise ValueError(f"{path}: its stored config has no architecture name (arch)")
    try:
        needed = _lower_bound_parameters(config)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"{path}: cannot build a model from its config {config}: {exc}") from None
    if needed > stored_values:
        raise ValueError(f"{path}: its config describes a model of at least {needed:,} parameters, but the file "
                         f"stores {stored_values:,} values: the config or the file is corrupt")


def non_finite(arrays):
    """Names of the floating-point arrays in `{name: array}` holding NaN or infinity."""
    return [name for name, array in arrays.items()
            if np.asarray(array).dtype.kind == "f" and not np.isfinite(array).all()]


def warn_non_finite(arrays, path):
    """Warn (RuntimeWarning) naming every array of `arrays` that holds NaN or infinity; returns
    their names. A model with such weights computes NaN for every image."""
    names = non_finite(arrays)
    if names:
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        warnings.warn(f"{path}: non-finite weights (NaN or infinity) in {len(names)} array(s): {shown}; "
                      f"the model's outputs will not be numbers", RuntimeWarning, stacklevel=3)
    return names
