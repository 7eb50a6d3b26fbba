"""Compression: int8 quantization with integer-only inference, channel and magnitude pruning,
low-rank factorisation.

    quantize.py    quantize(model, images) -> QuantizedModel: BN folding, int8 graph, fixed-point requantization
    calibrate.py   activation ranges: min/max, percentile, MSE
    qkernels.py    integer Numba kernels (conv, depthwise, pointwise/linear, add, mean, SE scale, lookup tables)
    qreference.py  slow integer reference, the kernels' bit-for-bit oracle
    qformat.py     the versioned int8 checkpoint (save_quantized / load_quantized)
    prune.py       prune_channels (structured), magnitude_prune (unstructured), MaskedOptimizer
    factorize.py   factorize: truncated SVD of 1x1 convolutions and classifier layers
    structure.py   compressed architectures as config: build(config), load(path) for any checkpoint
    cli.py         `npmobilenet compress quantize|prune|factorize CHECKPOINT OUT`

Names are loaded on first use.
"""
import importlib

_LAZY = {
    "quantize": "quantize", "QuantizedModel": "quantize", "fold_model": "quantize",
    "save_quantized": "qformat", "load_quantized": "qformat", "is_quantized": "qformat",
    "prune_channels": "prune", "magnitude_prune": "prune", "MaskedOptimizer": "prune", "sparsity_of": "prune",
    "factorize": "factorize",
    "build": "structure", "load": "structure",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'npmobilenet.compression' has no attribute {name!r}")
    return getattr(importlib.import_module(f"npmobilenet.compression.{module}"), name)


__all__ = sorted(_LAZY)
