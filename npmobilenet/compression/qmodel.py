"""The int8 model (`QuantizedModel`: inference on integers, costs) and its checkpoint.

The checkpoint: an int8 model in one `.npz`, versioned, loaded without pickle (`npmobilenet.load`
reads it, `qmodel.save(path)` writes it).

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
one (3.6-3.8x smaller for the MobileNets measured). A float checkpoint given to `load_quantized`, or a quantized one given where a float one
is expected, is named as such.
"""
import os
import threading

import numpy as np

from npmobilenet import config
from npmobilenet.compression import qkernels, vnni
from npmobilenet.compression.qops import op_from_record
from npmobilenet.compression.qplan import Int8Plan
from npmobilenet.ops.blas import single_threaded_blas
from npmobilenet.io.files import atomic_savez, from_json_array, json_array, read_arrays
from npmobilenet.ops.geometry import check_images

FORMAT = "npmobilenet.quantized"
FLOAT_FORMAT = "npmobilenet.checkpoint"
VERSION = 1
# packed array name -> dtype
PACKED = {"weight": np.int8, "bias": np.int32, "weight_scale": np.float32, "table": np.int8, "requant": np.int32}


class QuantizedModel:
    """An int8 MobileNet: x (N, H, W, 3) float -> logits (N, num_classes) float32.

    `ops` run in order on int8 tensors named as in the float model; `tensors[name]` is the
    `(scale, zero_point)` of each. `quantize_input(x)` and `run(xq)` expose the integer path:
    `run` returns the int8 logits (or every tensor, `record=True`).

    `integer_only` (default True): every layer on integer arithmetic, as a device without a
    floating-point unit would run it. Set it to False to let layers of at least `EXACT_MIN_MACS`
    compute the same integer sums on the float32 kernels, exactly (see qkernels, "exact float32
    paths"): bit-identical results, faster on a CPU with vector floating point.
    """

    training = False
    integer_only = True

    def __init__(self, config, tensors, ops, output, info=None):
        self.config = dict(config)
        self.tensors = {k: (float(s), int(z)) for k, (s, z) in tensors.items()}
        self.ops = list(ops)
        self.output = output
        self.info = dict(info or {})
        self.num_classes = int(self.config.get("num_classes", 0)) or None

    # -- inference -----------------------------------------------------------------------------
    def quantize_input(self, x):
        """The image batch as int8: round(x / s) + z, clipped (the one float step at the input)."""
        x = check_images(x, np.float32)        # the float model's checks and messages
        scale, zero_point = self.tensors["input"]
        q = np.empty(x.shape, np.int8)
        qkernels.quantize_images(x.reshape(-1), float(scale), float(zero_point), q.reshape(-1))
        return q

    def run(self, xq, record=False):
        """int8 input (N, H, W, 3) -> int8 logits (N, num_classes); every tensor if `record`.

        Without `record`, on a plan (`qplan.Int8Plan`) made once per input shape, mode, thread
        count and kernel choice: buffers and kernel arguments bound once. With it, op by op
        (the same kernels, no fusion: every tensor is kept)."""
        # OpenBLAS (the exact float32 paths' SGEMM) on the calling threads only, for the whole pass:
        # its own threads would spin between calls and take the cores from the kernels' threads.
        with single_threaded_blas():
            lock = self.__dict__.setdefault("_plan_lock", threading.Lock())
            # the plan's buffers serve one call at a time; a concurrent call goes op by op
            if not record and lock.acquire(blocking=False):
                try:
                    return self.plan(xq.shape).run(xq)
                finally:
                    lock.release()
            env = {"input": xq}
            zp = {name: z for name, (_, z) in self.tensors.items()}
            for op in self.ops:
                env[op.output] = op.evaluate(env, zp, not self.integer_only)
            return env if record else env[self.output]

    def plan(self, input_shape):
        """The int8 plan (activation arena and op table, `qplan.Int8Plan`) for int8 inputs of
        `input_shape` (N, H, W, 3) in the current mode, thread count and CPU path: made on first
        use, a few shapes kept. `plan.run(xq, threads)` runs it (what `run` calls)."""
        key = (tuple(input_shape), self.integer_only, vnni.vnni_enabled(), vnni.pairs_enabled(),
               config.get_num_threads(), config.PARALLEL_MIN_MACS)
        plans = self.__dict__.setdefault("_plans", {})
        if key not in plans:
            if len(plans) >= 4:
                plans.clear()       # a few shapes at a time: each plan holds an arena
            plans[key] = Int8Plan(self, input_shape, not self.integer_only)
        return plans[key]

    def dequantize(self, q, name=None):
        scale, zero_point = self.tensors[name or self.output]
        return (np.float32(scale) * (q.astype(np.float32) - np.float32(zero_point))).astype(np.float32)

    def forward(self, x):
        return self.dequantize(self.run(self.quantize_input(x)))

    __call__ = forward

    def eval(self):
        return self

    def train(self, mode=True):
        if mode:
            raise ValueError("a quantized model cannot be trained; fine-tune the float model and quantize again")
        return self

    # -- size and cost -------------------------------------------------------------------------
    def num_parameters(self):
        """Weights and biases (the int8/int32 values a float model's parameters became)."""
        return int(sum(op.weight.size + op.bias.size for op in self.ops if op.kind == "conv"))

    def weight_bytes(self):
        """Bytes of int8 weights and int32 biases, multipliers and shifts (tables included)."""
        return int(sum(a.nbytes for op in self.ops for a in op.arrays().values() if a.dtype != np.float32))

    def macs(self, input_shape=(1, 224, 224, 3)):
        """Multiply-accumulates of one forward pass of `input_shape` (convolutions and FC layers)."""
        shapes = {"input": tuple(input_shape)}
        total = 0
        for op in self.ops:
            x_shape = shapes[op.inputs[0]]
            total += op.macs(x_shape)
            shapes[op.output] = op.output_shape(x_shape)
        return total

    def save(self, path):
        """Write the model to `path` (.npz, atomically; see the module docstring). Returns path."""
        return atomic_savez(path, self.to_arrays())

    def to_arrays(self):
        """The `{key: array}` an int8 checkpoint holds (see the module docstring)."""
        ops, pieces = [], {}
        for op in self.ops:
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
        graph = dict(output=self.output, tensors={k: [s, z] for k, (s, z) in self.tensors.items()},
                     ops=ops, info=self.info)
        arrays = {
            "__format__": np.array(FORMAT),
            "__version__": np.array(VERSION, dtype=np.int64),
            "__config__": json_array(self.config),
            "__graph__": json_array(graph),
        }
        for name, chunks in pieces.items():
            arrays[name] = np.concatenate(chunks)
        return arrays

    @classmethod
    def from_arrays(cls, arrays, path):
        """The model an int8 checkpoint's arrays (`read_arrays(path)`) describe, or a ValueError
        naming the file and what is wrong."""
        fmt = str(arrays["__format__"]) if "__format__" in arrays else None
        if fmt == FLOAT_FORMAT:
            raise ValueError(f"{path} is a float npmobilenet checkpoint, not an int8 quantized one; load it with "
                             "npmobilenet.load, or quantize it first with `npmobilenet compress quantize`")
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
            qmodel = cls(config, tensors, ops, graph["output"], graph.get("info"))
            qmodel._check_consistent()
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"quantized checkpoint {path} is inconsistent: {exc}") from exc
        return qmodel

    def _check_consistent(self):
        """Every op reads tensors that exist, and its arrays have the dtypes the kernels take."""
        known = {"input"}
        for op in self.ops:
            missing = [t for t in op.inputs if t not in known]
            if missing:
                raise ValueError(f"op {op.name} reads undefined tensors {missing}")
            known.add(op.output)
            if op.kind == "conv":
                expected = dict(weight=np.int8, bias=np.int32, multiplier=np.int32, shift=np.int32)
                for name, dtype in expected.items():
                    if getattr(op, name).dtype != dtype:
                        raise ValueError(f"op {op.name}: {name} must be {np.dtype(dtype).name}, got {getattr(op, name).dtype}")
                cout = op.weight.shape[-1]
                if any(getattr(op, n).shape != (cout,) for n in ("bias", "multiplier", "shift")):
                    raise ValueError(f"op {op.name}: bias, multiplier and shift must have shape ({cout},)")
            if op.kind == "lookup" and (op.table.dtype != np.int8 or op.table.shape != (256,)):
                raise ValueError(f"op {op.name}: table must be int8 of shape (256,)")
        missing = sorted(known - set(self.tensors))
        if missing:
            raise ValueError(f"tensors without quantization parameters: {missing}")
        if self.output not in known:
            raise ValueError(f"output tensor {self.output!r} is never computed")

    def __repr__(self):
        kind = "per-channel" if self.info.get("per_channel", True) else "per-tensor"
        return (f"QuantizedModel({self.config.get('arch')}, width={self.config.get('width')}, "
                f"num_classes={self.num_classes}, int8 {kind}, {len(self.ops)} ops)")


def read_format(path):
    """The `__format__` of an npz file ("npmobilenet.quantized", "npmobilenet.checkpoint", ...) or None."""
    arrays = read_arrays(path)
    return str(arrays["__format__"]) if "__format__" in arrays else None


def is_quantized(path):
    """True if `path` is an int8 checkpoint (for commands that accept either kind)."""
    try:
        return read_format(path) == FORMAT
    except ValueError:
        return False


def load_quantized(path):
    """The `QuantizedModel` saved in `path`, or a ValueError naming the file and the problem."""
    path = os.fspath(path)
    return QuantizedModel.from_arrays(read_arrays(path), path)   # FileNotFoundError / ValueError for bad files


def save_quantized(qmodel, path):
    """Write `qmodel` to `path` atomically (`qmodel.save`). Returns path."""
    return qmodel.save(path)


def quantized_arrays(qmodel):
    """The `{key: array}` the checkpoint of `qmodel` holds (`qmodel.to_arrays()`)."""
    return qmodel.to_arrays()
