"""The int8 ops of a quantized model, each computing one layer on integers (`qkernels.py`).

Every tensor t is int8 q with real value s_t (q - z_t); an op's `evaluate(values, zero_points,
float_kernels)` reads its input tensors and returns its int8 output:

    conv            QConv: standard, depthwise, pointwise convolution or linear layer, int32 sums,
                    fixed-point requantization (Jacob et al., 2018, Eq. 5), ReLU/ReLU6 as a clamp
    lookup          QLookup: an elementwise function (hard-swish, hard-sigmoid) as a 256-entry table
    mean            QMean: global average pooling, 1/HW folded into the requantization
    channel_scale   QChannelScale: squeeze-and-excitation's x * gate (TFLite's quantized Mul)
    add             QAdd: the residual add (TFLite's quantized Add)

`attrs()` and `arrays()` are what the int8 checkpoint stores (`qmodel.py`); `op_from_record`
rebuilds an op from them.
"""
import math

import numpy as np

from npmobilenet.compression import qdepthwise_vnni, qexact, qkernels, vnni
from npmobilenet.ops.geometry import conv_geometry, tf_same_sides

INT8_MIN, INT8_MAX = -128, 127
ADD_LEFT_SHIFT = qkernels.ADD_LEFT_SHIFT  # TFLite's quantized Add: 20 bits of headroom before summing
# Without a packed int8 kernel (VNNI, AVX2's pairs), in the float-kernel mode (`integer_only =
# False`), layers of at least this many MACs compute their integer sums on the exact float32 paths
# of qexact.py (SGEMM); smaller ones on the integer loops, whose fewer passes win there (chosen on
# whole models at thresholds of 0 to 1e6 MACs, one thread, batch 1, before the VNNI kernels: V2
# and V3-Small at 224 fastest at 1e6, the digits model at 32x32 indifferent).
EXACT_MIN_MACS = 1_000_000


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


