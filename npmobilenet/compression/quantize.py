"""Int8 post-training quantization with integer-only inference (Jacob et al., 2018; TFLite).

    qmodel = npmobilenet.quantize(model, calibration_images, per_channel=True, method="minmax")
    logits = qmodel(x)          # x: (N, H, W, 3) float -> logits (N, num_classes) float32

Three steps:

1. The model's inference graph (`npmobilenet.graph`): lowered, batch norm folded into the
   convolution before it (Jacob et al., section 3.2; `graph.fold_batch_norm`), ReLU and ReLU6
   fused into it (they become clamps).
2. Calibration (`calibrate.py`): the folded float graph runs on sample images (its NumPy
   reference, which gives every tensor); each tensor's range gives its int8 scale and zero point.
3. Quantization, op by op: weights int8 symmetric in [-127, 127], one scale per output channel
   (`per_channel=True`) or one per tensor; biases int32 with scale s_x * s_w[c]; each layer's
   real multiplier M = s_x s_w / s_y turned into an int32 fixed-point multiplier and a shift.

The quantized model (`qmodel.py`) then runs on integers only (`qkernels.py`): the input is
quantized and the logits dequantized, nothing else touches a float. Each graph op becomes one
int8 op (`qops.py`):

- conv, linear: QConv; ReLU / ReLU6 after it the clamp of the requantized output to the int8
  values of [0, inf) / [0, 6] (Jacob et al., section 2.4).
- activation (hard-swish, hard-sigmoid): a 256-entry int8 -> int8 lookup table, built once from
  the float function (an int8 tensor has only 256 values). A hard-sigmoid gate of
  squeeze-and-excitation has the fixed output scale 1/255 of [0, 1].
- global_avg_pool: its mean in integers (int32 sum, the 1/HW folded into a multiplier).
- channel_scale: the channel product requantized on its own (TFLite's quantized Mul).
- add: TFLite's quantized Add, each input rescaled to a common scale first.
"""
import numpy as np

from npmobilenet.compression import calibrate as cal
from npmobilenet.compression.qmodel import QuantizedModel
from npmobilenet.compression.qops import (
    INT8_MAX, INT8_MIN, QAdd, QChannelScale, QConv, QLookup, QMean, conv_multipliers, quantize_multiplier,
)
from npmobilenet.graph import inference_graph
from npmobilenet.graph.evaluate import ACTIVATIONS
from npmobilenet.ops.geometry import MIN_RESOLUTION

WEIGHT_MAX = 127  # symmetric weights use [-127, 127], so -w is representable whenever w is (TFLite)
GATE_SCALE, GATE_ZERO_POINT = 1.0 / 255.0, -128  # hard-sigmoid output: [0, 1] on the whole int8 range
MAX_ABS_INPUT = 64.0  # calibration images beyond this look like raw [0, 255] pixels
CLAMP_ACTIVATIONS = ("relu", "relu6")  # fused into the convolution as a clamp


def fold_model(model):
    """The eval-mode `model`'s float graph as quantization sees it: batch norm folded, ReLU and
    ReLU6 fused (`graph.inference_graph`). Call it on images for the folded float logits."""
    if getattr(model, "training", False):
        raise ValueError("the model is in training mode: call model.eval() before quantizing "
                         "(batch norm must use its running statistics to be folded)")
    return inference_graph(model, CLAMP_ACTIVATIONS)


