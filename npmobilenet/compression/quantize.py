"""Int8 post-training quantization with integer-only inference (Jacob et al., 2018; TFLite).

    qmodel = npmobilenet.quantize(model, calibration_images, per_channel=True, method="minmax")
    logits = qmodel(x)          # x: (N, H, W, 3) float -> logits (N, num_classes) float32

Three steps:

1. `fold_model`: the eval-mode model as a flat graph of float ops with batch norm folded into
   the convolution before it (Jacob et al., section 3.2): per output channel c,
       w'[..., c] = w[..., c] * gamma[c] / sqrt(var[c] + eps)
       b'[c]      = beta[c] - mean[c] * gamma[c] / sqrt(var[c] + eps)    (+ the conv's bias, scaled)
   Every conv kind keeps its output channel on the weight's last axis, so one broadcast folds them all.
2. Calibration (`calibrate.py`): the folded float graph runs on sample images; each tensor's range
   gives its int8 scale and zero point.
3. Quantization: weights int8 symmetric in [-127, 127], one scale per output channel
   (`per_channel=True`) or one per tensor; biases int32 with scale s_x * s_w[c]; each layer's
   real multiplier M = s_x s_w / s_y turned into an int32 fixed-point multiplier and a shift.

The quantized graph then runs on integers only (`qkernels.py`): the input is quantized and the
logits dequantized, nothing else touches a float. Activations are fused or tabulated:

- ReLU / ReLU6 after a convolution: the clamp of the requantized output to the int8 values of
  [0, inf) / [0, 6] (Jacob et al., section 2.4).
- hard-swish, hard-sigmoid: a 256-entry int8 -> int8 lookup table, built once from the float
  function (an int8 tensor has only 256 values).
- squeeze-and-excitation: its mean in integers (int32 sum, the 1/HW folded into a multiplier),
  its two FC layers as integer GEMMs (ReLU as a clamp), the hard-sigmoid gate as a table whose
  output has the fixed scale 1/255 of [0, 1], and the channel product requantized on its own.
- residual adds: TFLite's quantized Add, each input rescaled to a common scale first.
"""
import math

import numpy as np

from npmobilenet.compression import calibrate as cal
from npmobilenet.compression import qkernels
from npmobilenet.inference.blas import single_threaded_blas
from npmobilenet.ops.geometry import conv_geometry, tf_same_sides

INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127  # symmetric weights use [-127, 127], so -w is representable whenever w is (TFLite)
ADD_LEFT_SHIFT = 20  # TFLite's quantized Add: 20 bits of headroom before summing
GATE_SCALE, GATE_ZERO_POINT = 1.0 / 255.0, -128  # hard-sigmoid output: [0, 1] on the whole int8 range
# Layers of at least this many MACs run on the exact float32 paths of qkernels; smaller ones on the
# integer loops, whose fewer passes win there. Measured (1 thread, ms per batch-1 call at thresholds
# 0 / 1e5 / 3e5 / 1e6 / never): MobileNetV2 224: 17.9 / 17.7 / 17.6 / 17.4 / 23.8; V3-Small 224:
# 7.0 / 6.6 / 6.5 / 6.4 / 7.7; the digits V2 0.35 at 32x32: 1.52 / 1.37 / 1.33 / 1.33 / 1.31.
EXACT_MIN_MACS = 1_000_000
MAX_ABS_INPUT = 64.0  # calibration images beyond this look like raw [0, 255] pixels


# -- fixed-point multipliers -----------------------------------------------------------------------
def quantize_multiplier(real):
    """A real multiplier M >= 0 as (M0, shift), M ~= M0 * 2^(shift - 31), M0 int32 in [2^30, 2^31).

    M = q * 2^e with q in [0.5, 1) (frexp), M0 = round(q * 2^31), shift = e. Multipliers below
    2^-31 of an int32 accumulator round to nothing and become (0, 0), as in TFLite.
    """
    real = float(real)
    if not np.isfinite(real) or real < 0:
        raise ValueError(f"a requantization multiplier must be finite and >= 0, got {real}")
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    m0 = int(round(q * (1 << 31)))
    if m0 == 1 << 31:  # q rounded up to 1.0
        m0 //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        raise ValueError(f"requantization multiplier {real} is too large for int32 fixed point")
    return m0, shift


