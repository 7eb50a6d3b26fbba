"""MobileNet's building blocks.

- `ConvBNAct`: convolution, batch norm, optional activation: the unit every table row is made of.
- `DepthwiseSeparable`: V1's block (V1 paper, Fig. 3): 3x3 depthwise then 1x1 pointwise, each
  followed by BN and ReLU6.
- `InvertedResidual`: V2's inverted residual with linear bottleneck (V2 paper, Table 1 and
  Fig. 3b): 1x1 expansion, depthwise, 1x1 linear projection, and a skip connection when stride is
  1 and the width is unchanged; V3 adds optional squeeze-and-excitation after the depthwise
  convolution and hard-swish (V3 paper, Fig. 4).
- `UniversalInvertedBottleneck`: V4's UIB (V4 paper, "Universal Inverted Bottlenecks"): an
  inverted bottleneck with an optional depthwise convolution before the expansion and an optional
  one between expansion and projection; its four instantiations are IB, ConvNext, ExtraDW and FFN.
- `FusedInvertedBottleneck`: V4's FusedIB: a KxK standard convolution expands, a 1x1 projects.
"""
from npmobilenet.graph.ops import Add
from npmobilenet.layers.activation import make_activation
from npmobilenet.layers.base import Layer
from npmobilenet.layers.conv import Conv2d, DepthwiseConv2d, PointwiseConv2d
from npmobilenet.layers.norm import BatchNorm
from npmobilenet.layers.se import SqueezeExcite


class ConvBNAct(Layer):
    """conv -> BN -> activation (or none, for a linear bottleneck).

    `conv` is any convolution layer, or a `Linear` (V4's layer after pooling, whose BN then
    normalises (N, C) vectors).
    """

    def __init__(self, conv, bn_eps, bn_momentum, activation):
        super().__init__()
        self.conv = self.add_child("conv", conv)
        self.bn = self.add_child("bn", BatchNorm(conv.out_channels, bn_eps, bn_momentum))
        act = make_activation(activation)
        self.act = self.add_child("act", act) if act is not None else None
        self.activation = activation

    @property
    def in_channels(self):
        return self.conv.in_channels

    @property
    def out_channels(self):
        return self.conv.out_channels

    def forward(self, x):
        # the activation runs inside batch norm's passes, both ways (ops/batch_norm.py): no
        # tensor between the two; `act` describes it to the graph (lower)
        return self.bn.forward(self.conv(x), self.activation)

    def backward(self, dy):
        return self.conv.backward(self.bn.backward(dy))

    def lower(self, graph, x, name):
        return self.lower_children(graph, x, name)


def same_padding(kernel_size, dilation=1):
    """Symmetric padding that keeps the size at stride 1, as torchvision pads every MobileNet conv."""
    return (kernel_size - 1) // 2 * dilation


def conv_stride(stride, dilation):
    """The stride a block's KxK convolution runs at: a dilated block runs at stride 1, its table
    stride replaced by the dilation (torchvision's V3 with `dilated=True`; `models.builder.dilate`)."""
    return 1 if dilation > 1 else stride


class DepthwiseSeparable(Layer):
    """V1 block: depthwise KxK (stride s) -> BN -> act, then pointwise -> BN -> act."""

    def __init__(self, in_channels, out_channels, stride, kernel_size=3, activation="relu6", bn_eps=1e-5, bn_momentum=0.1,
                 rng=None, dilation=1):
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.dilation = in_channels, out_channels, stride, dilation
        dw = DepthwiseConv2d(in_channels, kernel_size, conv_stride(stride, dilation), same_padding(kernel_size, dilation),
                             dilation, rng=rng)
        self.conv_dw = self.add_child("conv_dw", ConvBNAct(dw, bn_eps, bn_momentum, activation))
        pw = PointwiseConv2d(in_channels, out_channels, rng=rng)
        self.conv_pw = self.add_child("conv_pw", ConvBNAct(pw, bn_eps, bn_momentum, activation))

    def forward(self, x):
        return self.conv_pw(self.conv_dw(x))

    def backward(self, dy):
        return self.conv_dw.backward(self.conv_pw.backward(dy))

    def lower(self, graph, x, name):
        return self.lower_children(graph, x, name)

    def extra_repr(self):
        return f"{self.in_channels} -> {self.out_channels}, stride={self.stride}" + _dilation_repr(self.dilation)


