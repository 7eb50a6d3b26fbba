"""An int8 model out to ONNX in QDQ form: `export_onnx(quantized_model, path)`.

QDQ ("quantize-dequantize") is how ONNX writes a quantized network with standard operators, and
how ONNX Runtime's own static quantization writes it: every int8 tensor t of our model, with its
scale s_t and zero point z_t, becomes

    DequantizeLinear(QuantizeLinear(t_float, s_t, z_t), s_t, z_t)

(the float value the int8 holds), and every layer computes on such values with its weights stored
as int8 and dequantized by DequantizeLinear (per output channel, axis 0; biases int32 at scale
s_x * s_w[c]). A runtime may execute the float graph as written, or fuse each
DequantizeLinear -> op -> QuantizeLinear into an integer kernel (ONNX Runtime does: QLinearConv,
QGemm). The mapping, op by op (`npmobilenet.compression.quantize`):

    QConv standard/depthwise/pointwise   Conv (group = C for depthwise), then Relu / Clip(0, 6)
    QConv linear                         Gemm (transB: our (Cin, Cout) weight stored (Cout, Cin))
    QLookup hardswish / hardsigmoid      HardSwish / HardSigmoid(1/6, 1/2)  (our 256-entry table is
                                         this function between the dequantize and the quantize)
    QMean                                GlobalAveragePool, Flatten
    QChannelScale (SE)                   Unsqueeze the gate to (N, C, 1, 1), Mul
    QAdd                                 Add

Results match our integer pipeline up to the rounding of the requantization: ONNX Runtime
multiplies by the float s_x s_w / s_y, we by its 31-bit fixed-point form, so a few int8 outputs
can differ by one step (tested: logits within a few steps, the same top-1 on nearly all images).
"""
import numpy as np


def build_qdq_onnx(qmodel, graph, x, helper):
    """Add `qmodel`'s ops to `graph` (an onnx_export._GraphBuilder) reading the float NCHW image
    `x`; returns the name of the float logits (dequantized)."""
    from npmobilenet.io.keymaps import to_torch

    params = {}

    def scale_zero(name):
        if name not in params:
            s, z = qmodel.tensors[name]
            params[name] = (graph.constant(f"{name}.scale", np.array(s, np.float32)),
                            graph.constant(f"{name}.zero_point", np.array(z, np.int8)))
        return params[name]

    def qdq(value, name):
        s, z = scale_zero(name)
        q = graph.add("QuantizeLinear", [value, s, z], f"{name}.q")
        return graph.add("DequantizeLinear", [q, s, z], f"{name}.dq")

    def dequantized_constant(name, array, scale, dtype):
        # per output channel (axis 0) int8 weights / int32 biases, zero point 0
        q = graph.constant(f"{name}.quantized", np.ascontiguousarray(array.astype(dtype)))
        s = graph.constant(f"{name}.scale", np.asarray(scale, np.float32))
        z = graph.constant(f"{name}.zero_point", np.zeros(np.shape(scale), dtype))
        return graph.add("DequantizeLinear", [q, s, z], f"{name}.dq", axis=0)

    values = {"input": qdq(x, "input")}
    for op in qmodel.ops:
        xs = [values[name] for name in op.inputs]
        if op.kind == "conv":
            s_x = qmodel.tensors[op.inputs[0]][0]
            w_scale = op.weight_scale.astype(np.float64)
            bias = dequantized_constant(f"{op.name}.bias", op.bias, (s_x * w_scale).astype(np.float32), np.int32)
            if op.variant == "linear":
                w = dequantized_constant(f"{op.name}.weight", op.weight.T, op.weight_scale, np.int8)
                y = graph.add("Gemm", [xs[0], w, bias], f"{op.name}.gemm", transB=1)
            else:
                kind = {"standard": "conv", "depthwise": "depthwise", "pointwise": "pointwise"}[op.variant]
                w = dequantized_constant(f"{op.name}.weight", to_torch(kind, op.weight), op.weight_scale, np.int8)
                if op.variant == "pointwise":
                    attributes = dict(kernel_shape=[1, 1])
                else:
                    attributes = dict(kernel_shape=list(op.weight.shape[:2]), strides=list(op.stride),
                                      dilations=list(op.dilation),
                                      group=op.out_channels if op.variant == "depthwise" else 1)
                    if op.padding == "same":            # TensorFlow's: ONNX's SAME_UPPER
                        attributes["auto_pad"] = "SAME_UPPER"
                    else:
                        top, bottom, left, right = op.padding
                        attributes["pads"] = [top, left, bottom, right]
                y = graph.add("Conv", [xs[0], w, bias], f"{op.name}.conv", **attributes)
            if op.activation == "relu":
                y = graph.add("Relu", [y], f"{op.name}.relu")
            elif op.activation == "relu6":
                low = graph.constant(f"{op.name}.min", np.array(0.0, np.float32))
                high = graph.constant(f"{op.name}.max", np.array(6.0, np.float32))
                y = graph.add("Clip", [y, low, high], f"{op.name}.relu6")
            elif op.activation is not None:
                raise TypeError(f"{op.name}: cannot export activation {op.activation!r} in QDQ form")
        elif op.kind == "lookup":
            if op.function == "hardswish":
                y = graph.add("HardSwish", [xs[0]], f"{op.name}.hardswish")
            elif op.function == "hardsigmoid":
                y = graph.add("HardSigmoid", [xs[0]], f"{op.name}.hardsigmoid", alpha=1.0 / 6.0, beta=0.5)
            else:
                raise TypeError(f"{op.name}: cannot export lookup {op.function!r} in QDQ form")
        elif op.kind == "mean":
            y = graph.add("Flatten", [graph.add("GlobalAveragePool", [xs[0]], f"{op.name}.gap")], f"{op.name}.flatten",
                          axis=1)
        elif op.kind == "channel_scale":
            gate = graph.add("Unsqueeze", [xs[1], graph.constant(f"{op.name}.hw", np.array([2, 3], np.int64))],
                             f"{op.name}.gate")
            y = graph.add("Mul", [xs[0], gate], f"{op.name}.scale")
        elif op.kind == "add":
            y = graph.add("Add", xs, f"{op.name}.add")
        else:
            raise TypeError(f"cannot export int8 op {op.kind!r} ({op.name}) in QDQ form")
        values[op.output] = qdq(y, op.output)
    return values[qmodel.output]