def quantize_multipliers(reals):
    pairs = [quantize_multiplier(r) for r in np.ravel(reals)]
    return np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32)


# -- float functions of the folded graph -------------------------------------------------------
def _hardsigmoid(x):
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0


FLOAT_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "hardsigmoid": _hardsigmoid,
    "hardswish": lambda x: x * _hardsigmoid(x),
}
CLAMP_ACTIVATIONS = ("relu", "relu6")  # fused into the convolution as a clamp
TABLE_ACTIVATIONS = ("hardswish", "hardsigmoid")  # a 256-entry table after the convolution


def _float_conv(variant, x, w, stride, padding, dilation):
    """NumPy convolution of the folded graph (calibration only): a sum over kernel taps."""
    if variant == "linear":
        return x @ w
    if variant == "pointwise":
        n, h, wd, cin = x.shape
        return (x.reshape(-1, cin) @ w).reshape(n, h, wd, w.shape[1])
    kh, kw = w.shape[:2]
    ho, wo, (sh, sw), (pt, pb, pl, pr), (dh, dw) = _conv_geometry(x.shape, kh, kw, stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    y = None
    for i in range(kh):
        for j in range(kw):
            window = xp[:, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw, :]
            if variant == "depthwise":
                term = window * w[i, j]
            else:
                term = (window.reshape(-1, window.shape[3]) @ w[i, j]).reshape(*window.shape[:3], w.shape[3])
            y = term if y is None else y + term
    return y


def resolve_padding(padding, x_shape, kh, kw, stride, dilation):
    """(top, bottom, left, right) of a convolution for input `x_shape`: the stored sides, or
    TensorFlow's 'same' worked out for this input size (timm's tf_* models)."""
    if isinstance(padding, str) and padding == "same":
        return tf_same_sides(x_shape[1], x_shape[2], (kh, kw), stride, dilation)
    return tuple(int(p) for p in padding)


def _conv_geometry(x_shape, kh, kw, stride, padding, dilation):
    """`conv_geometry` for padding stored as (top, bottom, left, right) or 'same'."""
    t, b, l, r = resolve_padding(padding, x_shape, kh, kw, stride, dilation)
    return conv_geometry(x_shape, kh, kw, stride, ((t, b), (l, r)), dilation)


# -- the folded float graph ---------------------------------------------------------------------
class FloatOp:
    """One op of the folded graph: reads tensors `inputs` (names), writes tensor `output`."""

    def __init__(self, kind, inputs, output, **attrs):
        self.kind, self.inputs, self.output = kind, tuple(inputs), output
        self.__dict__.update(attrs)

    def run(self, *xs):
        if self.kind == "conv":
            y = _float_conv(self.variant, xs[0], self.weight, self.stride, self.padding, self.dilation) + self.bias
            return FLOAT_ACTIVATIONS[self.activation](y) if self.activation else y
        if self.kind == "activation":
            return FLOAT_ACTIVATIONS[self.function](xs[0])
        if self.kind == "mean":
            return xs[0].mean(axis=(1, 2))
        if self.kind == "channel_scale":
            return xs[0] * xs[1][:, None, None, :]
        if self.kind == "add":
            return xs[0] + xs[1]
        raise ValueError(f"unknown op kind {self.kind!r}")

    def __repr__(self):
        return f"{self.kind}({', '.join(self.inputs)} -> {self.output})"


class FloatGraph:
    """The eval-mode model as a list of float ops with batch norm folded: `run(x)` gives every tensor."""

    def __init__(self, ops, output):
        self.ops, self.output = ops, output

    def run(self, x):
        env = {"input": np.asarray(x, np.float32)}
        for op in self.ops:
            env[op.output] = op.run(*(env[name] for name in op.inputs)).astype(np.float32, copy=False)
        return env

    def __call__(self, x):
        return self.run(x)[self.output]

    def tensors(self):
        return ["input"] + [op.output for op in self.ops]


def fold_batch_norm(conv, bn):
    """(weight, bias) of convolution `conv` with the batch norm `bn` after it folded in (eval
    statistics): the inference engine's folding (`npmobilenet.inference.fuse.fold_batch_norm`),
    so the int8 model starts from exactly the float weights `model.fuse()` runs."""
    from npmobilenet.inference.fuse import fold_batch_norm as fold

    bias = conv.bias.data if getattr(conv, "bias", None) is not None else None
    return fold(conv.weight.data, bias, bn)


def _conv_variant(conv):
    from npmobilenet.layers import Conv2d, DepthwiseConv2d, Linear, PointwiseConv2d

    if isinstance(conv, DepthwiseConv2d):
        return "depthwise"
    if isinstance(conv, PointwiseConv2d):
        return "pointwise"
    if isinstance(conv, Conv2d):
        return "standard"
    if isinstance(conv, Linear):
        return "linear"
    raise TypeError(f"cannot quantize a {type(conv).__name__} convolution")


def _geometry(conv):
    if _conv_variant(conv) in ("pointwise", "linear"):
        return dict(stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1))
    padding = "same" if conv.same else tuple(conv.padding)
    return dict(stride=tuple(conv.stride), padding=padding, dilation=tuple(conv.dilation))


