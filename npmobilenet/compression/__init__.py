"""Compression: int8 quantization with integer-only inference, channel and magnitude pruning,
low-rank factorisation.

    quantize.py    quantize(model, images) -> QuantizedModel: the model's folded graph calibrated and quantized
    calibrate.py   activation ranges: min/max, percentile, MSE
    qops.py        the int8 ops (conv, lookup, mean, channel scale, add), fixed-point multipliers
    qmodel.py      QuantizedModel (integer-only inference) and its versioned checkpoint
    qplan.py       an int8 model's ops bound once to buffers per input shape (residual adds fused)
    qprogram.py    those bound calls as an op table, run by the float model's table runner (2 threads)
    qkernels.py    integer Numba kernels (conv, depthwise, pointwise/linear, add, mean, SE scale, lookup tables)
    vnni.py        x86 vectors for them: int32x16 and vpdpbusd (VNNI), int8x64 and vpermi2b (VBMI lookups)
    qexact.py      the same integer sums, exactly, on the float tiles of npmobilenet.ops (integer_only=False)
    prune.py       prune_channels (structured), magnitude_prune (unstructured), MaskedOptimizer
    factorize.py   factorize: truncated SVD of 1x1 convolutions and classifier layers
    structure.py   compressed architectures as config: build(config)

`load` is `npmobilenet.load` (any checkpoint, float or int8); the command is `npmobilenet compress`.

Names are loaded on first use, except `quantize`: it is also its module's name, and importing a
submodule sets the package's attribute to the module, so a lazy `from npmobilenet.compression
import quantize` returned the module (the name is looked up twice, and the first look-up imported
the module). Imported here, the function is bound after its module and stays bound. `from
npmobilenet.compression import factorize` gives the module (`factorize.factorize` is the function),
as the tests and benchmarks use it.
"""
import importlib

from npmobilenet.compression.quantize import quantize

_LAZY = {
    "QuantizedModel": "qmodel", "fold_model": "quantize",
    "save_quantized": "qmodel", "load_quantized": "qmodel", "is_quantized": "qmodel",
    "prune_channels": "prune", "magnitude_prune": "prune", "MaskedOptimizer": "prune", "sparsity_of": "prune",
    "factorize": "factorize",
    "build": "structure", "load": "npmobilenet.io.checkpoint",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'npmobilenet.compression' has no attribute {name!r}")
    path = module if module.startswith("npmobilenet.") else f"npmobilenet.compression.{module}"
    return getattr(importlib.import_module(path), name)


__all__ = ["quantize"]
__all__ += sorted(_LAZY)
