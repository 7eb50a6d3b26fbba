"""ONNX out: `export_onnx(model, path)` and `npmobilenet export-onnx CHECKPOINT OUT.onnx [--batch dynamic|N]`.

The graph uses only standard operators (default opset 17), one per concept of the papers:

    Conv                  standard, pointwise (1x1) and depthwise (`group` = channels) convolutions,
                          with batch norm folded into weight and bias (eval-mode statistics):
                          w' = w * gamma / sqrt(var + eps),  b' = beta - mean * gamma / sqrt(var + eps)
                          (or kept as BatchNormalization with `fold_batchnorm=False`)
    Relu, Clip(0, 6), HardSwish, HardSigmoid(alpha=1/6, beta=1/2)      the activations (V3 paper, sec. 5.2)
    GlobalAveragePool -> Conv 1x1 -> Relu -> Conv 1x1 -> HardSigmoid -> Mul   squeeze-and-excitation
    Add                   the inverted residual's shortcut
    GlobalAveragePool, Flatten, Gemm   the classifier (dropout is the identity at inference)

Input layout: the graph takes NCHW float32 images, `input` of shape (N, 3, H, W), the convention
of ONNX vision models (torchvision's exports, ONNX Runtime's samples), so it drops into existing
pipelines; `input_layout="nhwc"` instead prepends a Transpose and takes our NHWC layout. N is
symbolic unless `batch` fixes it; H and W are symbolic (any size >= 32 works). Output: `logits`
(N, num_classes). The model's config and the input layout are stored in the graph's metadata.
"""
import json
import os

import numpy as np

from npmobilenet.extras import require
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


def _conv_weight_oihw(conv):
    """Our conv weight in ONNX's (Cout, Cin / group, KH, KW), with the node's attributes."""
    from npmobilenet.io.keymaps import to_torch
    from npmobilenet.layers import Conv2d, DepthwiseConv2d, PointwiseConv2d

    w = conv.weight.data
    if isinstance(conv, PointwiseConv2d):
        return to_torch("pointwise", w), dict(kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], group=1)
    if isinstance(conv, (Conv2d, DepthwiseConv2d)):
        depthwise = isinstance(conv, DepthwiseConv2d)
        attributes = dict(kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
                          dilations=list(conv.dilation), group=conv.in_channels if depthwise else 1)
        if conv.same:
            # TensorFlow's 'same' (the odd pixel after) is ONNX's SAME_UPPER, resolved by the
            # runtime for each input size, as our layer does
            attributes["auto_pad"] = "SAME_UPPER"
        else:
            top, bottom, left, right = conv.padding
            attributes["pads"] = [top, left, bottom, right]
        return to_torch("depthwise" if depthwise else "conv", w), attributes
    raise TypeError(f"cannot export a {type(conv).__name__} convolution")