class _Folder:
    """Walks a model in execution order and emits the folded float ops."""

    def __init__(self):
        self.ops = []

    def conv(self, name, conv, weight, bias, x, activation=None):
        fused = activation if activation in CLAMP_ACTIVATIONS else None
        out = name if activation in (None, *CLAMP_ACTIVATIONS) else f"{name}.pre"
        self.ops.append(FloatOp("conv", [x], out, name=name, variant=_conv_variant(conv), weight=weight,
                                bias=bias, activation=fused, **_geometry(conv)))
        if activation not in (None, *CLAMP_ACTIVATIONS):
            self.activation(name, activation, out)
        return name

    def activation(self, name, function, x):
        if function not in FLOAT_ACTIVATIONS:
            raise TypeError(f"cannot quantize activation {function!r} at {name}")
        self.ops.append(FloatOp("activation", [x], name, name=name, function=function))
        return name

    def conv_bn_act(self, name, cba, x):
        from npmobilenet.layers import Sequential

        if cba.act is not None and cba.activation not in FLOAT_ACTIVATIONS:
            raise TypeError(f"cannot quantize activation {cba.activation!r} at {name}")
        convs = list(cba.conv) if isinstance(cba.conv, Sequential) else [cba.conv]
        weight, bias = fold_batch_norm(convs[-1], cba.bn)
        # A factorised convolution (factorize.py) is a chain of thinner ones: the batch norm folds
        # into the last; the others are plain linear maps.
        for k, conv in enumerate(convs[:-1]):
            b = conv.bias.data if getattr(conv, "bias", None) is not None else np.zeros(conv.out_channels, np.float32)
            x = self.conv(f"{name}.conv.{k}", conv, conv.weight.data.astype(np.float32), b.astype(np.float32), x)
        return self.conv(name, convs[-1], weight, bias, x, cba.activation if cba.act is not None else None)

    def linear(self, name, layer, x, activation=None):
        from npmobilenet.layers import Sequential

        layers = list(layer) if isinstance(layer, Sequential) else [layer]
        for k, lin in enumerate(layers):
            last = k == len(layers) - 1
            b = lin.bias.data if lin.bias is not None else np.zeros(lin.out_features, np.float32)
            x = self.conv(name if last else f"{name}.{k}", lin, lin.weight.data.astype(np.float32),
                          b.astype(np.float32), x, activation if last else None)
        return x

    def squeeze_excite(self, name, se, x):
        self.ops.append(FloatOp("mean", [x], f"{name}.pool", name=f"{name}.pool"))
        s = self.linear(f"{name}.reduce", se.reduce, f"{name}.pool", activation="relu")
        s = self.linear(f"{name}.expand", se.expand, s, activation="hardsigmoid")
        self.ops.append(FloatOp("channel_scale", [x, s], name, name=name))
        return name


