"""LR-ASPP (Lite Reduced Atrous Spatial Pyramid Pooling): V3 paper (Howard et al., 2019), sec.
6.3 and Fig. 10, as torchvision's `lraspp_mobilenet_v3_large` builds it.

    backbone  V3-Large with its last three blocks dilated (output stride 16); taps: "blocks.3"
              (the first 40-channel block, stride 8: torchvision's features[4]) and "head" (the
              1x1 conv to 960 channels, stride 16: features[16])
    head      a = ReLU(BN(conv1x1(high)))                      960 -> 128
              s = sigmoid(fc(mean_hw(high)))                   960 -> 128, no bias (the gate)
              y = low_classifier(low) + high_classifier(resize(a * s, low's size))
    logits    resize(y, the input's size)                      bilinear, align_corners=False

x (N, H, W, 3) normalised (ImageNet mean and std) -> logits (N, H, W, K) for any H, W >= 32.
3,221,538 parameters and 2,086,219,688 MACs at 520x520 with 21 classes (torchvision's counts).
"""
import numpy as np

from npmobilenet.graph.ops import Activation, Add, ChannelScale, Resize
from npmobilenet.layers import ConvBNAct, GlobalAvgPool, Layer, Linear, PointwiseConv2d
from npmobilenet.layers.backbone import Backbone
from npmobilenet.layers.resize import BilinearResize
from npmobilenet.models import build
from npmobilenet.ops.geometry import check_images

ARCH = "lraspp_mobilenet_v3_large"
TAPS = ("blocks.3", "head")
INTER_CHANNELS = 128
HEAD_BN_EPS, HEAD_BN_MOMENTUM = 1e-5, 0.1      # torchvision's head uses BatchNorm2d's defaults


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), elementwise; the derivative s (1 - s)."""

    def forward(self, x):
        e = np.exp(-np.abs(x))                  # never overflows: exp of a non-positive number
        self._y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
        return self._y

    def backward(self, dy):
        y = getattr(self, "_y", None)
        if y is None:
            raise RuntimeError("Sigmoid.backward called before forward")
        return dy * y * (1 - y)

    def lower(self, graph, x, name):
        return graph.add(Activation(name, (x,), "sigmoid"))


class LRASPPHead(Layer):
    """(low (N, h8, w8, Cl), high (N, h16, w16, Ch)) -> (N, h8, w8, K)."""

    def __init__(self, low_channels, high_channels, num_classes, inter_channels=INTER_CHANNELS, rng=None):
        super().__init__()
        conv = PointwiseConv2d(high_channels, inter_channels, rng=rng)
        self.cbr = self.add_child("cbr", ConvBNAct(conv, HEAD_BN_EPS, HEAD_BN_MOMENTUM, "relu"))
        self.pool = GlobalAvgPool()
        self.scale = self.add_child("scale", Linear(high_channels, inter_channels, bias=False, rng=rng,
                                                     init_std=np.sqrt(2.0 / inter_channels)))
        self.gate = Sigmoid()
        self.up = BilinearResize()
        self.low_classifier = self.add_child("low_classifier", PointwiseConv2d(low_channels, num_classes, bias=True, rng=rng))
        self.high_classifier = self.add_child("high_classifier",
                                              PointwiseConv2d(inter_channels, num_classes, bias=True, rng=rng))

    def __call__(self, low, high):
        return self.forward(low, high)

    def forward(self, low, high):
        a = self.cbr(high)
        s = self.gate(self.scale(self.pool(high)))
        self._gated = (a, s)
        up = self.up(a * s[:, None, None, :], low.shape[1:3])
        return self.low_classifier(low) + self.high_classifier(up)

    def backward(self, dy):
        """dy (N, h8, w8, K) -> (dlow, dhigh)."""
        a, s = self._gated
        dlow = self.low_classifier.backward(dy)
        dgated = self.up.backward(self.high_classifier.backward(dy))
        dhigh = self.cbr.backward(dgated * s[:, None, None, :])
        ds = (dgated * a).sum(axis=(1, 2))
        return dlow, dhigh + self.pool.backward(self.scale.backward(self.gate.backward(ds)))

    def lower(self, graph, low, high, name):
        a = self.cbr.lower(graph, high, f"{name}.cbr")
        s = self.pool.lower(graph, high, f"{name}.pool")
        s = self.gate.lower(graph, self.scale.lower(graph, s, f"{name}.scale"), f"{name}.gate")
        gated = graph.add(ChannelScale(f"{name}.gated", (a, s)))
        up = graph.add(Resize(f"{name}.up", (gated, low)))
        y_low = self.low_classifier.lower(graph, low, f"{name}.low_classifier")
        y_high = self.high_classifier.lower(graph, up, f"{name}.high_classifier")
        return graph.add(Add(f"{name}.add", (y_low, y_high)))


class LRASPP(Layer):
    """x (N, H, W, 3) -> logits (N, H, W, num_classes); `backward(dlogits)` -> dx and every
    parameter's gradient. `config` rebuilds it with `npmobilenet.build(**config)`."""

    def __init__(self, config, network, num_classes, rng=None):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        self.backbone = self.add_child("backbone", Backbone(network, TAPS))
        low, high = (tap.channels for tap in self.backbone.feature_info)
        self.classifier = self.add_child("classifier", LRASPPHead(low, high, num_classes, rng=rng))
        self.upsample = BilinearResize()
        self._input_shape = None

    @property
    def arch(self):
        return self.config["arch"]

    def forward(self, x):
        x = check_images(x, self.dtype)
        low, high = self.backbone(x)
        y = self.upsample(self.classifier(low, high), x.shape[1:3])
        self._input_shape = x.shape
        return y

    def backward(self, dlogits):
        if self._input_shape is None:
            raise RuntimeError("backward called before any forward pass")
        dlogits = np.ascontiguousarray(dlogits, dtype=self.dtype)
        dlow, dhigh = self.classifier.backward(self.upsample.backward(dlogits))
        return self.backbone.backward([dlow, dhigh])

    def lower(self, graph, x, name):
        prefix = f"{name}." if name else ""
        low, high = self.backbone.lower(graph, x, f"{prefix}backbone")
        y = self.classifier.lower(graph, low, high, f"{prefix}classifier")
        return graph.add(Resize(f"{prefix}upsample", (y, x)))

    def predict(self, x):
        """x (N, H, W, 3) -> the class of each pixel (N, H, W) int64."""
        return self.forward(x).argmax(axis=3)

    def fuse(self, threads=None):
        """An inference-only copy: the lowered graph, batch norm folded, run by fused inference
        (`npmobilenet.inference.fuse_model`): `fused(x)` -> logits (N, H, W, K). Eval mode only."""
        from npmobilenet.inference import fuse_model

        return fuse_model(self, threads)

    def extra_repr(self):
        return f"{self.config['arch']}, width={self.config['width']}, num_classes={self.num_classes}"


def lraspp_mobilenet_v3_large(num_classes=21, width=1.0, seed=0, **overrides):
    """LR-ASPP on V3-Large as torchvision builds it (width 1.0; a smaller width narrows the
    backbone, for small demos). `overrides` go to the backbone's `build` (e.g. bn_eps)."""
    network = build("mobilenet_v3_large", width=width, num_classes=1, seed=seed, output_stride=16,
                             **overrides)
    config = dict(arch=ARCH, width=float(width), num_classes=int(num_classes), **overrides)
    return LRASPP(config, network, int(num_classes), rng=np.random.default_rng([seed, 2]))