class _Exporter:
    def __init__(self, graph, fold_batchnorm):
        self.g = graph
        self.fold_batchnorm = fold_batchnorm

    def layer(self, layer, x, name):
        from npmobilenet import layers as L
        from npmobilenet.models import MobileNet

        if isinstance(layer, (MobileNet, L.Sequential)):
            for child_name, child in layer.children():
                x = self.layer(child, x, f"{name}.{child_name}" if name else child_name)
            return x
        if isinstance(layer, L.ConvBNAct):
            return self.conv_bn_act(layer, x, name)
        if isinstance(layer, L.DepthwiseSeparable):
            x = self.conv_bn_act(layer.conv_dw, x, f"{name}.conv_dw")
            return self.conv_bn_act(layer.conv_pw, x, f"{name}.conv_pw")
        if isinstance(layer, L.InvertedResidual):
            y = x
            for part in ("conv_pw", "conv_dw", "se", "conv_pwl"):
                child = getattr(layer, part)
                if child is not None:
                    y = self.layer(child, y, f"{name}.{part}")
            # V2 paper, Fig. 3b: the shortcut joins the bottlenecks
            return self.g.add("Add", [x, y], f"{name}.add") if layer.use_residual else y
        if isinstance(layer, L.SqueezeExcite):
            return self.squeeze_excite(layer, x, name)
        if isinstance(layer, L.GlobalAvgPool):
            pooled = self.g.add("GlobalAveragePool", [x], f"{name}.gap")
            return self.g.add("Flatten", [pooled], f"{name}.flatten", axis=1)
        if isinstance(layer, L.Linear):
            inputs = [x, self.g.constant(f"{name}.weight", layer.weight.data)]  # (in, out): Gemm's B as is
            if layer.bias is not None:
                inputs.append(self.g.constant(f"{name}.bias", layer.bias.data))
            return self.g.add("Gemm", inputs, f"{name}.gemm")
        if isinstance(layer, L.Dropout):
            return x  # the identity at inference
        return self.activation(layer, x, name)

    def activation(self, layer, x, name):
        from npmobilenet import layers as L

        if isinstance(layer, L.ReLU):
            return self.g.add("Relu", [x], f"{name}.relu")
        if isinstance(layer, L.ReLU6):
            low = self.g.constant(f"{name}.min", np.array(0.0, np.float32))
            high = self.g.constant(f"{name}.max", np.array(6.0, np.float32))
            return self.g.add("Clip", [x, low, high], f"{name}.relu6")
        if isinstance(layer, L.HardSwish):
            return self.g.add("HardSwish", [x], f"{name}.hardswish")
        if isinstance(layer, L.HardSigmoid):
            # relu6(x + 3) / 6 = max(0, min(1, x / 6 + 1 / 2))
            return self.g.add("HardSigmoid", [x], f"{name}.hardsigmoid", alpha=1.0 / 6.0, beta=0.5)
        raise TypeError(f"cannot export layer {name} of type {type(layer).__name__} to ONNX")

    def conv_bn_act(self, block, x, name):
        conv, bn = block.conv, block.bn
        weight, attributes = _conv_weight_oihw(conv)
        weight = weight.astype(np.float64)
        bias = conv.bias.data.astype(np.float64) if conv.bias is not None else np.zeros(weight.shape[0])
        mean, var = bn.running_mean.astype(np.float64), bn.running_var.astype(np.float64)
        gamma, beta = bn.gamma.data.astype(np.float64), bn.beta.data.astype(np.float64)
        if self.fold_batchnorm:
            scale = gamma / np.sqrt(var + bn.eps)
            weight = weight * scale[:, None, None, None]
            bias = beta + (bias - mean) * scale
            inputs = [x, self.g.constant(f"{name}.conv.weight", weight.astype(np.float32)),
                      self.g.constant(f"{name}.conv.bias", bias.astype(np.float32))]
            y = self.g.add("Conv", inputs, f"{name}.conv", **attributes)
        else:
            inputs = [x, self.g.constant(f"{name}.conv.weight", weight.astype(np.float32))]
            if conv.bias is not None:
                inputs.append(self.g.constant(f"{name}.conv.bias", bias.astype(np.float32)))
            y = self.g.add("Conv", inputs, f"{name}.conv", **attributes)
            y = self.g.add("BatchNormalization", [
                y, self.g.constant(f"{name}.bn.gamma", gamma.astype(np.float32)),
                self.g.constant(f"{name}.bn.beta", beta.astype(np.float32)),
                self.g.constant(f"{name}.bn.running_mean", mean.astype(np.float32)),
                self.g.constant(f"{name}.bn.running_var", var.astype(np.float32)),
            ], f"{name}.bn", epsilon=float(bn.eps))
        return self.activation(block.act, y, name) if block.act is not None else y

    def squeeze_excite(self, se, x, name):
        # SE on (N, C, H, W): pool to (N, C, 1, 1), two 1x1 convs (our Linear layers), gate, rescale
        from npmobilenet.io.keymaps import to_torch

        s = self.g.add("GlobalAveragePool", [x], f"{name}.gap")
        for part, act in (("reduce", "Relu"), ("expand", None)):
            linear = getattr(se, part)
            s = self.g.add("Conv", [s, self.g.constant(f"{name}.{part}.weight", to_torch("pointwise", linear.weight.data)),
                                    self.g.constant(f"{name}.{part}.bias", linear.bias.data)],
                           f"{name}.{part}", kernel_shape=[1, 1])
            if act:
                s = self.g.add(act, [s], f"{name}.relu")
        s = self.g.add("HardSigmoid", [s], f"{name}.gate", alpha=1.0 / 6.0, beta=0.5)
        return self.g.add("Mul", [x, s], f"{name}.scale")


