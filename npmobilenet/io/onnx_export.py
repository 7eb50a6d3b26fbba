"""ONNX out: `export_onnx(model, path)` (the `npmobilenet export-onnx` command).

The model's lowered graph (`npmobilenet.graph`), op by op, in standard operators (default opset
17), one per concept of the papers:

    Conv                  standard, pointwise (1x1) and depthwise (`group` = channels) convolutions,
                          with batch norm folded into weight and bias (eval-mode statistics):
                          w' = w * gamma / sqrt(var + eps),  b' = beta - mean * gamma / sqrt(var + eps)
                          (or kept as BatchNormalization with `fold_batchnorm=False`)
    Relu, Clip(0, 6), HardSwish, HardSigmoid(alpha=1/6, beta=1/2)      the activations (V3 paper, sec. 5.2)
    GlobalAveragePool -> Conv 1x1 -> Relu -> Conv 1x1 -> HardSigmoid -> Mul   squeeze-and-excitation
                          (its vectors stay (N, C, 1, 1), as the graph's `gate_ops` say)
    Add                   the inverted residual's shortcut
    GlobalAveragePool, Flatten, Gemm   the classifier (dropout is the identity at inference)
    Sigmoid, Resize       LR-ASPP's gate and its bilinear upsampling (mode linear, half_pixel:
                          PyTorch's align_corners=False), to the size of another tensor (Shape, Concat)

Input layout: the graph takes NCHW float32 images, `input` of shape (N, 3, H, W), the convention
of ONNX vision models (torchvision's exports, ONNX Runtime's samples), so it drops into existing
pipelines; `input_layout="nhwc"` instead prepends a Transpose and takes our NHWC layout. N is
symbolic unless `batch` fixes it; H and W are symbolic (any size >= 32 works). Output: `logits`
(N, num_classes), or (N, num_classes, H, W) for LR-ASPP; SSDLite's graph ends at its twelve head
maps (NCHW, named as the lowered graph names them: classification_head.{i}.1, then
regression_head.{i}.1): the reshape to (N, anchors, K), the concatenation (`SSDLite.head_outputs`
on the maps transposed to NHWC), box decoding and NMS (`postprocess_detections`) stay outside the
graph. The model's config and the input layout are stored in the graph's metadata.
"""
import json
import os

import numpy as np

from npmobilenet.extras import require
from npmobilenet.graph import Graph, fold_batch_norm, lower
from npmobilenet.io.files import atomic_write

DEFAULT_OPSET = 17  # HardSwish needs 14; 17 is what current exporters emit by default


