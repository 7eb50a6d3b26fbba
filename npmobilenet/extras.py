"""Optional dependencies, imported lazily with a message that names the install to run."""
import importlib

# module: (pip package, extra that brings it)
EXTRAS = {
    "sklearn": ("scikit-learn", "demo"),
    "tqdm": ("tqdm", "progress"),
    "PIL": ("pillow", "images"),
    "safetensors": ("safetensors", "test"),
    "skimage": ("scikit-image", "demo"),
    "dask": ("dask[distributed]", "dask"),
    "distributed": ("dask[distributed]", "dask"),
    "pyarrow": ("pyarrow", "dask"),
    "pandas": ("pandas", "dask"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "matplotlib": ("matplotlib", None),
    "torch": ("torch", None),
    "timm": ("timm", None),
}


def require(module, purpose):
    """Import `module` or raise ImportError naming the `pip install` that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package, extra = EXTRAS.get(module.split(".")[0], (module, None))
        how = f"pip install 'npmobilenet[{extra}]' (or pip install {package})" if extra else f"pip install {package}"
        raise ImportError(f"{purpose} needs the optional package {package}: {how}") from exc


def available(module):
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False
