"""Fully connected layer and dropout, on (N, features)."""
import numpy as np

from npmobilenet.graph import ops as graph_ops
from npmobilenet.layers.base import Layer


class Linear(Layer):
    """y = x W + b. x: (N, Cin) -> y: (N, Cout); weight (Cin, Cout), bias (Cout,).

    Initialised as torchvision's MobileNet classifiers: weight ~ N(0, 0.01^2), bias 0.
    """

    def __init__(self, in_features, out_features, bias=True, rng=None, init_std=0.01):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        rng = rng if rng is not None else np.random.default_rng(0)
        w = (rng.standard_normal((in_features, out_features)) * init_std).astype(np.float32)
        self.weight = self.add_param("weight", w)
        self.bias = self.add_param("bias", np.zeros(out_features, np.float32), decay=False) if bias else None
        self._x = None

    # the convolution layers' names for the same widths, so ConvBNAct can wrap a Linear (V4's
    # post-pooling layer: a 1x1 conv on a 1x1 map is a fully connected layer followed by batch norm)
    @property
    def in_channels(self):
        return self.in_features

    @property
    def out_channels(self):
        return self.out_features

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects x of shape (N, {self.in_features}), got {x.shape}")
        self._x = x
        y = x @ self.weight.data
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy):
        if self._x is None:
            raise RuntimeError("Linear.backward called before forward")
        self.weight.grad[...] = self._x.T @ dy
        if self.bias is not None:
            self.bias.grad[...] = dy.sum(axis=0)
        return dy @ self.weight.data.T

    def lower(self, graph, x, name):
        bias = self.bias.data if self.bias is not None else None
        return graph.add(graph_ops.Linear(name, (x,), self.weight.data, bias))

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by
    1/(1-p), so eval mode is the identity. The random generator is the layer's own, seeded by the
    model's seed, so the same seed gives the same training run; `rng` is part of a checkpoint."""

    def __init__(self, p, rng=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p}")
        self.p = p
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0:
            self._mask = None
            return x
        keep = 1.0 - self.p
        self._mask = (self.rng.random(x.shape) < keep).astype(x.dtype) / x.dtype.type(keep)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask

    def lower(self, graph, x, name):
        return x  # the identity at inference

    def extra_repr(self):
        return f"p={self.p}"