def build_onnx(model, batch=None, opset=DEFAULT_OPSET, input_layout="nchw", fold_batchnorm=True):
    """The ONNX ModelProto of `model` (eval-mode semantics: running statistics, no dropout)."""
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
    if not isinstance(config, dict) or "arch" not in config:
        raise TypeError(f"model must be an npmobilenet model with a .config, got {type(model).__name__}")

    from npmobilenet.compression.quantize import QuantizedModel

    graph = _GraphBuilder(onnx)
    if input_layout == "nchw":
        input_shape, x = [batch_dim, 3, "H", "W"], "input"
    else:
        input_shape = [batch_dim, "H", "W", 3]
        x = graph.add("Transpose", ["input"], "input_nchw", perm=[0, 3, 1, 2])
    graph._names.add("input")
    if isinstance(model, QuantizedModel):
        from npmobilenet.io.onnx_qdq import build_qdq_onnx

        logits = build_qdq_onnx(model, graph, x, helper)
    else:
        logits = _Exporter(graph, fold_batchnorm).layer(model, x, "")
    output = graph.add("Identity", [logits], "logits")
    proto_graph = helper.make_graph(
        graph.nodes, f"npmobilenet_{config['arch']}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch_dim, config["num_classes"]])],
        graph.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(proto_graph, opset_imports=opsets, producer_name="npmobilenet",
                              doc_string=f"{config['arch']} exported by npmobilenet; input {input_layout.upper()} float32")
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


def run_onnx(path, x):
    """Run an exported graph with ONNX Runtime on `x` (its input layout): the logits."""
    ort = require("onnxruntime", "running ONNX graphs")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]


def _batch_argument(text):
    if text == "dynamic":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--batch must be 'dynamic' or a positive int, got {text!r}") from None
    if value < 1:
        raise ValueError(f"--batch must be 'dynamic' or a positive int, got {text!r}")
    return value


def add_arguments(parser):
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="npmobilenet .npz (float or int8: int8 is written in QDQ form), or torchvision/timm weights")
    parser.add_argument("out", metavar="OUT.onnx", help="ONNX file to write")
    parser.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}, >= 14)")
    parser.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw",
                        help="input layout of the graph (default nchw, as ONNX vision models take)")
    parser.add_argument("--no-fold-bn", action="store_true", help="keep BatchNormalization nodes instead of folding")
    parser.add_argument("--no-verify", action="store_true", help="skip checking the graph against npmobilenet in ONNX Runtime")


def run(args):
    from npmobilenet.compression import qformat
    from npmobilenet.extras import available
    from npmobilenet.io.weights import from_weights

    batch = _batch_argument(args.batch)
    quantized = qformat.is_quantized(args.checkpoint)
    model = qformat.load_quantized(args.checkpoint) if quantized else from_weights(args.checkpoint)
    export_onnx(model, args.out, batch, args.opset, args.layout, not args.no_fold_bn)
    config = model.config
    print(f"wrote {args.out}: {config['arch']} width {config['width']:g}, {config['num_classes']} classes, "
          + ("int8 in QDQ form, " if quantized else "")
          + f"opset {args.opset}, input {'N' if batch is None else batch}x"
          + ("3xHxW (NCHW)" if args.layout == "nchw" else "HxWx3 (NHWC)"))
    if not args.no_verify and available("onnxruntime"):
        n = batch or 2
        rng = np.random.default_rng(0)
        if quantized:   # images in the calibrated range (the input's int8 grid)
            scale, zero = model.tensors["input"]
            x = (scale * (rng.integers(-128, 128, (n, 224, 224, 3)) - zero)).astype(np.float32)
        else:
            x = rng.standard_normal((n, 224, 224, 3)).astype(np.float32)
        ours = model(x)
        theirs = run_onnx(args.out, x.transpose(0, 3, 1, 2) if args.layout == "nchw" else x)
        diff = float(np.abs(ours - theirs).max())
        note = f" = {diff / model.tensors[model.output][0]:.0f} int8 output steps" if quantized else ""
        print(f"verified in ONNX Runtime: max |logit difference| {diff:.2e}{note} (logit scale {float(np.abs(ours).max()):.2e})")
    return 0