def fold_model(model):
    """The eval-mode `model` as a `FloatGraph` with batch norm folded into the convolutions.

    Tensor names follow the model's dotted layer names ("stem", "blocks.3.conv_dw", "blocks.3",
    "pool", "classifier.3"); a hard-swish convolution's pre-activation output is "<name>.pre".
    """
    from npmobilenet.layers import (ConvBNAct, DepthwiseSeparable, Dropout, InvertedResidual, Linear,
                                    Sequential)
    from npmobilenet.layers.activation import ACTIVATIONS

    if getattr(model, "training", False):
        raise ValueError("the model is in training mode: call model.eval() before quantizing "
                         "(batch norm must use its running statistics to be folded)")
    f = _Folder()
    x = f.conv_bn_act("stem", model.stem, "input")
    for i, block in enumerate(model.blocks):
        name = f"blocks.{i}"
        if isinstance(block, DepthwiseSeparable):
            x = f.conv_bn_act(f"{name}.conv_dw", block.conv_dw, x)
            x = f.conv_bn_act(f"{name}.conv_pw", block.conv_pw, x)
        elif isinstance(block, InvertedResidual):
            shortcut = x
            if block.conv_pw is not None:
                x = f.conv_bn_act(f"{name}.conv_pw", block.conv_pw, x)
            x = f.conv_bn_act(f"{name}.conv_dw", block.conv_dw, x)
            if block.se is not None:
                x = f.squeeze_excite(f"{name}.se", block.se, x)
            x = f.conv_bn_act(f"{name}.conv_pwl", block.conv_pwl, x)
            if block.use_residual:
                f.ops.append(FloatOp("add", [shortcut, x], name, name=name))
                x = name
        else:
            raise TypeError(f"cannot quantize block {name} of type {type(block).__name__}")
    if model.head is not None:
        if not isinstance(model.head, ConvBNAct):
            raise TypeError(f"cannot quantize a head of type {type(model.head).__name__}")
        x = f.conv_bn_act("head", model.head, x)
    f.ops.append(FloatOp("mean", [x], "pool", name="pool"))
    x = "pool"
    activation_names = {cls: key for key, cls in ACTIVATIONS.items()}
    for j, layer in enumerate(model.classifier):
        name = f"classifier.{j}"
        if isinstance(layer, Dropout):
            continue  # the identity in eval mode
        if isinstance(layer, (Linear, Sequential)):
            x = f.linear(name, layer, x)
        elif type(layer) in activation_names:
            x = f.activation(name, activation_names[type(layer)], x)
        else:
            raise TypeError(f"cannot quantize classifier layer {name} of type {type(layer).__name__}")
    return FloatGraph(f.ops, x)


# -- quantized ops ---------------------------------------------------------------------------------
class QOp:
    """One integer op: reads int8 tensors `inputs`, writes int8 tensor `output`.

    `attrs()` are its JSON-serialisable hyper-parameters and `arrays()` its arrays: the two
    together (less the `derived` arrays) are what `qformat` saves, and `op_from_record` rebuilds
    the op from them.
    """

    kind = None
    array_names = ()
    derived = ()

    def __init__(self, name, inputs, output):
        self.name, self.inputs, self.output = name, tuple(inputs), output

    def attrs(self):
        return dict(kind=self.kind, name=self.name, inputs=list(self.inputs), output=self.output)

    def arrays(self):
        return {k: getattr(self, k) for k in self.array_names}

    def __repr__(self):
        return f"{type(self).__name__}({self.name}: {', '.join(self.inputs)} -> {self.output})"


