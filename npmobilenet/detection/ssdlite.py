"""SSDLite320 with a MobileNetV3-Large backbone (V2 paper sec. 6.2; V3 paper sec. 6.2), as
torchvision's `ssdlite320_mobilenet_v3_large` builds it.

    backbone  V3-Large with the reduced tail (its last three blocks and 1x1 head conv at half
              width: 80 channels, expansions 672, 480, 480, head 480), batch norm eps 1e-3 and
              momentum 0.03; taps: "blocks.12.conv_pw" (block 12 after its expansion, 672
              channels, stride 16: torchvision's C4) and "head" (480, stride 32)
    extra     four blocks 1x1 (C/2) -> 3x3 depthwise stride 2 -> 1x1 (C), each with BN and ReLU6,
              to 512, 256, 256, 128 channels: at 320x320, maps of 5, 3, 2 and 1 cells
    heads     per map, depthwise 3x3 + BN + ReLU6 then a 1x1 conv with bias: 6 boxes per cell,
              K class logits (classification) or 4 offsets (regression) per box

x (N, 320, 320, 3) normalised with mean = std = 0.5 (torchvision's transform) ->
(cls_logits (N, 3234, K), bbox_regression (N, 3234, 4)) in torchvision's anchor order (map by
map, cell by cell, box by box); `anchors` (3234, 4) xyxy pixels; `detect(x)` post-processes.
3,440,060 parameters and 583,171,904 MACs at 320x320 with 91 classes (torchvision's counts).
"""
from dataclasses import replace

import numpy as np

from npmobilenet.detection.anchors import (
    SSDLITE_ASPECT_RATIOS, SSDLITE_MAX_RATIO, SSDLITE_MIN_RATIO, boxes_per_location, default_boxes,
)
from npmobilenet.detection.postprocess import postprocess_detections
from npmobilenet.graph.graph import INPUT, Builder, Graph
from npmobilenet.layers import (
    Conv2d, ConvBNAct, DepthwiseConv2d, InvertedResidual, Layer, Linear, PointwiseConv2d, Sequential,
)
from npmobilenet.layers.backbone import Backbone
from npmobilenet.models import build, make_divisible, scale_channels
from npmobilenet.ops.geometry import check_images

ARCH = "ssdlite320_mobilenet_v3_large"
IMAGE_SIZE = (320, 320)
TAPS = ("blocks.12.conv_pw", "head")
BN_EPS, BN_MOMENTUM = 1e-3, 0.03
EXTRA_CHANNELS = (512, 256, 256, 128)
REDUCED_TAIL = 3          # torchvision's reduced_tail: the last three blocks at half width
MIN_DEPTH = 16            # torchvision's min_depth for the extra blocks


