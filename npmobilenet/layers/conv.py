"""Convolution layers: standard, depthwise and pointwise, each with an optional bias.

The arithmetic lives in `npmobilenet.ops`; a layer owns the weight, caches its input for the
backward pass, and adds the bias. Initialisation follows torchvision's MobileNets (He normal with
fan-out), so a model trained here starts where theirs does.
"""
import numpy as np

from npmobilenet import ops
from npmobilenet.layers.base import Layer
from npmobilenet.ops.geometry import as_pair, as_padding


def _he_normal(rng, shape, fan_out, dtype=np.float32):
    # He et al. (2015), Eq. (14) applied to the backward pass: std = sqrt(2 / fan_out).
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)).astype(dtype)


class _ConvBase(Layer):
    def __init__(self):
        super().__init__()
        self._x = None

    def _make_bias(self, bias):
        if not bias:
            return None
        return self.add_param("bias", np.zeros(self.out_channels, self.weight.data.dtype), decay=False)

    def _check_input(self, x):
        if x.ndim != 4 or x.shape[3] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (N, H, W, {self.in_channels}), got {x.shape}"
            )

    def _add_bias(self, y):
        if self.bias is not None:
            y += self.bias.data
        return y

    def _bias_backward(self, dy):
        if self.bias is not None:
            self.bias.grad[...] = dy.sum(axis=(0, 1, 2))

    def _cached_input(self):
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._x


class Conv2d(_ConvBase):
    """Standard convolution. x: (N, H, W, Cin) -> y: (N, Ho, Wo, Cout); weight (KH, KW, Cin, Cout)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=False, rng=None):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = as_pair(kernel_size, "kernel_size")
        self.stride = as_pair(stride, "stride")
        self.padding = as_padding(padding)
        self.dilation = as_pair(dilation, "dilation")
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        kh, kw = self.kernel_size
        self.weight = self.add_param("weight", _he_normal(rng, (kh, kw, in_channels, out_channels), kh * kw * out_channels))
        self.bias = self._make_bias(bias)

    def _geometry(self):
        t, b, l, r = self.padding
        return dict(stride=self.stride, padding=((t, b), (l, r)), dilation=self.dilation)

    def forward(self, x):
        self._check_input(x)
        self._x = x
        return self._add_bias(ops.conv2d(x, self.weight.data, **self._geometry()))

    def backward(self, dy):
        dx, dw = ops.conv2d_backward(dy, self._cached_input(), self.weight.data, **self._geometry())
        self.weight.grad[...] = dw
        self._bias_backward(dy)
        return dx

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, kernel={self.kernel_size}, stride={self.stride}"


class DepthwiseConv2d(_ConvBase):
    """Depthwise convolution: one KH x KW filter per channel (V1 paper, Eq. 3).

    x: (N, H, W, C) -> y: (N, Ho, Wo, C); weight (KH, KW, C).
    """

    def __init__(self, channels, kernel_size, stride=1, padding=0, dilation=1, bias=False, rng=None):
        self.in_channels = self.out_channels = channels
        self.kernel_size = as_pair(kernel_size, "kernel_size")
        self.stride = as_pair(stride, "stride")
        self.padding = as_padding(padding)
        self.dilation = as_pair(dilation, "dilation")
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        kh, kw = self.kernel_size
        # torchvision's fan-out of a depthwise weight (C, 1, KH, KW) is C * KH * KW.
        self.weight = self.add_param("weight", _he_normal(rng, (kh, kw, channels), kh * kw * channels))
        self.bias = self._make_bias(bias)

    def _geometry(self):
        t, b, l, r = self.padding
        return dict(stride=self.stride, padding=((t, b), (l, r)), dilation=self.dilation)

    def forward(self, x):
        self._check_input(x)
        self._x = x
        return self._add_bias(ops.depthwise_conv2d(x, self.weight.data, **self._geometry()))

    def backward(self, dy):
        dx, dw = ops.depthwise_conv2d_backward(dy, self._cached_input(), self.weight.data, **self._geometry())
        self.weight.grad[...] = dw
        self._bias_backward(dy)
        return dx

    def extra_repr(self):
        return f"{self.in_channels}, kernel={self.kernel_size}, stride={self.stride}"


class PointwiseConv2d(_ConvBase):
    """1x1 convolution: a matrix product over channels (V1 paper, section 3.1).

    x: (N, H, W, Cin) -> y: (N, H, W, Cout); weight (Cin, Cout).
    """

    kernel_size = (1, 1)
    stride = (1, 1)

    def __init__(self, in_channels, out_channels, bias=False, rng=None):
        self.in_channels, self.out_channels = in_channels, out_channels
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.weight = self.add_param("weight", _he_normal(rng, (in_channels, out_channels), out_channels))
        self.bias = self._make_bias(bias)

    def forward(self, x):
        self._check_input(x)
        self._x = x
        return self._add_bias(ops.pointwise_conv2d(x, self.weight.data))

    def backward(self, dy):
        dx, dw = ops.pointwise_conv2d_backward(dy, self._cached_input(), self.weight.data)
        self.weight.grad[...] = dw
        self._bias_backward(dy)
        return dx

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}"
