"""npmobilenet: MobileNet V1, V2 and V3 from scratch in NumPy and Numba.

`import npmobilenet` needs only numpy and numba and compiles nothing: kernels compile on first
use, and the training, interop and compression parts load when first touched.
"""
__version__ = "0.1.0"

from npmobilenet.models import ARCHS  # noqa: E402
from npmobilenet.applications import APPLICATIONS, build  # noqa: E402  (classifiers, LR-ASPP, SSDLite)

# Public names that live in modules loaded on first use: name -> module.
_LAZY = {
    "train": "npmobilenet.training.loop",
    "save": "npmobilenet.io.checkpoint",
    "load": "npmobilenet.io.checkpoint",
    "load_checkpoint": "npmobilenet.io.checkpoint",
    "evaluate": "npmobilenet.training.evaluation",
    "load_weights": "npmobilenet.io.weights",
    "from_weights": "npmobilenet.io.weights",
    "inspect_weights": "npmobilenet.io.weights",
    "export_onnx": "npmobilenet.io.onnx_export",
    "quantize": "npmobilenet.compression.quantize",
    "load_quantized": "npmobilenet.compression.qmodel",
    "pretrained": "npmobilenet.io.hub",
}


# Subpackages imported on first use, so `npmobilenet.analysis.summarize(...)` works after a plain
# `import npmobilenet` (each still imports only when touched).
_SUBPACKAGES = ("analysis", "applications", "compression", "config", "detection", "distributed", "graph",
                "inference", "io", "layers", "models", "ops", "segmentation", "training")


def __getattr__(name):
    import importlib

    if name in _SUBPACKAGES:
        return importlib.import_module(f"npmobilenet.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'npmobilenet' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    # the lazily loaded names too, so dir() and tab completion show them before first use
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))


__all__ = ["ARCHS", "APPLICATIONS", "build", *_LAZY]