def conv_multipliers(input_scale, weight_scale, output_scale):
    """Per-channel (multiplier, shift) of a convolution: M[c] = s_x s_w[c] / s_y (Jacob et al., Eq. 5)."""
    return quantize_multipliers(float(input_scale) * weight_scale.astype(np.float64) / float(output_scale))


class QConv(QOp):
    """Standard, depthwise, pointwise convolution or linear layer on int8, with fused clamp.

    weight int8 (layout of its variant), bias int32 (Cout,), weight_scale float32 (Cout,),
    multiplier/shift int32 (Cout,). The multipliers follow from the scales (`conv_multipliers`),
    so a checkpoint does not store them: `derived` names them.
    """

    kind = "conv"
    array_names = ("weight", "weight_scale", "bias", "multiplier", "shift")
    derived = ("multiplier", "shift")

    def __init__(self, name, inputs, output, variant, weight, weight_scale, bias, multiplier, shift,
                 lo, hi, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), activation=None):
        super().__init__(name, inputs, output)
        self.variant, self.activation = variant, activation
        self.weight, self.weight_scale, self.bias = weight, weight_scale, bias
        self.multiplier, self.shift = multiplier, shift
        self.lo, self.hi = int(lo), int(hi)
        self.stride, self.dilation = tuple(stride), tuple(dilation)
        self.padding = "same" if isinstance(padding, str) and padding == "same" else tuple(padding)

    def attrs(self):
        return dict(super().attrs(), variant=self.variant, lo=self.lo, hi=self.hi, stride=list(self.stride),
                    padding=self.padding if self.padding == "same" else list(self.padding),
                    dilation=list(self.dilation), activation=self.activation)

    @property
    def out_channels(self):
        return self.weight.shape[-1]

    def output_shape(self, x_shape):
        if self.variant == "linear":
            return (x_shape[0], self.out_channels)
        if self.variant == "pointwise":
            return (*x_shape[:3], self.out_channels)
        kh, kw = self.weight.shape[:2]
        ho, wo, *_ = _conv_geometry(x_shape, kh, kw, self.stride, self.padding, self.dilation)
        return (x_shape[0], ho, wo, self.out_channels)

    def macs(self, x_shape):
        y = self.output_shape(x_shape)
        per_output = self.weight.size // self.out_channels
        if self.variant == "depthwise":
            per_output = self.weight.shape[0] * self.weight.shape[1]
        return int(np.prod(y)) * per_output

    def _exact_float(self, zx):
        """(the int8 weight as float32, the taps a float32 sum holds exactly) for input zero point zx."""
        cached = getattr(self, "_exact", None)
        if cached is None or cached[0] != zx:
            self._exact = (zx, self.weight.astype(np.float32), qkernels.exact_chunk(zx, self.weight))
        return self._exact[1:]

    def run(self, x, zx, zy, float_kernels=False):
        # With `float_kernels`, a layer the float kernels compute exactly (see qkernels, "exact
        # float32 paths") runs on them, unless it is so small that their extra passes cost more
        # than they save; the integer loops do the rest (and everything by default).
        k = qkernels
        args = (self.bias, self.multiplier, self.shift, zy, self.lo, self.hi)
        exact = float_kernels and self.macs(x.shape) >= EXACT_MIN_MACS
        wf, chunk = self._exact_float(zx) if exact else (None, 0)
        if self.variant in ("linear", "pointwise"):
            x2d = x.reshape(-1, x.shape[-1])
            if exact:
                y = k.pointwise_int8_exact(x2d, zx, wf, chunk, *args)
            else:
                y = k.pointwise_int8(x2d, zx, self.weight, *args)
            return y.reshape(*x.shape[:-1], -1)
        out_shape = self.output_shape(x.shape)
        kh, kw = self.weight.shape[:2]
        padding = resolve_padding(self.padding, x.shape, kh, kw, self.stride, self.dilation)
        taps = self.weight.size // self.out_channels if self.variant == "standard" else self.weight[..., 0].size
        if exact and self.dilation == (1, 1) and taps <= chunk:
            kernel = k.depthwise_conv2d_int8_exact if self.variant == "depthwise" else k.conv2d_int8_exact
            return kernel(x, zx, wf, *args, self.stride, padding, out_shape)
        geometry = (self.stride, padding, self.dilation, out_shape)
        if self.variant == "depthwise":
            return k.depthwise_conv2d_int8(x, zx, self.weight, *args, *geometry)
        return k.conv2d_int8(x, zx, self.weight, *args, *geometry)