def check_calibration_images(images, input_range=None):
    """`images` as float32 (N, H, W, 3), or a clear error (empty, wrong shape, dtype or range)."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"calibration_images must be a numpy array (N, H, W, 3), got {type(images).__name__}")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"calibration_images must be float (preprocessed as for the float model), got dtype "
                        f"{images.dtype}; e.g. scale uint8 pixels to [0, 1] first")
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"calibration_images must have shape (N, H, W, 3) in NHWC layout, got {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("calibration_images holds zero images: calibration needs at least one sample image "
                         "(a few hundred is typical)")
    if images.shape[1] < MIN_RESOLUTION or images.shape[2] < MIN_RESOLUTION:
        raise ValueError(f"calibration images must be at least {MIN_RESOLUTION}x{MIN_RESOLUTION}, got "
                         f"{images.shape[1]}x{images.shape[2]}")
    if not np.all(np.isfinite(images)):
        raise ValueError("calibration_images contains NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if input_range is None:
        if max(abs(lo), abs(hi)) > MAX_ABS_INPUT:
            raise ValueError(f"calibration images span [{lo:g}, {hi:g}]: that looks like raw pixel values; "
                             f"pass them preprocessed exactly as for the float model (e.g. scaled to [0, 1]), "
                             f"or give input_range=(lo, hi) if this is really the model's input range")
    else:
        rlo, rhi = (float(v) for v in input_range)
        if not rlo < rhi:
            raise ValueError(f"input_range must be (lo, hi) with lo < hi, got {input_range!r}")
        if lo < rlo or hi > rhi:
            raise ValueError(f"calibration images span [{lo:g}, {hi:g}], outside input_range [{rlo:g}, {rhi:g}]")
    if hi == lo:
        raise ValueError(f"calibration images are all the same value ({lo:g}): no range to calibrate")
    return np.ascontiguousarray(images, dtype=np.float32)


def quantize_weight(weight, per_channel=True):
    """(q int8, scale float32 (Cout,)): symmetric, q = round(w / s) in [-127, 127], s = max|w| / 127.

    Per channel: one scale per output channel (the weight's last axis). Per tensor: one scale,
    repeated per channel so the kernels take either.
    """
    cout = weight.shape[-1]
    flat = np.abs(weight.reshape(-1, cout)).astype(np.float64)
    max_abs = flat.max(axis=0) if per_channel else np.full(cout, flat.max())
    scale = np.where(max_abs > 0, max_abs / WEIGHT_MAX, 1.0)  # an all-zero channel: any scale is exact
    q = np.clip(np.round(weight / scale), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return q, scale.astype(np.float32)


def _lookup_table(function, input_qp, output_qp):
    """int8 -> int8 table of `function` between two quantizations (built in float, applied in int)."""
    (s_in, z_in), (s_out, z_out) = input_qp, output_qp
    real = s_in * (np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.float64) - z_in)
    return np.clip(np.round(ACTIVATIONS[function](real) / s_out) + z_out, INT8_MIN, INT8_MAX).astype(np.int8)


def _clamp(activation, scale, zero_point):
    """int8 bounds of a fused ReLU/ReLU6: the quantized values of 0 and 6."""
    if activation is None:
        return INT8_MIN, INT8_MAX
    lo = max(INT8_MIN, zero_point)
    hi = INT8_MAX if activation == "relu" else min(INT8_MAX, zero_point + int(round(6.0 / scale)))
    return lo, hi


def _bias(op):
    return op.bias if op.bias is not None else np.zeros(op.out_channels, np.float32)


def quantize_graph(graph, qparams, per_channel=True):
    """The integer ops of a folded float graph, given every tensor's (scale, zero_point)."""
    ops = []
    for op in graph.ops:
        if op.kind in ("conv", "linear"):
            (sx, _), (sy, zy) = qparams[op.inputs[0]], qparams[op.output]
            if op.activation not in (None, *CLAMP_ACTIVATIONS):
                raise TypeError(f"cannot quantize {op.name}: activation {op.activation!r} fused into a {op.kind}")
            wq, ws = quantize_weight(op.weight, per_channel)
            bias_scale = sx * ws.astype(np.float64)
            bias = np.clip(np.round(_bias(op) / bias_scale), -(2**31), 2**31 - 1).astype(np.int32)
            multiplier, shift = conv_multipliers(sx, ws, sy)
            lo, hi = _clamp(op.activation, sy, zy)
            geometry = dict(stride=op.stride, padding=op.padding, dilation=op.dilation) if op.kind == "conv" else {}
            ops.append(QConv(op.name, op.inputs, op.output, op.variant if op.kind == "conv" else "linear", wq, ws,
                             bias, multiplier, shift, lo, hi, activation=op.activation, **geometry))
        elif op.kind == "activation":
            table = _lookup_table(op.function, qparams[op.inputs[0]], qparams[op.output])
            ops.append(QLookup(op.name, op.inputs, op.output, table, op.function))
        elif op.kind == "global_avg_pool":
            ops.append(QMean(op.name, op.inputs, op.output, qparams[op.inputs[0]][0], qparams[op.output][0]))
        elif op.kind == "channel_scale":
            (sx, _), (sg, _), (sy, _) = qparams[op.inputs[0]], qparams[op.inputs[1]], qparams[op.output]
            ops.append(QChannelScale(op.name, op.inputs, op.output, quantize_multiplier(sx * sg / sy)))
        elif op.kind == "add":
            (sa, _), (sb, _), (sy, _) = qparams[op.inputs[0]], qparams[op.inputs[1]], qparams[op.output]
            ops.append(QAdd(op.name, op.inputs, op.output, QAdd.multipliers(sa, sb, sy)))
        else:
            raise TypeError(f"cannot quantize {op.kind} op {op.name}: the int8 kernels have no {op.kind!r}")
    return ops


def quantize(model, calibration_images, per_channel=True, method="minmax", percentile=99.99, batch_size=64,
             input_range=None):
    """Post-training int8 quantization of an eval-mode MobileNet: a `QuantizedModel`.

    model: a float MobileNet in eval mode (batch norm is folded with its running statistics).
    calibration_images: float (N, H, W, 3), preprocessed as for the float model; N >= 1 (a few
        hundred is typical; the first pass reads them all).
    per_channel: one weight scale per output channel (True) or one per tensor.
    method: how activation ranges are chosen, "minmax", "percentile" (with `percentile`) or
        "mse" (see `calibrate.py`). The input image always uses min/max (it is never clipped).
    input_range: optional (lo, hi) the images must lie in (instead of the raw-pixel check).
    """
    if not callable(getattr(model, "lower", None)) or not isinstance(getattr(model, "config", None), dict):
        raise TypeError(f"model must be an npmobilenet MobileNet, got {type(model).__name__}")
    if getattr(model, "training", False):
        raise ValueError("the model is in training mode: call model.eval() before quantizing "
                         "(batch norm must use its running statistics to be folded)")
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
    cal.check_method(method, percentile)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    images = check_calibration_images(calibration_images, input_range)

    graph = fold_model(model)
    tensors = list(graph.inputs) + [op.output for op in graph.ops]
    # The gate of squeeze-and-excitation is a hard-sigmoid: its range [0, 1] is known, not measured.
    gates = {op.output for op in graph.ops if op.kind == "activation" and op.function == "hardsigmoid"}
    ranges = cal.calibrate(graph.run, images, [t for t in tensors if t not in gates], method, percentile,
                           batch_size, minmax_tensors=graph.inputs)
    qparams = {name: cal.qparams_from_range(*r) for name, r in ranges.items()}
    qparams.update({g: (GATE_SCALE, GATE_ZERO_POINT) for g in gates})
    ops = quantize_graph(graph, qparams, per_channel)
    info = dict(per_channel=per_channel, method=method, percentile=float(percentile),
                calibration_images=int(images.shape[0]))
    return QuantizedModel(model.config, qparams, ops, graph.outputs[0], info)