class InvertedResidual(Layer):
    """V2/V3 block: [1x1 expand -> BN -> act] -> KxK depthwise -> BN -> act -> [SE] -> 1x1 project -> BN (+ x).

    The expansion is absent when the expanded width equals the input width (V2's t=1 row, V3's
    first rows); the projection has no activation: the linear bottleneck (V2 paper, section 3.2).
    `dilation` > 1 dilates the depthwise convolution and runs it at stride 1 (`conv_stride`).
    """

    def __init__(self, in_channels, expanded_channels, out_channels, kernel_size, stride, activation,
                 se_channels=None, bn_eps=1e-5, bn_momentum=0.1, rng=None, dilation=1):
        super().__init__()
        self.in_channels, self.expanded_channels, self.out_channels = in_channels, expanded_channels, out_channels
        self.kernel_size, self.stride, self.activation, self.dilation = kernel_size, stride, activation, dilation
        # V2 paper, Fig. 3b: the shortcut joins the bottlenecks when shapes agree.
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv_pw = None
        if expanded_channels != in_channels:
            pw = PointwiseConv2d(in_channels, expanded_channels, rng=rng)
            self.conv_pw = self.add_child("conv_pw", ConvBNAct(pw, bn_eps, bn_momentum, activation))
        dw = DepthwiseConv2d(expanded_channels, kernel_size, conv_stride(stride, dilation),
                             same_padding(kernel_size, dilation), dilation, rng=rng)
        self.conv_dw = self.add_child("conv_dw", ConvBNAct(dw, bn_eps, bn_momentum, activation))
        self.se = self.add_child("se", SqueezeExcite(expanded_channels, se_channels, rng=rng)) if se_channels else None
        pwl = PointwiseConv2d(expanded_channels, out_channels, rng=rng)
        self.conv_pwl = self.add_child("conv_pwl", ConvBNAct(pwl, bn_eps, bn_momentum, None))

    def forward(self, x):
        y = self.conv_pw(x) if self.conv_pw is not None else x
        y = self.conv_dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.conv_pwl(y)
        return x + y if self.use_residual else y

    def backward(self, dy):
        d = self.conv_pwl.backward(dy)
        if self.se is not None:
            d = self.se.backward(d)
        d = self.conv_dw.backward(d)
        if self.conv_pw is not None:
            d = self.conv_pw.backward(d)
        return d + dy if self.use_residual else d

    def lower(self, graph, x, name):
        y = self.lower_children(graph, x, name)
        return graph.add(Add(name, (x, y))) if self.use_residual else y

    def extra_repr(self):
        se = f", se={self.se.squeeze_channels}" if self.se is not None else ""
        return (f"{self.in_channels} -> {self.expanded_channels} -> {self.out_channels}, "
                f"k={self.kernel_size}, stride={self.stride}{_dilation_repr(self.dilation)}, act={self.activation}{se}")


class _Chain(Layer):
    """A block whose children run one after another (registration order), with the identity
    shortcut added around them when `use_residual`."""

    use_residual = False

    def forward(self, x):
        y = x
        for _, child in self.children():
            y = child(y)
        return x + y if self.use_residual else y

    def backward(self, dy):
        d = dy
        for _, child in reversed(self.children()):
            d = child.backward(d)
        return d + dy if self.use_residual else d

    def lower(self, graph, x, name):
        y = self.lower_children(graph, x, name)
        return graph.add(Add(name, (x, y))) if self.use_residual else y


