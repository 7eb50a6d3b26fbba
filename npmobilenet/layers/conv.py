"""Convolution layers: standard, depthwise and pointwise, each with an optional bias.

The arithmetic lives in `npmobilenet.ops`; a layer owns the weight, caches its input for the
backward pass, and adds the bias. Initialisation follows torchvision's MobileNets (He normal with
fan-out), so a model trained here starts where theirs does.
"""
import numpy as np

from npmobilenet import ops
from npmobilenet.graph.ops import Conv
from npmobilenet.layers.base import Layer
from npmobilenet.ops.geometry import as_pair, as_padding, tf_same_sides


def _he_normal(rng, shape, fan_out, dtype=np.float32):
    # He et al. (2015), Eq. (14) applied to the backward pass: std = sqrt(2 / fan_out).
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)).astype(dtype)


class _Conv(Layer):
    """A convolution op (`_op`, `_op_backward`: calls into npmobilenet.ops, looked up at call time so
    tests can instrument the ops) with a weight and an optional bias."""

    def __init__(self, in_channels, out_channels, weight, bias):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = self.add_param("weight", weight)
        self.bias = self.add_param("bias", np.zeros(out_channels, weight.dtype), decay=False) if bias else None
        self._x = None

    def _geometry(self, x_shape):
        return {}

    def _lowered_geometry(self):
        return {}

    def lower(self, graph, x, name):
        bias = self.bias.data if self.bias is not None else None
        return graph.add(Conv(name, (x,), self.variant, self.weight.data, bias, **self._lowered_geometry()))

    def forward(self, x):
        if x.ndim != 4 or x.shape[3] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects x of shape (N, H, W, {self.in_channels}), got {x.shape}")
        self._x = x
        y = self._op(x, self.weight.data, **self._geometry(x.shape))
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy):
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        dx, dw = self._op_backward(dy, self._x, self.weight.data, **self._geometry(self._x.shape))
        self.weight.grad[...] = dw
        if self.bias is not None:
            self.bias.grad[...] = dy.sum(axis=(0, 1, 2))
        return dx


class _SpatialConv(_Conv):
    """A convolution with a KH x KW window: stride, padding (top, bottom, left, right), dilation.

    `padding="same"` pads as TensorFlow does (`ops.geometry.tf_same_sides`), which depends on
    the input size: `padding_at(H, W)` gives the sides for an input (`padding` is then None).
    """

    def __init__(self, in_channels, out_channels, weight, kernel_size, stride, padding, dilation, bias):
        self.kernel_size = as_pair(kernel_size, "kernel_size")
        self.stride = as_pair(stride, "stride")
        self.dilation = as_pair(dilation, "dilation")
        self.set_padding(padding)
        super().__init__(in_channels, out_channels, weight, bias)

    def set_padding(self, padding):
        """Fixed sides (int, pair, ((top, bottom), (left, right))) or TensorFlow's 'same'."""
        self.same = isinstance(padding, str) and padding == "same"
        if isinstance(padding, str) and not self.same:
            raise ValueError(f"padding must be an int, a pair, ((top, bottom), (left, right)) or 'same', got {padding!r}")
        self.padding = None if self.same else as_padding(padding)

    def padding_at(self, height, width):
        """(top, bottom, left, right) for an input of height x width."""
        if not self.same:
            return self.padding
        return tf_same_sides(height, width, self.kernel_size, self.stride, self.dilation)

    def _geometry(self, x_shape):
        t, b, l, r = self.padding_at(x_shape[1], x_shape[2])
        return dict(stride=self.stride, padding=((t, b), (l, r)), dilation=self.dilation)

    def _lowered_geometry(self):
        return dict(stride=self.stride, padding="same" if self.same else self.padding, dilation=self.dilation)

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, kernel={self.kernel_size}, stride={self.stride}"


class Conv2d(_SpatialConv):
    """Standard convolution. x: (N, H, W, Cin) -> y: (N, Ho, Wo, Cout); weight (KH, KW, Cin, Cout)."""

    variant = "standard"

    def _op(self, x, w, **geometry):
        return ops.conv2d(x, w, **geometry)

    def _op_backward(self, dy, x, w, **geometry):
        return ops.conv2d_backward(dy, x, w, **geometry)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=False, rng=None):
        kh, kw = as_pair(kernel_size, "kernel_size")
        rng = rng if rng is not None else np.random.default_rng(0)
        weight = _he_normal(rng, (kh, kw, in_channels, out_channels), kh * kw * out_channels)
        super().__init__(in_channels, out_channels, weight, kernel_size, stride, padding, dilation, bias)


class DepthwiseConv2d(_SpatialConv):
    """Depthwise convolution: one KH x KW filter per channel (V1 paper, Eq. 3).

    x: (N, H, W, C) -> y: (N, Ho, Wo, C); weight (KH, KW, C).
    """

    variant = "depthwise"

    def _op(self, x, w, **geometry):
        return ops.depthwise_conv2d(x, w, **geometry)

    def _op_backward(self, dy, x, w, **geometry):
        return ops.depthwise_conv2d_backward(dy, x, w, **geometry)

    def __init__(self, channels, kernel_size, stride=1, padding=0, dilation=1, bias=False, rng=None):
        kh, kw = as_pair(kernel_size, "kernel_size")
        rng = rng if rng is not None else np.random.default_rng(0)
        # torchvision's fan-out of a depthwise weight (C, 1, KH, KW) is C * KH * KW.
        weight = _he_normal(rng, (kh, kw, channels), kh * kw * channels)
        super().__init__(channels, channels, weight, kernel_size, stride, padding, dilation, bias)


class PointwiseConv2d(_Conv):
    """1x1 convolution: a matrix product over channels (V1 paper, section 3.1).

    x: (N, H, W, Cin) -> y: (N, H, W, Cout); weight (Cin, Cout).
    """

    variant = "pointwise"
    kernel_size = (1, 1)
    stride = (1, 1)

    def _op(self, x, w, **geometry):
        return ops.pointwise_conv2d(x, w, **geometry)

    def _op_backward(self, dy, x, w, **geometry):
        return ops.pointwise_conv2d_backward(dy, x, w, **geometry)

    def __init__(self, in_channels, out_channels, bias=False, rng=None):
        rng = rng if rng is not None else np.random.default_rng(0)
        weight = _he_normal(rng, (in_channels, out_channels), out_channels)
        super().__init__(in_channels, out_channels, weight, bias)

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}"