class QLookup(QOp):
    """An elementwise function of one int8 tensor as a 256-entry table: y = table[x + 128]."""

    kind = "lookup"
    array_names = ("table",)

    def __init__(self, name, inputs, output, table, function):
        super().__init__(name, inputs, output)
        self.table, self.function = table, function

    def attrs(self):
        return dict(super().attrs(), function=self.function)

    def run(self, x):
        return qkernels.lookup_int8(x, self.table)


class QMean(QOp):
    """Global average pool (N, H, W, C) -> (N, C): int32 sum, then M = s_x / (H W s_y).

    M depends on the input's H x W, so it is computed (once per size) when a size is first seen,
    as TFLite's Mean prepares its multiplier from the input shape.
    """

    kind = "mean"

    def __init__(self, name, inputs, output, input_scale, output_scale):
        super().__init__(name, inputs, output)
        self.input_scale, self.output_scale = float(input_scale), float(output_scale)
        self._multipliers = {}

    def attrs(self):
        return dict(super().attrs(), input_scale=self.input_scale, output_scale=self.output_scale)

    def multiplier(self, hw):
        if hw not in self._multipliers:
            self._multipliers[hw] = quantize_multiplier(self.input_scale / (hw * self.output_scale))
        return self._multipliers[hw]

    def run(self, x, zx, zy):
        m, s = self.multiplier(x.shape[1] * x.shape[2])
        return qkernels.mean_int8(x, zx, m, s, zy)


class QChannelScale(QOp):
    """y = x * g per image and channel (SE's excitation): M = s_x s_g / s_y."""

    kind = "channel_scale"
    array_names = ("requant",)

    def __init__(self, name, inputs, output, requant):
        super().__init__(name, inputs, output)
        self.requant = np.asarray(requant, np.int32)  # (multiplier, shift)

    def run(self, x, zx, g, zg, zy):
        return qkernels.channel_scale_int8(x, zx, g, zg, int(self.requant[0]), int(self.requant[1]), zy)


class QAdd(QOp):
    """Residual add (TFLite's quantized Add): requant rows are (multiplier, shift) for a, b, output."""

    kind = "add"
    array_names = ("requant",)

    def __init__(self, name, inputs, output, requant):
        super().__init__(name, inputs, output)
        self.requant = np.asarray(requant, np.int32).reshape(3, 2)

    @staticmethod
    def multipliers(sa, sb, sy):
        # TFLite add.cc: twice the larger input scale is the common scale; 2^20 of headroom.
        twice_max = 2.0 * max(sa, sb)
        return [quantize_multiplier(sa / twice_max), quantize_multiplier(sb / twice_max),
                quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * sy))]

    def run(self, a, za, b, zb, zy):
        (ma, sa), (mb, sb), (my, sy) = (tuple(int(v) for v in row) for row in self.requant)
        return qkernels.add_int8(a, za, ma, sa, b, zb, mb, sb, ADD_LEFT_SHIFT, zy, my, sy)


OP_TYPES = {cls.kind: cls for cls in (QConv, QLookup, QMean, QChannelScale, QAdd)}


