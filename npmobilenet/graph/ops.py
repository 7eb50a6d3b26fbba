"""The op set every model lowers to: a few generic ops, one class each, over named NHWC tensors.

A layer or block describes itself once, in its `lower()` method, as a short list of these ops
(`npmobilenet.graph.lower(model)` collects them); fused inference, int8 quantization, ONNX export
and the summary read that list and dispatch on `op.kind`, never on layer or block classes.

    conv             y = act(conv(x, w) + b), variant standard (KH, KW, Cin, Cout), depthwise
                     (KH, KW, C) (groups = C) or pointwise (Cin, Cout); stride, dilation, padding
                     (top, bottom, left, right) or TensorFlow's "same"
    batch_norm       y = gamma (x - mean) / sqrt(var + eps) + beta over the last axis; eval-mode
                     statistics. `passes.fold_batch_norm` folds it into the conv or linear before it
    activation       relu, relu6, hardswish, hardsigmoid (V3 paper, sec. 5.2), sigmoid (LR-ASPP's
                     gate, V3 paper sec. 6.3), elementwise
    global_avg_pool  (N, H, W, C) -> (N, C)
    linear           y = act(x w + b), x (N, Cin), w (Cin, Cout)
    channel_scale    x (N, H, W, C) times a per-image gate (N, C): squeeze-and-excitation's excite
    add              a + b, the residual shortcut
    resize           x bilinearly resized to the height and width of a second tensor (a
                     segmentation head's upsampling; PyTorch's align_corners=False)

Ops name the layer they come from (`name`, a dotted path such as "blocks.3.conv_dw.conv"); an op
writes the tensor `output` (by default its name) and reads the tensors `inputs`. Parameters are
the layer's own arrays (not copies): a consumer that keeps them copies them. A graph may have
several outputs (a detection head's boxes and scores), and a new op kind is a class here with
its shape rule, plus a case in each consumer that supports it (a consumer names the op it cannot
run in its error).
"""
from npmobilenet.ops.geometry import output_size, tf_same_sides

ACTIVATION_FUNCTIONS = ("relu", "relu6", "hardswish", "hardsigmoid", "sigmoid")


def _check_channels(op, shape, channels):
    if shape[-1] != channels:
        raise ValueError(f"layer {op.name} expects {channels} channels but would receive shape {tuple(shape)}")


class Op:
    """One op of a lowered graph: reads tensors `inputs`, writes tensor `output`."""

    kind = None
    array_names = ()        # its parameter arrays (attributes of these names; None where absent)

    def __init__(self, name, inputs, output=None):
        self.name = name
        self.inputs = tuple(inputs)
        self.output = output if output is not None else name

    def copy(self, **changes):
        """A shallow copy with some attributes changed (arrays are shared, never modified)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        if "inputs" in changes:
            new.inputs = tuple(changes["inputs"])
        return new

    def arrays(self):
        """{name: array} of the op's parameters."""
        return {k: getattr(self, k) for k in self.array_names if getattr(self, k) is not None}

    def num_parameters(self):
        return sum(a.size for a in self.arrays().values())

    def output_shape(self, *shapes):
        raise NotImplementedError

    def describe(self):
        return self.kind

    def __repr__(self):
        return f"{self.kind}({self.name}: {', '.join(self.inputs)} -> {self.output}; {self.describe()})"


class Conv(Op):
    """Convolution with an optional bias and a fused activation (None after lowering; see `passes`).

    variant "standard": weight (KH, KW, Cin, Cout); "depthwise": (KH, KW, C), one filter per
    channel (V1 paper, Eq. 3; an ONNX Conv with group = C); "pointwise": (Cin, Cout), a 1x1
    convolution. stride and dilation are (vertical, horizontal); padding (top, bottom, left,
    right) or "same" (TensorFlow's, worked out per input size by `padding_at`).
    """

    kind = "conv"
    array_names = ("weight", "bias")
    VARIANTS = ("standard", "depthwise", "pointwise")
    RANK = {"standard": 4, "depthwise": 3, "pointwise": 2}

    def __init__(self, name, inputs, variant, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0),
                 dilation=(1, 1), activation=None, output=None):
        super().__init__(name, inputs, output)
        if variant not in self.VARIANTS:
            raise ValueError(f"conv variant must be one of {self.VARIANTS}, got {variant!r}")
        if weight.ndim != self.RANK[variant]:
            raise ValueError(f"a {variant} conv weight has rank {self.RANK[variant]}, got shape {weight.shape}")
        self.variant, self.weight, self.bias, self.activation = variant, weight, bias, activation
        self.stride, self.dilation = tuple(stride), tuple(dilation)
        self.padding = "same" if isinstance(padding, str) and padding == "same" else tuple(int(p) for p in padding)
        if variant == "pointwise" and (self.stride, self.dilation, self.padding) != ((1, 1), (1, 1), (0, 0, 0, 0)):
            raise ValueError("a pointwise conv has stride 1, dilation 1 and no padding")

    @property
    def kernel_size(self):
        return (1, 1) if self.variant == "pointwise" else tuple(self.weight.shape[:2])

    @property
    def in_channels(self):
        return self.weight.shape[-2] if self.variant != "depthwise" else self.weight.shape[-1]

    @property
    def out_channels(self):
        return self.weight.shape[-1]

    @property
    def groups(self):
        return self.out_channels if self.variant == "depthwise" else 1

    def padding_at(self, height, width):
        """(top, bottom, left, right) for an input of height x width."""
        if self.padding == "same":
            return tf_same_sides(height, width, self.kernel_size, self.stride, self.dilation)
        return self.padding

    def output_shape(self, x):
        if len(x) != 4:
            raise ValueError(f"layer {self.name} expects an (N, H, W, C) input, got shape {tuple(x)}")
        _check_channels(self, x, self.in_channels)
        n, h, w, _ = x
        (kh, kw), (sh, sw), (rh, rw) = self.kernel_size, self.stride, self.dilation
        top, bottom, left, right = self.padding_at(h, w)
        ho, wo = output_size(h, kh, sh, top, bottom, rh), output_size(w, kw, sw, left, right, rw)
        if ho < 1 or wo < 1:
            raise ValueError(f"layer {self.name}: a {kh}x{kw} kernel does not fit a padded {h}x{w} input")
        return (n, ho, wo, self.out_channels)

    def describe(self):
        kh, kw = self.kernel_size
        text = "pointwise" if self.variant == "pointwise" else f"{self.variant} {kh}x{kw}/{self.stride[0]}"
        return text + (f", {self.activation}" if self.activation else "")


