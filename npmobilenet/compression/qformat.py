"""The quantized checkpoint: an int8 model in one `.npz`, versioned, loaded without pickle.

Format (version 1), every entry a plain array (`np.load(..., allow_pickle=False)` reads it):

    __format__     str array "npmobilenet.quantized"
    __version__    int64 array, 1
    __config__     uint8 array: UTF-8 JSON of the float model's config (what it was quantized from)
    __graph__      uint8 array: UTF-8 JSON {"output": name, "tensors": {name: [scale, zero_point]},
                   "ops": [op attributes, in execution order], "info": {per_channel, method, ...}}
    op<i>/<array>  op i's integer arrays: weight int8, bias/multiplier/shift int32, weight_scale
                   float32 (per output channel), table int8, requant int32

Weights are int8 where the float checkpoint holds float32, and batch norm is gone (folded), so the
file is about 4x smaller. A float checkpoint (`npmobilenet.checkpoint`) given to `load_quantized`,
or a quantized one given where a float one is expected, is named as such.
"""
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = "npmobilenet.quantized"
FLOAT_FORMAT = "npmobilenet.checkpoint"
VERSION = 1


def _json_array(obj):
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def _from_json_array(array, key, path):
    try:
        return json.loads(np.asarray(array, dtype=np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"quantized checkpoint {path}: {key} is not valid JSON ({exc})") from exc


def quantized_arrays(qmodel):
    """The `{key: array}` a quantized checkpoint holds (see the module docstring)."""
    graph = dict(output=qmodel.output, tensors={k: [s, z] for k, (s, z) in qmodel.tensors.items()},
                 ops=[op.attrs() for op in qmodel.ops], info=qmodel.info)
    arrays = {
        "__format__": np.array(FORMAT),
        "__version__": np.array(VERSION, dtype=np.int64),
        "__config__": _json_array(qmodel.config),
        "__graph__": _json_array(graph),
    }
    for i, op in enumerate(qmodel.ops):
        for name, array in op.arrays().items():
            arrays[f"op{i}/{name}"] = np.ascontiguousarray(array)
    return arrays


def atomic_savez(path, arrays):
    """np.savez into a temporary file beside `path`, fsync, then os.replace: all or nothing."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {directory} does not exist (for {path})")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_arrays(path):
    """Every array of an .npz file (never unpickling), or a ValueError naming the file and why."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except AttributeError:
        raise ValueError(f"{path} is a single .npy array, not an .npz checkpoint") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        reason = "it holds pickled data, which is never loaded" if "pickle" in str(exc) else str(exc)
        raise ValueError(f"checkpoint {path} is truncated or corrupted and cannot be read "
                         f"({type(exc).__name__}: {reason})") from exc


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
    config = _from_json_array(arrays["__config__"], "__config__", path)
    graph = _from_json_array(arrays["__graph__"], "__graph__", path)
    try:
        ops = []
        for i, attrs in enumerate(graph["ops"]):
            prefix = f"op{i}/"
            op_arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            ops.append(op_from_record(attrs, op_arrays))
        tensors = {k: tuple(v) for k, v in graph["tensors"].items()}
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