def op_from_record(attrs, arrays, tensors):
    """Rebuild a quantized op from its `attrs()` and saved arrays; `tensors` gives the scales
    from which derived arrays (a convolution's multipliers) are recomputed."""
    attrs = dict(attrs)
    cls = OP_TYPES.get(attrs.pop("kind", None))
    if cls is None:
        raise ValueError(f"unknown quantized op kind in {attrs}")
    arrays = dict(arrays)
    if cls is QConv and "multiplier" not in arrays:
        (sx, _), (sy, _) = tensors[attrs["inputs"][0]], tensors[attrs["output"]]
        arrays["multiplier"], arrays["shift"] = conv_multipliers(sx, np.asarray(arrays["weight_scale"]), sy)
    attrs.update({k: arrays[k] for k in cls.array_names})
    return cls(**attrs)


# -- the quantized model ---------------------------------------------------------------------------
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
        from npmobilenet.models.mobilenet import MIN_RESOLUTION

        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array of shape (N, H, W, 3), got {type(x).__name__}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"x must be a float array, got dtype {x.dtype}; preprocess images as for the float model")
        if x.ndim != 4 or x.shape[3] != 3 or x.shape[0] < 1:
            raise ValueError(f"x must have shape (N, H, W, 3) with N >= 1, got {x.shape}")
        if x.shape[1] < MIN_RESOLUTION or x.shape[2] < MIN_RESOLUTION:
            raise ValueError(f"x must be at least {MIN_RESOLUTION}x{MIN_RESOLUTION}, got {x.shape[1]}x{x.shape[2]}")
        scale, zero_point = self.tensors["input"]
        q = np.clip(np.round(x.astype(np.float32) / np.float32(scale)) + zero_point, INT8_MIN, INT8_MAX)
        return np.ascontiguousarray(q.astype(np.int8))

    def run(self, xq, record=False):
        """int8 input (N, H, W, 3) -> int8 logits (N, num_classes); every tensor if `record`."""
        env = {"input": xq}
        zp = {name: z for name, (_, z) in self.tensors.items()}
        # OpenBLAS (the exact float32 paths' SGEMM) on the calling threads only, for the whole pass:
        # its own threads would spin between calls and take the cores from the kernels' threads.
        with single_threaded_blas():
            for op in self.ops:
                xs = [env[name] for name in op.inputs]
                if isinstance(op, QConv):
                    y = op.run(np.ascontiguousarray(xs[0]), zp[op.inputs[0]], zp[op.output], not self.integer_only)
                elif isinstance(op, QLookup):
                    y = op.run(xs[0])
                elif isinstance(op, QMean):
                    y = op.run(xs[0], zp[op.inputs[0]], zp[op.output])
                elif isinstance(op, QChannelScale):
                    y = op.run(xs[0], zp[op.inputs[0]], xs[1], zp[op.inputs[1]], zp[op.output])
                else:
                    y = op.run(xs[0], zp[op.inputs[0]], xs[1], zp[op.inputs[1]], zp[op.output])
                env[op.output] = y
        return env if record else env[self.output]

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
        return int(sum(op.weight.size + op.bias.size for op in self.ops if isinstance(op, QConv)))

    def weight_bytes(self):
        """Bytes of int8 weights and int32 biases, multipliers and shifts (tables included)."""
        return int(sum(a.nbytes for op in self.ops for a in op.arrays().values() if a.dtype != np.float32))

    def macs(self, input_shape=(1, 224, 224, 3)):
        """Multiply-accumulates of one forward pass of `input_shape` (convolutions and FC layers)."""
        shapes = {"input": tuple(input_shape)}
        total = 0
        for op in self.ops:
            x_shape = shapes[op.inputs[0]]
            if isinstance(op, QConv):
                total += op.macs(x_shape)
                shapes[op.output] = op.output_shape(x_shape)
            elif isinstance(op, QMean):
                shapes[op.output] = (x_shape[0], x_shape[3])
            else:
                shapes[op.output] = x_shape
        return total

    def save(self, path):
        from npmobilenet.compression import qformat

        return qformat.save_quantized(self, path)

    def __repr__(self):
        kind = "per-channel" if self.info.get("per_channel", True) else "per-tensor"
        return (f"QuantizedModel({self.config.get('arch')}, width={self.config.get('width')}, "
                f"num_classes={self.num_classes}, int8 {kind}, {len(self.ops)} ops)")