class UniversalInvertedBottleneck(_Chain):
    """V4's UIB: [dw_start KxK -> BN] -> pw_exp 1x1 -> BN -> act -> [dw_mid KxK -> BN -> act]
    -> pw_proj 1x1 -> BN (+ x).

    `start_kernel_size` (0: none) and `mid_kernel_size` (0: none) choose the paper's instantiation:
    IB (0, k), ConvNext (k, 0), ExtraDW (k, k) and FFN (0, 0). The middle depthwise conv takes the
    stride when there is one, else the start one; the start depthwise conv has no activation and
    the projection none (the linear bottleneck). The shortcut joins when the stride is 1 and the
    width unchanged. Children are named as timm's `UniversalInvertedResidual` names them
    (dw_start, pw_exp, dw_mid, pw_proj); absent ones are not registered. `dilation` > 1 dilates
    both depthwise convolutions (as timm's) and runs them at stride 1.
    """

    def __init__(self, in_channels, expanded_channels, out_channels, start_kernel_size, mid_kernel_size, stride,
                 activation="relu", bn_eps=1e-5, bn_momentum=0.1, rng=None, dilation=1):
        super().__init__()
        if stride != 1 and not (start_kernel_size or mid_kernel_size):
            raise ValueError(f"a universal inverted bottleneck of stride {stride} needs a depthwise convolution "
                             "(start_kernel_size or mid_kernel_size > 0) to take the stride")
        self.in_channels, self.expanded_channels, self.out_channels = in_channels, expanded_channels, out_channels
        self.start_kernel_size, self.mid_kernel_size = start_kernel_size, mid_kernel_size
        self.stride, self.activation, self.dilation = stride, activation, dilation
        self.use_residual = stride == 1 and in_channels == out_channels
        self.dw_start = self.dw_mid = None
        stride = conv_stride(stride, dilation)
        if start_kernel_size:
            start_stride = 1 if mid_kernel_size else stride
            dw = DepthwiseConv2d(in_channels, start_kernel_size, start_stride, same_padding(start_kernel_size, dilation),
                                 dilation, rng=rng)
            self.dw_start = self.add_child("dw_start", ConvBNAct(dw, bn_eps, bn_momentum, None))
        pw = PointwiseConv2d(in_channels, expanded_channels, rng=rng)
        self.pw_exp = self.add_child("pw_exp", ConvBNAct(pw, bn_eps, bn_momentum, activation))
        if mid_kernel_size:
            dw = DepthwiseConv2d(expanded_channels, mid_kernel_size, stride, same_padding(mid_kernel_size, dilation),
                                 dilation, rng=rng)
            self.dw_mid = self.add_child("dw_mid", ConvBNAct(dw, bn_eps, bn_momentum, activation))
        pw = PointwiseConv2d(expanded_channels, out_channels, rng=rng)
        self.pw_proj = self.add_child("pw_proj", ConvBNAct(pw, bn_eps, bn_momentum, None))

    @property
    def variant(self):
        """The V4 paper's name for this combination of depthwise convolutions."""
        return {(True, True): "ExtraDW", (True, False): "ConvNext", (False, True): "IB",
                (False, False): "FFN"}[(bool(self.start_kernel_size), bool(self.mid_kernel_size))]

    def extra_repr(self):
        return (f"{self.variant}: {self.in_channels} -> {self.expanded_channels} -> {self.out_channels}, "
                f"k_start={self.start_kernel_size}, k_mid={self.mid_kernel_size}, stride={self.stride}"
                f"{_dilation_repr(self.dilation)}, act={self.activation}")


class FusedInvertedBottleneck(_Chain):
    """V4's FusedIB (timm's EdgeResidual): conv_exp KxK standard conv (stride s) -> BN -> act ->
    conv_pwl 1x1 -> BN (+ x when the stride is 1 and the width unchanged).

    The expansion and the depthwise convolution of an inverted bottleneck fused into one standard
    convolution (the V4 models' first block, on the large early feature maps).
    """

    def __init__(self, in_channels, expanded_channels, out_channels, kernel_size, stride, activation="relu",
                 bn_eps=1e-5, bn_momentum=0.1, rng=None, dilation=1):
        super().__init__()
        self.in_channels, self.expanded_channels, self.out_channels = in_channels, expanded_channels, out_channels
        self.kernel_size, self.stride, self.activation, self.dilation = kernel_size, stride, activation, dilation
        self.use_residual = stride == 1 and in_channels == out_channels
        conv = Conv2d(in_channels, expanded_channels, kernel_size, conv_stride(stride, dilation),
                      same_padding(kernel_size, dilation), dilation, rng=rng)
        self.conv_exp = self.add_child("conv_exp", ConvBNAct(conv, bn_eps, bn_momentum, activation))
        pw = PointwiseConv2d(expanded_channels, out_channels, rng=rng)
        self.conv_pwl = self.add_child("conv_pwl", ConvBNAct(pw, bn_eps, bn_momentum, None))

    def extra_repr(self):
        return (f"{self.in_channels} -> {self.expanded_channels} -> {self.out_channels}, "
                f"k={self.kernel_size}, stride={self.stride}{_dilation_repr(self.dilation)}, act={self.activation}")


def _dilation_repr(dilation):
    return f", dilation={dilation}" if dilation > 1 else ""
