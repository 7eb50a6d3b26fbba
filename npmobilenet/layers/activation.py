"""Activations: ReLU, ReLU6, hard-sigmoid and hard-swish (V3 paper, section 5.2).

Each is elementwise, so its backward multiplies dy by the derivative at the cached input. At the
kinks the derivative is taken as PyTorch takes it, so gradients match torch's bit for bit there.
"""
import numpy as np

from npmobilenet.graph.ops import Activation
from npmobilenet.layers.base import Layer


class _Elementwise(Layer):
    def forward(self, x):
        self._x = x
        return self.function(x)

    def backward(self, dy):
        x = getattr(self, "_x", None)
        if x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return dy * self.derivative(x)

    def lower(self, graph, x, name):
        return graph.add(Activation(name, (x,), self.function_name))


class ReLU(_Elementwise):
    """max(x, 0)."""

    function_name = "relu"

    @staticmethod
    def function(x):
        return np.maximum(x, 0)

    @staticmethod
    def derivative(x):
        return (x > 0).astype(x.dtype)


class ReLU6(_Elementwise):
    """min(max(x, 0), 6): the ReLU the released MobileNets use, robust at low precision (V2, sec. 3)."""

    function_name = "relu6"

    @staticmethod
    def function(x):
        return np.clip(x, 0, 6)

    @staticmethod
    def derivative(x):
        return ((x > 0) & (x < 6)).astype(x.dtype)


class HardSigmoid(_Elementwise):
    """relu6(x + 3) / 6: the piecewise-linear sigmoid of V3 (sec. 5.2), used as SE's gate."""

    function_name = "hardsigmoid"

    @staticmethod
    def function(x):
        return np.clip(x + 3, 0, 6) / 6

    @staticmethod
    def derivative(x):
        return (((x > -3) & (x < 3)) / 6).astype(x.dtype)


class HardSwish(_Elementwise):
    """x * relu6(x + 3) / 6 (V3 paper, Eq. 2)."""

    function_name = "hardswish"

    @staticmethod
    def function(x):
        return x * (np.clip(x + 3, 0, 6) / 6)

    @staticmethod
    def derivative(x):
        # d/dx [x (x + 3) / 6] = (2x + 3) / 6 inside (-3, 3); 0 below, 1 above (as torch at the kinks).
        return np.where(x < -3, 0, np.where(x <= 3, (2 * x + 3) / 6, 1)).astype(x.dtype)


ACTIVATIONS = {"relu": ReLU, "relu6": ReLU6, "hardsigmoid": HardSigmoid, "hardswish": HardSwish}


def make_activation(name):
    """The activation layer for `name` (a key of ACTIVATIONS), or None for a linear layer."""
    if name is None:
        return None
    return ACTIVATIONS[name]()
