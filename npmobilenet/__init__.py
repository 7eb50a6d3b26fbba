"""npmobilenet: MobileNet V1, V2 and V3 from scratch in NumPy and Numba.

`import npmobilenet` needs only numpy and numba and compiles nothing: kernels compile on first
use, and the training, interop and compression parts load when first touched.
"""
__version__ = "0.1.0"

from npmobilenet.models import ARCHS, build  # noqa: E402

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
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'npmobilenet' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["ARCHS", "build", *_LAZY]