# -- quantized ops ---------------------------------------------------------------------------------
class QOp:
    """One integer op: reads int8 tensors `inputs`, writes int8 tensor `output`.

    `attrs()` are its JSON-serialisable hyper-parameters and `arrays()` its arrays: the two
    together (less the `derived` arrays) are what the int8 checkpoint stores (`qmodel.py`), and `op_from_record` rebuilds
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

    def evaluate(self, values, zero_points, float_kernels=False):
        """This op's int8 output from `values` (tensor -> int8 array) and the tensors' zero points."""
        xs = [np.ascontiguousarray(values[t]) for t in self.inputs]
        y = np.empty(self.output_shape(xs[0].shape), np.int8)
        for kernel, args in self.calls(xs, zero_points, y, float_kernels):
            kernel(*args)
        return y

    def calls(self, xs, zero_points, y, float_kernels=False):
        """[(kernel, args)]: `kernel(*args)` in turn write this op's output into y (int8, of
        `output_shape`) from its inputs xs (C-contiguous int8, in the order of `inputs`). Bound
        once, they run again on whatever the arrays then hold (`qplan.py`)."""
        raise NotImplementedError

    def output_shape(self, x_shape):
        return tuple(x_shape)

    def macs(self, x_shape):
        return 0

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
            self._exact = (zx, self.weight.astype(np.float32), qexact.exact_chunk(zx, self.weight))
        return self._exact[1:]

    def _depthwise_vnni_packed(self, zx):
        """`qdepthwise_vnni.pack` of this depthwise layer for input zero point zx, made once (op by
        op, a call would otherwise pack its weight again: 37 us for a 5x5 kernel on 576 channels)."""
        cached = getattr(self, "_vnni_packed", None)
        if cached is None or cached[0] != zx:
            self._vnni_packed = (zx, qdepthwise_vnni.pack(self.weight, zx, self.bias, self.multiplier, self.shift,
                                                          self.stride))
        return self._vnni_packed[1]

    def exact_path(self, x_shape, zx, float_kernels):
        """Whether this layer runs on the exact float32 paths (qexact.py): with `float_kernels`, a
        pointwise, linear or standard layer of at least EXACT_MIN_MACS on a CPU without a packed
        int8 kernel (`vnni.packed_enabled()`: VNNI's, or AVX2's int16 pairs, faster still), the
        float kernels computing it exactly."""
        if not float_kernels or vnni.packed_enabled() or self.variant == "depthwise":
            return False
        if self.macs(x_shape) < EXACT_MIN_MACS:
            return False
        if self.variant == "standard":
            return self.dilation == (1, 1) and self.weight[..., 0].size <= self._exact_float(zx)[1]
        return True

    def calls(self, xs, zero_points, y, float_kernels=False, residual=None, add=None):
        # `residual`, `add`: a residual add fused into a pointwise layer (`qkernels.pointwise_int8_call`)
        x = xs[0]
        zx, zy = zero_points[self.inputs[0]], zero_points[self.output]
        args = (self.bias, self.multiplier, self.shift, zy, self.lo, self.hi)
        if self.exact_path(x.shape, zx, float_kernels):
            return [(self._run_exact, (x, zx, zy, y))]
        if self.variant in ("linear", "pointwise"):
            residual = None if residual is None else residual.reshape(-1, y.shape[-1])
            return [qkernels.pointwise_int8_call(x.reshape(-1, x.shape[-1]), zx, self.weight, *args,
                                                 y.reshape(-1, y.shape[-1]), residual, add)]
        kh, kw = self.weight.shape[:2]
        geometry = (self.stride, resolve_padding(self.padding, x.shape, kh, kw, self.stride, self.dilation), self.dilation)
        if self.variant == "depthwise":
            packed = self._depthwise_vnni_packed(zx) if qdepthwise_vnni.applies(self.weight, self.dilation, self.stride) else None
            return [qkernels.depthwise_conv2d_int8_call(x, zx, self.weight, *args, *geometry, y, packed)]
        # the gathered receptive fields, which the packed kernels do without (they read them from x)
        cols = None if vnni.packed_enabled() else np.empty((*y.shape[:3], self.weight[..., 0].size), np.int8)
        return qkernels.conv2d_int8_calls(x, zx, self.weight, *args, *geometry, cols, y)

    def _run_exact(self, x, zx, zy, y):
        wf, chunk = self._exact_float(zx)
        args = (self.bias, self.multiplier, self.shift, zy, self.lo, self.hi)
        if self.variant in ("linear", "pointwise"):
            x2d = x.reshape(-1, x.shape[-1])
            y[...] = qexact.pointwise_int8_exact(x2d, zx, wf, chunk, *args).reshape(y.shape)
        else:
            kh, kw = self.weight.shape[:2]
            padding = resolve_padding(self.padding, x.shape, kh, kw, self.stride, self.dilation)
            y[...] = qexact.conv2d_int8_exact(x, zx, wf, *args, self.stride, padding, y.shape)


class QLookup(QOp):
    """An elementwise function of one int8 tensor as a 256-entry table: y = table[x + 128]."""

    kind = "lookup"
    array_names = ("table",)

    def __init__(self, name, inputs, output, table, function):
        super().__init__(name, inputs, output)
        self.table, self.function = table, function

    def attrs(self):
        return dict(super().attrs(), function=self.function)

    def calls(self, xs, zero_points, y, float_kernels=False):
        return [qkernels.lookup_int8_call(xs[0], self.table, y)]


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

    def output_shape(self, x_shape):
        return (x_shape[0], x_shape[3])

    def calls(self, xs, zero_points, y, float_kernels=False):
        x = xs[0]
        m, s = self.multiplier(x.shape[1] * x.shape[2])
        return [qkernels.mean_int8_call(x, zero_points[self.inputs[0]], m, s, zero_points[self.output], y)]


class QChannelScale(QOp):
    """y = x * g per image and channel (SE's excitation): M = s_x s_g / s_y."""

    kind = "channel_scale"
    array_names = ("requant",)

    def __init__(self, name, inputs, output, requant):
        super().__init__(name, inputs, output)
        self.requant = np.asarray(requant, np.int32)  # (multiplier, shift)

    def calls(self, xs, zero_points, y, float_kernels=False):
        (x, g), (zx, zg) = xs, [zero_points[t] for t in self.inputs]
        return [qkernels.channel_scale_int8_call(x, zx, g, zg, int(self.requant[0]), int(self.requant[1]),
                                                 zero_points[self.output], y)]


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

    def calls(self, xs, zero_points, y, float_kernels=False):
        (a, b), (za, zb) = xs, [zero_points[t] for t in self.inputs]
        (ma, sa), (mb, sb), (my, sy) = (tuple(int(v) for v in row) for row in self.requant)
        return [qkernels.add_int8_call(a, za, ma, sa, b, zb, mb, sb, ADD_LEFT_SHIFT, zero_points[self.output], my, sy,
                                       -128, 127, y)]

    def fused_params(self, conv_output, zero_points):
        """(residual tensor, `qkernels.add_params`) that fuse this add into the pointwise layer
        writing `conv_output`, one of its inputs: that input's rescaling is applied to the
        layer's requantized output in registers."""
        (ma, sa), (mb, sb), (my, sy) = (tuple(int(v) for v in row) for row in self.requant)
        if self.inputs[0] != conv_output:
            (ma, sa), (mb, sb) = (mb, sb), (ma, sa)
        residual = self.inputs[1] if self.inputs[0] == conv_output else self.inputs[0]
        return residual, qkernels.add_params(zero_points[residual], ma, sa, mb, sb, zero_points[self.output], my, sy)


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