class _GraphBuilder:
    """Accumulates nodes and initializers; each `add` returns the name of the node's output."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes, self.initializers = [], []
        self._names = set()

    def _unique(self, name):
        base, k = name, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def constant(self, name, array):
        name = self._unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def add(self, op, inputs, name, **attributes):
        output = self._unique(name)
        self.nodes.append(self.helper.make_node(op, list(inputs), [output], name=output, **attributes))
        return output


ONNX_LAYOUTS = {"standard": "conv", "depthwise": "depthwise", "pointwise": "pointwise"}  # keymaps' layout kinds


def _conv_attributes(op):
    """ONNX Conv attributes of a graph conv op (group = channels for a depthwise one)."""
    attributes = dict(kernel_shape=list(op.kernel_size), strides=list(op.stride), dilations=list(op.dilation),
                      group=op.groups)
    if op.padding == "same":
        # TensorFlow's 'same' (the odd pixel after) is ONNX's SAME_UPPER, resolved by the runtime for
        # each input size, as our layer does
        attributes["auto_pad"] = "SAME_UPPER"
    else:
        top, bottom, left, right = op.padding
        attributes["pads"] = [top, left, bottom, right]
    return attributes


def _activation(g, function, x, name):
    if function == "relu":
        return g.add("Relu", [x], f"{name}.relu")
    if function == "relu6":
        low = g.constant(f"{name}.min", np.array(0.0, np.float32))
        high = g.constant(f"{name}.max", np.array(6.0, np.float32))
        return g.add("Clip", [x, low, high], f"{name}.relu6")
    if function == "hardswish":
        return g.add("HardSwish", [x], f"{name}.hardswish")
    if function == "hardsigmoid":
        # relu6(x + 3) / 6 = max(0, min(1, x / 6 + 1 / 2))
        return g.add("HardSigmoid", [x], f"{name}.hardsigmoid", alpha=1.0 / 6.0, beta=0.5)
    if function == "sigmoid":
        return g.add("Sigmoid", [x], f"{name}.sigmoid")
    raise TypeError(f"cannot export activation {function!r} ({name}) to ONNX")


def export_graph(g, graph, x):
    """Add the ops of a lowered `graph` (npmobilenet.graph) to `g` (a _GraphBuilder), reading the
    NCHW tensor `x`; returns the names of its outputs. One ONNX node (or two) per op kind. The
    vectors of a squeeze-and-excitation gate stay (N, C, 1, 1): its fully connected layers are 1x1
    Conv nodes and the gate multiplies by broadcasting; elsewhere pooling is flattened to (N, C)
    for Gemm."""
    from npmobilenet.io.keymaps import to_torch

    gates = graph.gate_ops()
    values = {graph.inputs[0]: x}
    for op in graph.ops:
        xs = [values[t] for t in op.inputs]
        name = op.name
        if op.kind == "conv":
            inputs = [xs[0], g.constant(f"{name}.weight", to_torch(ONNX_LAYOUTS[op.variant], op.weight).astype(np.float32))]
            if op.bias is not None:
                inputs.append(g.constant(f"{name}.bias", np.asarray(op.bias, np.float32)))
            y = g.add("Conv", inputs, f"{name}.conv", **_conv_attributes(op))
        elif op.kind == "linear":
            if name in gates:       # a fully connected layer on a 1x1 map
                inputs = [xs[0], g.constant(f"{name}.weight", to_torch("pointwise", op.weight).astype(np.float32))]
                kind, attributes = "Conv", dict(kernel_shape=[1, 1])
            else:                   # (in, out): Gemm's B as it is
                inputs, kind, attributes = [xs[0], g.constant(f"{name}.weight", np.asarray(op.weight, np.float32))], "Gemm", {}
            if op.bias is not None:
                inputs.append(g.constant(f"{name}.bias", np.asarray(op.bias, np.float32)))
            y = g.add(kind, inputs, f"{name}.{kind.lower()}", **attributes)
        elif op.kind == "batch_norm":
            y = g.add("BatchNormalization", [
                xs[0], g.constant(f"{name}.gamma", np.asarray(op.gamma, np.float32)),
                g.constant(f"{name}.beta", np.asarray(op.beta, np.float32)),
                g.constant(f"{name}.running_mean", np.asarray(op.mean, np.float32)),
                g.constant(f"{name}.running_var", np.asarray(op.var, np.float32)),
            ], f"{name}.bn", epsilon=op.eps)
        elif op.kind == "activation":
            y = _activation(g, op.function, xs[0], name)
        elif op.kind == "global_avg_pool":
            y = g.add("GlobalAveragePool", xs, f"{name}.gap")
            if name not in gates:
                y = g.add("Flatten", [y], f"{name}.flatten", axis=1)
        elif op.kind == "channel_scale":
            y = g.add("Mul", xs, f"{name}.scale")
        elif op.kind == "add":
            y = g.add("Add", xs, f"{name}.add")
        elif op.kind == "resize":
            # sizes: (N, C) of x, (H, W) of the tensor whose size it takes, both from NCHW shapes
            sizes = g.add("Concat", [g.add("Shape", [xs[0]], f"{name}.batch_channels", start=0, end=2),
                                     g.add("Shape", [xs[1]], f"{name}.spatial", start=2, end=4)], f"{name}.sizes", axis=0)
            # PyTorch's align_corners=False reads (o + 0.5) H / Ho - 0.5 for every output length,
            # 1 included: ONNX's half_pixel (its pytorch_half_pixel reads 0 for a length of 1)
            y = g.add("Resize", [xs[0], "", "", sizes], f"{name}.resize", mode="linear",
                      coordinate_transformation_mode="half_pixel")
        else:
            raise TypeError(f"cannot export {op.kind} op {name} to ONNX")
        if getattr(op, "activation", None) is not None:
            y = _activation(g, op.activation, y, name)
        values[op.output] = y
    return [values[t] for t in graph.outputs]


PROBE_SHAPE = (1, 65, 71, 3)    # an odd input size: an output of this height and width follows the input's


def _output_signature(graph, batch_dim):
    """Names and dims of a lowered graph's outputs. One output is `logits`: (N, K) for a
    classifier, (N, K, H, W) for a segmentation model (H, W the input's when they follow it);
    several (SSDLite's twelve head maps) keep the graph's tensor names, maps NCHW with symbolic
    height and width."""
    shapes = graph.shapes(PROBE_SHAPE)
    names = ["logits"] if len(graph.outputs) == 1 else list(graph.outputs)
    dims = []
    for name, tensor in zip(names, graph.outputs):
        shape = shapes[tensor]
        if len(shape) == 4:
            spatial = ["H", "W"] if shape[1:3] == PROBE_SHAPE[1:3] else [f"{name}_height", f"{name}_width"]
            dims.append([batch_dim, shape[3]] + spatial)
        else:
            dims.append([batch_dim] + list(shape[1:]))
    return names, dims


def build_onnx(model, batch=None, opset=DEFAULT_OPSET, input_layout="nchw", fold_batchnorm=True):
    """The ONNX ModelProto of `model` (eval-mode semantics: running statistics, no dropout), an
    int8 `QuantizedModel`, or a lowered `npmobilenet.graph.Graph` (one output: `logits`; several:
    named as the graph's outputs; `_output_signature`)."""
    onnx = require("onnx", "ONNX export")
    helper, TensorProto = onnx.helper, onnx.TensorProto
    if batch in (None, "dynamic"):
        batch_dim = "N"
    elif isinstance(batch, (int, np.integer)) and not isinstance(batch, bool) and batch >= 1:
        batch_dim = int(batch)
    else:
        raise ValueError(f"batch must be None, 'dynamic' or a positive int, got {batch!r}")
    if input_layout not in ("nchw", "nhwc"):
        raise ValueError(f"input_layout must be 'nchw' or 'nhwc', got {input_layout!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset must be an int >= 14 (HardSwish), got {opset!r}")
    config = getattr(model, "config", None)
    if not isinstance(model, Graph) and (not isinstance(config, dict) or "arch" not in config):
        raise TypeError(f"model must be an npmobilenet model with a .config, got {type(model).__name__}")

    from npmobilenet.compression.qmodel import QuantizedModel

    graph = _GraphBuilder(onnx)
    if input_layout == "nchw":
        input_shape, x = [batch_dim, 3, "H", "W"], "input"
    else:
        input_shape = [batch_dim, "H", "W", 3]
        x = graph.add("Transpose", ["input"], "input_nchw", perm=[0, 3, 1, 2])
    graph._names.add("input")
    if isinstance(model, QuantizedModel):
        from npmobilenet.io.onnx_qdq import build_qdq_onnx

        results = [build_qdq_onnx(model, graph, x, helper)]
        names, dims = ["logits"], [[batch_dim, config["num_classes"]]]
    else:
        lowered = model if isinstance(model, Graph) else lower(model)
        results = export_graph(graph, fold_batch_norm(lowered) if fold_batchnorm else lowered, x)
        names, dims = _output_signature(lowered, batch_dim)
    outputs = [helper.make_tensor_value_info(graph.add("Identity", [value], name), TensorProto.FLOAT, shape)
               for value, name, shape in zip(results, names, dims)]
    arch = config.get("arch", "graph")
    proto_graph = helper.make_graph(
        graph.nodes, f"npmobilenet_{arch}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)], outputs, graph.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(proto_graph, opset_imports=opsets, producer_name="npmobilenet",
                              doc_string=f"{arch} exported by npmobilenet; input {input_layout.upper()} float32")
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(proto, {"npmobilenet_config": json.dumps(config, sort_keys=True),
                                   "input_layout": input_layout.upper()})
    return proto


def export_onnx(model, path, batch=None, opset=DEFAULT_OPSET, input_layout="nchw", fold_batchnorm=True):
    """Write `model` as an ONNX graph to `path` (atomically) and return `path`. An int8 model
    (`npmobilenet.quantize`) is written in QDQ form (see `onnx_qdq`).

    batch: None or "dynamic" (symbolic batch) or an int. The graph takes `input` (N, 3, H, W)
    float32 (or (N, H, W, 3) with input_layout="nhwc") and returns `logits` (N, num_classes); it
    passes `onnx.checker.check_model(full_check=True)` before it is written.
    """
    onnx = require("onnx", "ONNX export")
    proto = build_onnx(model, batch, opset, input_layout, fold_batchnorm)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    path = os.fspath(path)
    atomic_write(path, lambda f: f.write(data))
    return path


def run_onnx(path, x, fuse=True):
    """Run an exported graph with ONNX Runtime on `x` (its input layout); its outputs as our
    model returns them: a classifier's logits (N, K); LR-ASPP's logits NHWC (N, H, W, K);
    SSDLite's (cls_logits (N, A, K), bbox_regression (N, A, 4)), its twelve head maps reshaped
    and concatenated outside the graph (`ssdlite.concatenate_heads`); another graph's several
    outputs as a tuple, maps NHWC. `fuse=False`: ONNX Runtime's basic optimizations only, so an
    int8 QDQ graph runs as written, not fused into its integer kernels (which saturate on x86
    CPUs without VNNI: `compression.peer.saturating_int8_cpu`)."""
    ort = require("onnxruntime", "running ONNX graphs")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not fuse:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = [y.transpose(0, 2, 3, 1) if y.ndim == 4 else y
               for y in session.run(names, {"input": np.ascontiguousarray(x, dtype=np.float32)})]
    if len(outputs) == 1:
        return outputs[0]
    config = json.loads(session.get_modelmeta().custom_metadata_map.get("npmobilenet_config", "{}"))
    if config.get("arch") == "ssdlite320_mobilenet_v3_large":
        from npmobilenet.detection.ssdlite import concatenate_heads

        return concatenate_heads(outputs, config["num_classes"])
    return tuple(outputs)
