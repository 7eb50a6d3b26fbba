"""Interop: weights in (npmobilenet .npz, torchvision/timm .safetensors and .pth without torch),
images in (Pillow, ImageNet preprocessing), ONNX out.

    load_weights(model, path) -> model       from_weights(path) -> model
    inspect_weights(path) -> WeightsInfo     export_onnx(model, path, batch=None)
"""
from npmobilenet.io.weights import from_weights, inspect_weights, load_weights

__all__ = ["load_weights", "from_weights", "inspect_weights", "export_onnx"]


def __getattr__(name):
    # the ONNX exporter imports onnx lazily; keep `import npmobilenet.io` free of it
    if name == "export_onnx":
        from npmobilenet.io.onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