# -- from float to int8 ------------------------------------------------------------------------
def check_calibration_images(images, input_range=None):
    """`images` as float32 (N, H, W, 3), or a clear error (empty, wrong shape, dtype or range)."""
    from npmobilenet.models.mobilenet import MIN_RESOLUTION

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
    return np.clip(np.round(FLOAT_ACTIVATIONS[function](real) / s_out) + z_out, INT8_MIN, INT8_MAX).astype(np.int8)


def _clamp(activation, scale, zero_point):
    """int8 bounds of a fused ReLU/ReLU6: the quantized values of 0 and 6."""
    if activation is None:
        return INT8_MIN, INT8_MAX
    lo = max(INT8_MIN, zero_point)
    hi = INT8_MAX if activation == "relu" else min(INT8_MAX, zero_point + int(round(6.0 / scale)))
    return lo, hi


def quantize_graph(graph, qparams, per_channel=True):
    """The integer ops of a folded float graph, given every tensor's (scale, zero_point)."""
    ops = []
    for op in graph.ops:
        if op.kind == "conv":
            (sx, _), (sy, zy) = qparams[op.inputs[0]], qparams[op.output]
            wq, ws = quantize_weight(op.weight, per_channel)
            bias_scale = sx * ws.astype(np.float64)
            bias = np.clip(np.round(op.bias / bias_scale), -(2**31), 2**31 - 1).astype(np.int32)
            multiplier, shift = conv_multipliers(sx, ws, sy)
            lo, hi = _clamp(op.activation, sy, zy)
            ops.append(QConv(op.name, op.inputs, op.output, op.variant, wq, ws, bias, multiplier, shift, lo, hi,
                             op.stride, op.padding, op.dilation, op.activation))
        elif op.kind == "activation":
            table = _lookup_table(op.function, qparams[op.inputs[0]], qparams[op.output])
            ops.append(QLookup(op.name, op.inputs, op.output, table, op.function))
        elif op.kind == "mean":
            ops.append(QMean(op.name, op.inputs, op.output, qparams[op.inputs[0]][0], qparams[op.output][0]))
        elif op.kind == "channel_scale":
            (sx, _), (sg, _), (sy, _) = qparams[op.inputs[0]], qparams[op.inputs[1]], qparams[op.output]
            ops.append(QChannelScale(op.name, op.inputs, op.output, quantize_multiplier(sx * sg / sy)))
        elif op.kind == "add":
            (sa, _), (sb, _), (sy, _) = qparams[op.inputs[0]], qparams[op.inputs[1]], qparams[op.output]
            ops.append(QAdd(op.name, op.inputs, op.output, QAdd.multipliers(sa, sb, sy)))
        else:
            raise ValueError(f"cannot quantize op kind {op.kind!r}")
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
    if not hasattr(model, "blocks") or not hasattr(model, "config"):
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
    tensors = graph.tensors()
    # The gate of squeeze-and-excitation is a hard-sigmoid: its range [0, 1] is known, not measured.
    gates = {op.output for op in graph.ops if op.kind == "activation" and op.function == "hardsigmoid"}
    ranges = cal.calibrate(graph.run, images, [t for t in tensors if t not in gates], method, percentile,
                           batch_size, minmax_tensors=("input",))
    qparams = {name: cal.qparams_from_range(*r) for name, r in ranges.items()}
    qparams.update({g: (GATE_SCALE, GATE_ZERO_POINT) for g in gates})
    ops = quantize_graph(graph, qparams, per_channel)
    info = dict(per_channel=per_channel, method=method, percentile=float(percentile),
                calibration_images=int(images.shape[0]))
    return QuantizedModel(model.config, qparams, ops, graph.output, info)