class BatchNorm(Op):
    """y = gamma (x - mean) / sqrt(var + eps) + beta over the channel (last) axis, any rank >= 2."""

    kind = "batch_norm"
    array_names = ("gamma", "beta", "mean", "var")

    def __init__(self, name, inputs, gamma, beta, mean, var, eps, output=None):
        super().__init__(name, inputs, output)
        self.gamma, self.beta, self.mean, self.var, self.eps = gamma, beta, mean, var, float(eps)

    def arrays(self):
        # the running statistics are buffers, not parameters (what the summary counts)
        return {"gamma": self.gamma, "beta": self.beta}

    def output_shape(self, x):
        _check_channels(self, x, self.gamma.shape[0])
        return tuple(x)


class Activation(Op):
    kind = "activation"

    def __init__(self, name, inputs, function, output=None):
        super().__init__(name, inputs, output)
        if function not in ACTIVATION_FUNCTIONS:
            raise ValueError(f"activation must be one of {ACTIVATION_FUNCTIONS}, got {function!r}")
        self.function = function

    def output_shape(self, x):
        return tuple(x)

    def describe(self):
        return self.function


class GlobalAvgPool(Op):
    kind = "global_avg_pool"

    def output_shape(self, x):
        if len(x) != 4:
            raise ValueError(f"layer {self.name} expects an (N, H, W, C) input, got shape {tuple(x)}")
        return (x[0], x[3])


class Linear(Op):
    """y = act(x w + b): x (N, Cin), w (Cin, Cout), b (Cout,) or None."""

    kind = "linear"
    array_names = ("weight", "bias")

    def __init__(self, name, inputs, weight, bias=None, activation=None, output=None):
        super().__init__(name, inputs, output)
        self.weight, self.bias, self.activation = weight, bias, activation

    @property
    def in_channels(self):
        return self.weight.shape[0]

    @property
    def out_channels(self):
        return self.weight.shape[1]

    def output_shape(self, x):
        _check_channels(self, x, self.in_channels)
        return tuple(x[:-1]) + (self.out_channels,)

    def describe(self):
        return f"{self.in_channels} -> {self.out_channels}" + (f", {self.activation}" if self.activation else "")


class ChannelScale(Op):
    """inputs (x, gate): x (N, H, W, C) times gate (N, C), per image and channel."""

    kind = "channel_scale"

    def output_shape(self, x, gate):
        if len(x) != 4 or tuple(gate) != (x[0], x[3]):
            raise ValueError(f"layer {self.name}: a gate of shape {tuple(gate)} does not scale {tuple(x)}")
        return tuple(x)


class Add(Op):
    kind = "add"

    def output_shape(self, a, b):
        if tuple(a) != tuple(b):
            raise ValueError(f"layer {self.name} adds tensors of shapes {tuple(a)} and {tuple(b)}")
        return tuple(a)


class Resize(Op):
    """inputs (x, like): x (N, H, W, C) resized bilinearly to like's (Ho, Wo): (N, Ho, Wo, C).

    Sampling follows PyTorch's `interpolate(mode="bilinear", align_corners=False)` (ONNX's
    "pytorch_half_pixel"): output pixel o reads input position (o + 0.5) H / Ho - 0.5, clamped at 0.
    """

    kind = "resize"

    def output_shape(self, x, like):
        if len(x) != 4 or len(like) != 4 or x[0] != like[0]:
            raise ValueError(f"layer {self.name} resizes an (N, H, W, C) map to another's size, got {tuple(x)} "
                             f"and {tuple(like)}")
        return (x[0], like[1], like[2], x[3])


OP_KINDS = {cls.kind: cls for cls in (Conv, BatchNorm, Activation, GlobalAvgPool, Linear, ChannelScale, Add, Resize)}

