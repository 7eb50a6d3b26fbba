"""The quantized checkpoint: an int8 model in one `.npz`, versioned, loaded without pickle.

Format (version 1), every entry a plain array (`np.load(..., allow_pickle=False)` reads it):

    __format__     str array "npmobilenet.quantized"
    __version__    int64 array, 1
    __config__     uint8 array: UTF-8 JSON of the float model's config (what it was quantized from)
    __graph__      uint8 array: UTF-8 JSON {"output": name, "tensors": {name: [scale, zero_point]},
                   "ops": [op attributes, in execution order, each with "arrays": {array name:
                   [offset, shape]}], "info": {per_channel, method, ...}}
    weight, bias, weight_scale, table, requant
                   every op's arrays of that name, raveled and concatenated (one zip member per
                   kind, not per layer): weight int8, bias int32, weight_scale float32 (per output
                   channel), table int8, requant int32

A convolution's fixed-point multipliers follow from the scales and are recomputed on load.
Weights are int8 where the float checkpoint holds float32, and batch norm is gone (folded); the
int32 biases and float32 per-channel scales keep the file a little above a quarter of the float
one (3.6-3.8x smaller for the MobileNets measured). A float checkpoint (`npmobilenet.checkpoint`) given to `load_quantized`,
or a quantized one given where a float one is expected, is named as such.
"""
import os

import numpy as np

from npmobilenet.io.files import atomic_savez, from_json_array, json_array, read_arrays

FORMAT = "npmobilenet.quantized"
# packed array name -> dtype
PACKED = {"weight": np.int8, "bias": np.int32, "weight_scale": np.float32, "table": np.int8, "requant": np.int32}
FLOAT_FORMAT = "npmobilenet.checkpoint"
VERSION = 1


def quantized_arrays(qmodel):
    """The `{key: array}` a quantized checkpoint holds (see the module docstring)."""
    ops, pieces = [], {}
    for op in qmodel.ops:
        attrs = op.attrs()
        attrs["arrays"] = {}
        for name, array in op.arrays().items():
            if name in op.derived:
                continue
            if name not in PACKED:
                raise ValueError(f"op {op.name}: array {name!r} has no packed entry")
            chunks = pieces.setdefault(name, [])
            offset = sum(c.size for c in chunks)
            chunks.append(np.asarray(array, PACKED[name]).ravel())
            attrs["arrays"][name] = [offset, list(np.shape(array))]
        ops.append(attrs)
    graph = dict(output=qmodel.output, tensors={k: [s, z] for k, (s, z) in qmodel.tensors.items()},
                 ops=ops, info=qmodel.info)
    arrays = {
        "__format__": np.array(FORMAT),
        "__version__": np.array(VERSION, dtype=np.int64),
        "__config__": json_array(qmodel.config),
        "__graph__": json_array(graph),
    }
    for name, chunks in pieces.items():
        arrays[name] = np.concatenate(chunks)
    return arrays


def save_quantized(qmodel, path):
    """Write `qmodel` to `path` atomically. Returns path."""
    return atomic_savez(path, quantized_arrays(qmodel))


def read_format(path):
    """The `__format__` of an npz file ("npmobilenet.quantized", "npmobilenet.checkpoint", ...) or None."""
    arrays = read_arrays(path)
    return str(arrays["__format__"]) if "__format__" in arrays else None


def is_quantized(path):
    """True if `path` is a quantized checkpoint (for commands that accept either kind)."""
    try:
        return read_format(path) == FORMAT
    except ValueError:
        return False


def load_quantized(path):
    """The `QuantizedModel` saved in `path`, or a ValueError naming the file and the problem."""
    from npmobilenet.compression.quantize import QuantizedModel, op_from_record

    path = os.fspath(path)
    arrays = read_arrays(path)  # FileNotFoundError / ValueError for missing, truncated, pickled files
    fmt = str(arrays["__format__"]) if "__format__" in arrays else None
    if fmt == FLOAT_FORMAT:
        raise ValueError(f"{path} is a float npmobilenet checkpoint, not an int8 quantized one; load it with "
                         "npmobilenet.training.checkpoint.load, or quantize it first with "
                         "`npmobilenet compress quantize`")
    if fmt != FORMAT:
        raise ValueError(f"{path} is not a quantized npmobilenet checkpoint (no {FORMAT!r} __format__ key)")
    try:
        version = int(arrays["__version__"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"quantized checkpoint {path} has no valid __version__") from None
    if version > VERSION:
        raise ValueError(f"quantized checkpoint {path} has format version {version}; "
                         f"this npmobilenet reads up to {VERSION}")
    for key in ("__config__", "__graph__"):
        if key not in arrays:
            raise ValueError(f"quantized checkpoint {path} has no {key} entry")
    config = from_json_array(arrays["__config__"], "__config__", path)
    graph = from_json_array(arrays["__graph__"], "__graph__", path)
    try:
        tensors = {k: tuple(v) for k, v in graph["tensors"].items()}
        ops = []
        for attrs in graph["ops"]:
            attrs = dict(attrs)
            op_arrays = {}
            for name, (offset, shape) in attrs.pop("arrays").items():
                blob = arrays[name]
                if blob.dtype != PACKED[name]:
                    raise ValueError(f"{name} must be {np.dtype(PACKED[name]).name}, got {blob.dtype}")
                size = int(np.prod(shape))
                if offset < 0 or offset + size > blob.size:
                    raise ValueError(f"op {attrs.get('name')}: {name} [{offset}, {offset + size}) lies outside "
                                     f"the stored {blob.size} values")
                op_arrays[name] = blob[offset : offset + size].reshape(shape)
            ops.append(op_from_record(attrs, op_arrays, tensors))
        qmodel = QuantizedModel(config, tensors, ops, graph["output"], graph.get("info"))
        _check_consistent(qmodel)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"quantized checkpoint {path} is inconsistent: {exc}") from exc
    return qmodel


def _check_consistent(qmodel):
    """Every op reads tensors that exist, and its arrays have the dtypes the kernels take."""
    from npmobilenet.compression.quantize import QConv, QLookup

    known = {"input"}
    for op in qmodel.ops:
        missing = [t for t in op.inputs if t not in known]
        if missing:
            raise ValueError(f"op {op.name} reads undefined tensors {missing}")
        known.add(op.output)
        if isinstance(op, QConv):
            expected = dict(weight=np.int8, bias=np.int32, multiplier=np.int32, shift=np.int32)
            for name, dtype in expected.items():
                if getattr(op, name).dtype != dtype:
                    raise ValueError(f"op {op.name}: {name} must be {np.dtype(dtype).name}, got {getattr(op, name).dtype}")
            cout = op.weight.shape[-1]
            if any(getattr(op, n).shape != (cout,) for n in ("bias", "multiplier", "shift")):
                raise ValueError(f"op {op.name}: bias, multiplier and shift must have shape ({cout},)")
        if isinstance(op, QLookup) and (op.table.dtype != np.int8 or op.table.shape != (256,)):
            raise ValueError(f"op {op.name}: table must be int8 of shape (256,)")
    missing = sorted(known - set(qmodel.tensors))
    if missing:
        raise ValueError(f"tensors without quantization parameters: {missing}")
    if qmodel.output not in known:
        raise ValueError(f"output tensor {qmodel.output!r} is never computed")