def _reduce_tail(network, width, rng):
    """torchvision's `reduced_tail=True`: blocks 12-14 output 160 // 2 channels (expansions
    672, 960 // 2, 960 // 2) and the head conv 6 x that. Rebuilt here on the built network (the
    builder has no such option), spec included, so its feature taps describe what runs."""
    spec, blocks = network.spec, list(network.spec.blocks)
    out = scale_channels(160 // 2, width)
    for i in range(len(blocks) - REDUCED_TAIL, len(blocks)):
        b = blocks[i]
        expanded = b.expanded_channels if i == len(blocks) - REDUCED_TAIL else scale_channels(960 // 2, width)
        in_channels = blocks[i - 1].out_channels
        blocks[i] = replace(b, in_channels=in_channels, expanded_channels=expanded, out_channels=out,
                            se_channels=make_divisible(expanded // 4))
        network.blocks.add_child(str(i), InvertedResidual(
            in_channels, expanded, out, b.kernel_size, b.stride, b.activation, blocks[i].se_channels,
            spec.bn_eps, spec.bn_momentum, rng))
    head = 6 * out                              # V3's last conv: 6 x its input
    network.head = network.add_child("head", ConvBNAct(PointwiseConv2d(out, head, rng=rng), spec.bn_eps,
                                                       spec.bn_momentum, spec.head_activation))
    network.spec = replace(spec, blocks=tuple(blocks), head_channels=head)


def normal_init(model, rng, std=0.03):
    """torchvision's SSDLite initialisation (`_normal_init`): every convolution's weight ~ N(0, std^2)
    and its bias 0, the backbone's included when it is not pretrained; here also the
    squeeze-and-excitation layers, which torchvision holds as 1x1 convolutions."""
    for _, layer in model.modules():
        if isinstance(layer, (Conv2d, DepthwiseConv2d, PointwiseConv2d, Linear)):
            layer.weight.data[...] = rng.normal(0.0, std, layer.weight.data.shape)
            if layer.bias is not None:
                layer.bias.data[...] = 0.0


def extra_block(in_channels, out_channels, rng):
    """1x1 to out/2, 3x3 depthwise stride 2, 1x1 to out; BN and ReLU6 after each."""
    middle = out_channels // 2
    return Sequential([
        ConvBNAct(PointwiseConv2d(in_channels, middle, rng=rng), BN_EPS, BN_MOMENTUM, "relu6"),
        ConvBNAct(DepthwiseConv2d(middle, 3, 2, 1, rng=rng), BN_EPS, BN_MOMENTUM, "relu6"),
        ConvBNAct(PointwiseConv2d(middle, out_channels, rng=rng), BN_EPS, BN_MOMENTUM, "relu6"),
    ])


def prediction_block(in_channels, out_channels, rng):
    """3x3 depthwise + BN + ReLU6, then a 1x1 conv with bias (torchvision's _prediction_block)."""
    return Sequential([
        ConvBNAct(DepthwiseConv2d(in_channels, 3, 1, 1, rng=rng), BN_EPS, BN_MOMENTUM, "relu6"),
        PointwiseConv2d(in_channels, out_channels, bias=True, rng=rng),
    ])


class SSDLite(Layer):
    """x (N, H, W, 3) -> (cls_logits (N, A, K), bbox_regression (N, A, 4)); `backward(dcls,
    dbox)` -> dx and every parameter's gradient; `detect(x)` -> boxes, scores, labels per image."""

    def __init__(self, config, network, num_classes, extra_channels=EXTRA_CHANNELS, rng=None):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        self.backbone = self.add_child("backbone", Backbone(network, TAPS))
        channels = [tap.channels for tap in self.backbone.feature_info]
        self.extra = self.add_child("extra", Sequential())
        for c in extra_channels:
            self.extra.append(extra_block(channels[-1], c, rng))
            channels.append(c)
        self.boxes_per_location = boxes_per_location(SSDLITE_ASPECT_RATIOS)
        self.classification_head = self.add_child("classification_head", Sequential(
            [prediction_block(c, a * num_classes, rng) for c, a in zip(channels, self.boxes_per_location)]))
        self.regression_head = self.add_child("regression_head", Sequential(
            [prediction_block(c, a * 4, rng) for c, a in zip(channels, self.boxes_per_location)]))
        self._map_shapes = None
        self._anchors = {}

    @property
    def arch(self):
        return self.config["arch"]

    # -- the network ----------------------------------------------------------------------------
    def forward(self, x):
        x = check_images(x, self.dtype)
        maps = list(self.backbone(x))
        for block in self.extra:
            maps.append(block(maps[-1]))
        cls = [head(m) for head, m in zip(self.classification_head, maps)]
        box = [head(m) for head, m in zip(self.regression_head, maps)]
        self._map_shapes = [(c.shape, b.shape) for c, b in zip(cls, box)]
        # NHWC with channel a * K + k: (N, h, w, A K) -> (N, h w A, K) is torchvision's order
        n = x.shape[0]
        return (np.concatenate([c.reshape(n, -1, self.num_classes) for c in cls], axis=1),
                np.concatenate([b.reshape(n, -1, 4) for b in box], axis=1))

    def backward(self, dcls_logits, dbbox_regression):
        """Gradients of (cls_logits, bbox_regression) -> dx (N, H, W, 3)."""
        if self._map_shapes is None:
            raise RuntimeError("backward called before any forward pass")
        dcls_logits = np.ascontiguousarray(dcls_logits, self.dtype)
        dbbox_regression = np.ascontiguousarray(dbbox_regression, self.dtype)
        dmaps, start = [], 0
        for (cls_shape, box_shape), cls_head, box_head in zip(self._map_shapes, self.classification_head,
                                                               self.regression_head):
            count = cls_shape[1] * cls_shape[2] * cls_shape[3] // self.num_classes
            dc = np.ascontiguousarray(dcls_logits[:, start:start + count]).reshape(cls_shape)
            db = np.ascontiguousarray(dbbox_regression[:, start:start + count]).reshape(box_shape)
            dmaps.append(cls_head.backward(dc) + box_head.backward(db))
            start += count
        if start != dcls_logits.shape[1]:
            raise ValueError(f"gradients must cover the {start} anchors of the last forward pass, got "
                             f"{dcls_logits.shape[1]}")
        d = dmaps[-1]
        for k in range(len(self.extra) - 1, -1, -1):
            d = self.extra[k].backward(d) + dmaps[k + 1]
        return self.backbone.backward([dmaps[0], d])

    def lower(self, graph, x, name):
        """The ops of the backbone, extra blocks and heads; returns the heads' output tensors
        (classification maps, then regression maps, each (N, h, w, A*K) / (N, h, w, A*4)): their
        reshaping to (N, anchors, K) and concatenation (`head_outputs`) stay outside the graph."""
        prefix = f"{name}." if name else ""
        maps = list(self.backbone.lower(graph, x, f"{prefix}backbone"))
        for k, block in enumerate(self.extra):
            maps.append(block.lower(graph, maps[-1], f"{prefix}extra.{k}"))
        cls = [h.lower(graph, m, f"{prefix}classification_head.{k}")
               for k, (h, m) in enumerate(zip(self.classification_head, maps))]
        box = [h.lower(graph, m, f"{prefix}regression_head.{k}")
               for k, (h, m) in enumerate(zip(self.regression_head, maps))]
        return tuple(cls + box)

    def head_outputs(self, maps):
        """The lowered graph's outputs (`lower`: classification maps, then regression maps) ->
        (cls_logits (N, A, K), bbox_regression (N, A, 4)), as `forward` returns them."""
        return concatenate_heads(maps, self.num_classes)

    # -- anchors and detections -----------------------------------------------------------------
    def grid_sizes(self, image_size=IMAGE_SIZE):
        """(h, w) of each of the six maps for an input of image_size (height, width)."""
        builder = Builder()
        outputs = self.lower(builder, INPUT, "")
        shapes = Graph(builder.ops).shapes((1, *image_size, 3))
        return [tuple(shapes[t][1:3]) for t in outputs[:len(outputs) // 2]]

    def anchors_for(self, image_size):
        """Default boxes (A, 4) float32 xyxy pixels for an input of image_size (height, width)."""
        key = tuple(int(s) for s in image_size)
        if key not in self._anchors:
            self._anchors[key] = default_boxes(self.grid_sizes(key), key, SSDLITE_ASPECT_RATIOS,
                                               SSDLITE_MIN_RATIO, SSDLITE_MAX_RATIO)
        return self._anchors[key]

    @property
    def anchors(self):
        """Default boxes (3234, 4) float32 xyxy pixels at 320x320, torchvision's order."""
        return self.anchors_for(IMAGE_SIZE)

    def detect(self, x, **options):
        """x (N, H, W, 3) normalised -> per image a dict of `boxes` (D, 4) xyxy pixels, `scores`
        (D,), `labels` (D,), torchvision's post-processing (`postprocess_detections`; `options`
        override its thresholds). Runs the model as it is (call `eval()` first)."""
        cls_logits, bbox_regression = self.forward(x)
        return postprocess_detections(cls_logits, bbox_regression, self.anchors_for(x.shape[1:3]), x.shape[1:3],
                                      **options)

    def fuse(self, threads=None):
        """An inference-only copy (`FusedSSDLite`): the lowered graph, batch norm folded, run by
        fused inference (`npmobilenet.inference.fuse_model`). The model must be in eval mode."""
        from npmobilenet.inference import fuse_model

        return FusedSSDLite(fuse_model(self, threads))

    def extra_repr(self):
        return f"{self.config['arch']}, width={self.config['width']}, num_classes={self.num_classes}"


class FusedSSDLite:
    """SSDLite's fused inference: `fused(x) -> (cls_logits (N, A, K), bbox_regression (N, A, 4))`
    and `detect(x)`, as the model computes them. `network` (a `FusedMobileNet`) runs the lowered
    graph, whose twelve outputs are the heads' maps; their concatenation in torchvision's anchor
    order, the default boxes (from the maps' sizes) and the post-processing stay outside it, as
    in the ONNX export. Built by `SSDLite.fuse()`."""

    training = False

    def __init__(self, network):
        self.network = network
        self.config = network.config
        self.num_classes = network.num_classes
        self._anchors = {}

    def __call__(self, x):
        return concatenate_heads(self.network(x), self.num_classes)

    forward = __call__

    def detect(self, x, **options):
        """As `SSDLite.detect`: per image a dict of `boxes`, `scores`, `labels`."""
        x = check_images(x, np.float32)
        maps = self.network(x)
        size = tuple(x.shape[1:3])
        if size not in self._anchors:
            grids = [m.shape[1:3] for m in maps[:len(maps) // 2]]
            self._anchors[size] = default_boxes(grids, size, SSDLITE_ASPECT_RATIOS, SSDLITE_MIN_RATIO,
                                                SSDLITE_MAX_RATIO)
        cls_logits, bbox_regression = concatenate_heads(maps, self.num_classes)
        return postprocess_detections(cls_logits, bbox_regression, self._anchors[size], size, **options)

    @property
    def threads(self):
        return self.network.threads

    @property
    def last_threads(self):
        return self.network.last_threads

    @property
    def activation_bytes(self):
        return self.network.activation_bytes

    def set_threads(self, threads, adaptive=None):
        self.network.set_threads(threads, adaptive)
        return self

    def eval(self):
        return self

    def train(self, mode=True):
        self.network.train(mode)
        return self

    def __repr__(self):
        return "FusedSSDLite(" + repr(self.network)[len("FusedMobileNet("):]


def concatenate_heads(maps, num_classes):
    """SSDLite's head maps NHWC, the classification maps (N, h, w, A K) then as many regression
    maps (N, h, w, A 4) -> (cls_logits (N, A_total, K), bbox_regression (N, A_total, 4)) in
    torchvision's anchor order (map by map, cell by cell, box by box)."""
    half = len(maps) // 2
    n = maps[0].shape[0]
    return (np.concatenate([np.reshape(m, (n, -1, num_classes)) for m in maps[:half]], axis=1),
            np.concatenate([np.reshape(m, (n, -1, 4)) for m in maps[half:]], axis=1))


def ssdlite320_mobilenet_v3_large(num_classes=91, width=1.0, seed=0, extra_width=1.0, **overrides):
    """SSDLite320 on V3-Large (reduced tail) as torchvision builds it. `width` narrows the
    backbone and `extra_width` the extra blocks (torchvision: 1.0 and 1.0; max(16, int(c x)) as
    its min_depth rule), for small demos. `overrides` go to the backbone's `build`."""
    options = dict(bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM)
    options.update(overrides)
    rng = np.random.default_rng([seed, 3])
    network = build("mobilenet_v3_large", width=width, num_classes=1, seed=seed, **options)
    _reduce_tail(network, width, rng)
    extra = tuple(max(MIN_DEPTH, int(c * extra_width)) for c in EXTRA_CHANNELS)
    config = dict(arch=ARCH, width=float(width), num_classes=int(num_classes), **overrides)
    if extra_width != 1.0:
        config["extra_width"] = float(extra_width)
    model = SSDLite(config, network, int(num_classes), extra, rng)
    normal_init(model, rng)
    return model
