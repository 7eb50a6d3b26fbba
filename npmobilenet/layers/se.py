"""Squeeze-and-excitation (Hu et al., 2018) as MobileNetV3 uses it (V3 paper, section 5.3).

    s = hard_sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2),   y = x * s   (per image and channel)

x, y: (N, H, W, C); W1 (C, S) and W2 (S, C) are the `reduce` and `expand` layers, with
S = make_divisible(C / 4, 8) in torchvision's V3.
"""
from npmobilenet.graph.ops import ChannelScale
from npmobilenet.layers.activation import HardSigmoid, ReLU
from npmobilenet.layers.base import Layer
from npmobilenet.layers.linear import Linear
from npmobilenet.layers.pooling import GlobalAvgPool


class SqueezeExcite(Layer):
    def __init__(self, channels, squeeze_channels, rng=None):
        super().__init__()
        self.channels, self.squeeze_channels = channels, squeeze_channels
        self.pool = GlobalAvgPool()
        # torchvision's fc1/fc2 are 1x1 convolutions with bias, initialised like every conv.
        fc_std = lambda fan_out: (2.0 / fan_out) ** 0.5  # noqa: E731
        self.reduce = self.add_child("reduce", Linear(channels, squeeze_channels, rng=rng, init_std=fc_std(squeeze_channels)))
        self.relu = ReLU()
        self.expand = self.add_child("expand", Linear(squeeze_channels, channels, rng=rng, init_std=fc_std(channels)))
        self.gate = HardSigmoid()
        self._cache = None

    def forward(self, x):
        s = self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))
        self._cache = (x, s)
        return x * s[:, None, None, :]

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("SqueezeExcite.backward called before forward")
        x, s = self._cache
        # y = x * s: x gets dy * s directly, and again through s (which depends on mean(x)).
        ds = (dy * x).sum(axis=(1, 2))
        dx_through_s = self.pool.backward(self.reduce.backward(self.relu.backward(self.expand.backward(self.gate.backward(ds)))))
        return dy * s[:, None, None, :] + dx_through_s

    def lower(self, graph, x, name):
        s = self.pool.lower(graph, x, f"{name}.pool")
        s = self.relu.lower(graph, self.reduce.lower(graph, s, f"{name}.reduce"), f"{name}.relu")
        s = self.gate.lower(graph, self.expand.lower(graph, s, f"{name}.expand"), f"{name}.gate")
        return graph.add(ChannelScale(name, (x, s)))

    def extra_repr(self):
        return f"{self.channels}, squeeze={self.squeeze_channels}"
