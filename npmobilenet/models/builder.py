"""One builder for every MobileNet: decode a paper's table into block specs, then assemble.

The choices the papers leave open (first and last layer widths under a width multiplier, SE
width, batch-norm eps and momentum, dropout, classifier head) follow torchvision's models, so
their published weights load without changing the architecture; V4, which torchvision lacks,
follows timm's (`timm.models.mobilenetv3._gen_mobilenet_v4`), whose weights are the published ones.
"""
from dataclasses import dataclass, replace

import numpy as np

from npmobilenet.layers import (
    Conv2d, ConvBNAct, DepthwiseSeparable, Dropout, FusedInvertedBottleneck, HardSwish, InvertedResidual, Linear,
    PointwiseConv2d, Sequential, UniversalInvertedBottleneck,
)
from npmobilenet.layers.blocks import same_padding
from npmobilenet.models import tables
from npmobilenet.models.mobilenet import MobileNet

ARCHS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
         "mobilenet_v4_conv_small", "mobilenet_v4_conv_medium", "mobilenet_v4_conv_large")


def make_divisible(value, divisor=8):
    """Round `value` to the nearest multiple of `divisor`, never below `divisor` nor below 90% of
    `value` (the rule of the official TensorFlow MobileNets, kept by torchvision and timm)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scale_channels(channels, width):
    """Channels of a layer under width multiplier `width` (V1 paper, section 3.3: alpha)."""
    return make_divisible(channels * width)


@dataclass(frozen=True)
class BlockSpec:
    """One block of the network, at its final (width-scaled) channel counts."""
    kind: str                 # "separable" (V1), "inverted_residual" (V2, V3); V4: "conv",
                              # "fused_inverted_bottleneck", "universal_inverted_bottleneck"
    in_channels: int
    expanded_channels: int    # = in_channels for V1 and for unexpanded inverted residuals; = out_channels for "conv"
    out_channels: int
    kernel_size: int          # the depthwise kernel; "conv", fused: the conv's; universal: the middle one (0: none)
    stride: int
    activation: str
    se_channels: int = 0      # 0: no squeeze-and-excitation
    start_kernel_size: int = 0  # universal inverted bottleneck: the depthwise kernel before the expansion (0: none)
    dilation: int = 1         # > 1: the block's KxK convolutions are dilated and run at stride 1 (output_stride < 32)


@dataclass(frozen=True)
class ArchSpec:
    stem_channels: int
    stem_activation: str
    blocks: tuple
    head_channels: int        # 0: no 1x1 head conv (V1)
    head_activation: str
    last_channels: int        # 0: the classifier is one Linear; else Linear -> hard-swish -> dropout -> Linear (V3)
    dropout: float
    bn_eps: float
    bn_momentum: float
    last_norm: bool = False   # V4: Linear without bias -> BN -> ReLU -> dropout -> Linear (timm's head_norm)


# Per-architecture defaults, torchvision's (V1: timm's mobilenetv1_100 and the TF release).
DEFAULTS = {
    "mobilenet_v1": dict(bn_eps=1e-5, bn_momentum=0.1, dropout=0.0),
    "mobilenet_v2": dict(bn_eps=1e-5, bn_momentum=0.1, dropout=0.2),
    # torchvision's V3 uses TensorFlow's batch-norm constants.
    "mobilenet_v3_large": dict(bn_eps=1e-3, bn_momentum=0.01, dropout=0.2),
    "mobilenet_v3_small": dict(bn_eps=1e-3, bn_momentum=0.01, dropout=0.2),
    # V4: timm's batch-norm constants (PyTorch's defaults, its weights' statistics); dropout as the
    # paper's authors trained them (tensorflow/models, official/vision/configs/experiments/
    # image_classification/imagenet_mobilenetv4_conv_{small,medium,large}_tpu.yaml: dropout_rate).
    "mobilenet_v4_conv_small": dict(bn_eps=1e-5, bn_momentum=0.1, dropout=0.3),
    "mobilenet_v4_conv_medium": dict(bn_eps=1e-5, bn_momentum=0.1, dropout=0.2),
    "mobilenet_v4_conv_large": dict(bn_eps=1e-5, bn_momentum=0.1, dropout=0.2),
}
# Per-block overrides: one int per block of the architecture.
PER_BLOCK = ("expanded_channels", "se_channels")
OVERRIDES = ("bn_eps", "bn_momentum", "dropout", "stem_channels", "head_channels", "last_channels",
             "repeats", "padding", "output_stride") + PER_BLOCK
OUTPUT_STRIDES = (8, 16, 32)
STEM_STRIDE = 2  # every MobileNet's first convolution
# V4's tables: (stem width, block rows).
V4_TABLES = {
    "mobilenet_v4_conv_small": (tables.V4_CONV_SMALL_STEM, tables.V4_CONV_SMALL_BLOCKS),
    "mobilenet_v4_conv_medium": (tables.V4_CONV_MEDIUM_STEM, tables.V4_CONV_MEDIUM_BLOCKS),
    "mobilenet_v4_conv_large": (tables.V4_CONV_LARGE_STEM, tables.V4_CONV_LARGE_BLOCKS),
}
# Tables with a repeat column n, which the `repeats` option replaces row by row (a depth
# multiplier, e.g. timm's mobilenetv2_110d); V3's tables list every block.
REPEAT_TABLES = {"mobilenet_v1": tables.V1_BLOCKS, "mobilenet_v2": tables.V2_BLOCKS,
                 **{arch: rows for arch, (_, rows) in V4_TABLES.items()}}
# V4's block codes (timm's) and the blocks they build.
V4_KINDS = {"cn": "conv", "er": "fused_inverted_bottleneck", "uir": "universal_inverted_bottleneck"}


def _per_block(o, key, index, default):
    """Block `index`'s value of a per-block override, or the table's `default`. Explicit widths
    describe timm's V3 below width 1.0 (expansion scaled from each block's input) and pruned
    models (narrower expansions, SE widths kept from the unpruned model); 0 SE channels: no SE."""
    values = o.get(key)
    return int(values[index]) if values is not None else default


def _repeats(o, row, n):
    """Row `row`'s repeat count: the table's n, or the `repeats` option's."""
    return int(o["repeats"][row]) if o.get("repeats") is not None else n


def _v1_spec(width, o):
    stem = o.get("stem_channels") or scale_channels(tables.V1_STEM, width)
    blocks, c_in = [], stem
    for row, (c, n, s) in enumerate(tables.V1_BLOCKS):
        n = _repeats(o, row, n)
        c_out = scale_channels(c, width)
        for i in range(n):
            blocks.append(BlockSpec("separable", c_in, c_in, c_out, 3, s if i == 0 else 1, "relu6"))
            c_in = c_out
    return ArchSpec(stem, "relu6", tuple(blocks), 0, "", 0, o["dropout"], o["bn_eps"], o["bn_momentum"])


def _v2_spec(width, o):
    stem = o.get("stem_channels") or scale_channels(tables.V2_STEM, width)
    blocks, c_in = [], stem
    for row, (t, c, n, s) in enumerate(tables.V2_BLOCKS):
        n = _repeats(o, row, n)
        c_out = scale_channels(c, width)
        for i in range(n):
            # V2 paper, Table 1: the expansion layer is t times the block's input width.
            expanded = _per_block(o, "expanded_channels", len(blocks), int(round(c_in * t)))
            se_channels = _per_block(o, "se_channels", len(blocks), 0)
            blocks.append(BlockSpec("inverted_residual", c_in, expanded, c_out, 3, s if i == 0 else 1, "relu6", se_channels))
            c_in = c_out
    # torchvision never narrows the last layer below 1280 (V2 paper, section 6.1).
    head = o.get("head_channels") or scale_channels(tables.V2_HEAD, max(1.0, width))
    return ArchSpec(stem, "relu6", tuple(blocks), head, "relu6", 0, o["dropout"], o["bn_eps"], o["bn_momentum"])


def _v3_spec(stem_width, rows, last, width, o):
    stem = o.get("stem_channels") or scale_channels(stem_width, width)
    blocks, c_in = [], stem
    for k, exp, out, se, nl, s in rows:
        expanded = _per_block(o, "expanded_channels", len(blocks), scale_channels(exp, width))
        c_out = scale_channels(out, width)
        se_channels = _per_block(o, "se_channels", len(blocks), make_divisible(expanded // tables.V3_SE_RATIO) if se else 0)
        blocks.append(BlockSpec("inverted_residual", c_in, expanded, c_out, k, s, tables.NONLINEARITY[nl], se_channels))
        c_in = c_out
    head = o.get("head_channels") or tables.V3_HEAD_EXPANSION * c_in
    last_channels = o.get("last_channels") or scale_channels(last, width)
    return ArchSpec(stem, "hardswish", tuple(blocks), head, "hardswish", last_channels, o["dropout"], o["bn_eps"], o["bn_momentum"])


def _v4_spec(stem_width, rows, width, o):
    # timm's fix_stem: below width 1.0 the stem keeps its width (timm's mobilenetv4_conv_small_050)
    stem = o.get("stem_channels") or (stem_width if width < 1.0 else scale_channels(stem_width, width))
    blocks, c_in = [], stem
    for row, (block, n, a, k, s, e, c) in enumerate(rows):
        n = _repeats(o, row, n)
        c_out = scale_channels(c, width)
        for i in range(n):
            index = len(blocks)
            if block == "cn":
                # a conv row has no expansion: its one width is its output, which an explicit
                # expanded_channels entry must repeat
                expanded = _per_block(o, "expanded_channels", index, c_out)
                if expanded != c_out:
                    raise ValueError(f"expanded_channels[{index}] must be {c_out}: block {index} is a conv row "
                                     f"(conv -> BN -> ReLU, no expansion) of {c_out} channels, got {expanded}")
            else:
                # timm: the expansion is make_divisible(block input * e), for UIB and FusedIB alike
                expanded = _per_block(o, "expanded_channels", index, make_divisible(c_in * e))
            blocks.append(BlockSpec(V4_KINDS[block], c_in, expanded, c_out, k, s if i == 0 else 1, "relu",
                                    start_kernel_size=a))
            c_in = c_out
    head = o.get("head_channels") or scale_channels(tables.V4_HEAD, width)
    last_channels = o.get("last_channels") or tables.V4_LAST
    return ArchSpec(stem, "relu", tuple(blocks), head, "relu", last_channels, o["dropout"], o["bn_eps"],
                    o["bn_momentum"], last_norm=True)


DECODERS = {
    "mobilenet_v1": _v1_spec,
    "mobilenet_v2": _v2_spec,
    "mobilenet_v3_large": lambda w, o: _v3_spec(tables.V3_LARGE_STEM, tables.V3_LARGE_BLOCKS, tables.V3_LARGE_LAST, w, o),
    "mobilenet_v3_small": lambda w, o: _v3_spec(tables.V3_SMALL_STEM, tables.V3_SMALL_BLOCKS, tables.V3_SMALL_LAST, w, o),
    **{arch: (lambda w, o, table=table: _v4_spec(*table, w, o)) for arch, table in V4_TABLES.items()},
}


def dilate(blocks, output_stride):
    """The blocks with the strides that would take the network past `output_stride` replaced by
    dilation, as torchvision's `_mobilenet_v3_conf(..., dilated=True)` does for output stride 16
    (and DeepLab for 16 and 8): a block whose stride is removed, and every block after it,
    dilates its KxK convolutions by the product of the strides removed so far, so the receptive
    field grows as before while the maps stay at `output_stride`.

    As torchvision, the block whose stride is removed is dilated too (DeepLab and timm keep that
    one block at the previous rate), and it keeps its table stride for the shortcut rule (no
    shortcut, as before); a block runs its convolutions at stride 1 when its dilation is > 1.
    """
    reduction, dilation, dilated = STEM_STRIDE, 1, []
    for block in blocks:
        if block.stride > 1:
            if reduction * block.stride > output_stride:
                dilation *= block.stride
            else:
                reduction *= block.stride
        dilated.append(replace(block, dilation=dilation))
    return tuple(dilated)


def arch_spec(arch, width=1.0, **overrides):
    """The decoded architecture: every block's channels, kernel, stride, dilation, activation and SE width."""
    _check_args(arch, width, 1, overrides)
    options = dict(DEFAULTS[arch])
    options.update({k: v for k, v in overrides.items() if v is not None})
    given = [key for key in PER_BLOCK if overrides.get(key) is not None]
    if given:
        count = len(DECODERS[arch](width, {k: v for k, v in options.items() if k not in PER_BLOCK}).blocks)
        for key in given:
            if len(overrides[key]) != count:
                raise ValueError(f"{key} must list one width per block ({count} for {arch}), got {len(overrides[key])}")
    spec = DECODERS[arch](width, options)
    return replace(spec, blocks=dilate(spec.blocks, options.get("output_stride", 32)))


def _check_args(arch, width, num_classes, overrides):
    if not isinstance(arch, str) or arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not np.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a number > 0, got {width!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise TypeError(f"unknown build options {unknown}; known: {', '.join(OVERRIDES)}")
    for name in ("stem_channels", "head_channels", "last_channels"):
        value = overrides.get(name)
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    for key, least in (("expanded_channels", 1), ("se_channels", 0)):
        values = overrides.get(key)
        if values is None:
            continue
        if arch == "mobilenet_v1":
            raise ValueError(f"{key} applies to inverted-residual models (V2, V3, V4), not mobilenet_v1")
        if key == "se_channels" and arch in V4_TABLES:
            raise ValueError(f"se_channels applies to V2 and V3: {arch}'s blocks have no squeeze-and-excitation")
        if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= least for v in values
        ):
            raise ValueError(f"{key} must be a list of ints >= {least}, one per block, got {values!r}")
    repeats = overrides.get("repeats")
    if repeats is not None:
        if arch not in REPEAT_TABLES:
            raise ValueError(f"repeats applies to mobilenet_v1 and mobilenet_v2 and the mobilenet_v4 models, whose "
                             f"tables have a repeat column; {arch}'s table lists every block")
        rows = len(REPEAT_TABLES[arch])
        if not isinstance(repeats, (list, tuple)) or len(repeats) != rows or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in repeats):
            raise ValueError(f"repeats must list one int >= 1 per row of {arch}'s table ({rows} rows), got {repeats!r}")
    output_stride = overrides.get("output_stride")
    if output_stride is not None and (isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES):
        raise ValueError(f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))} (the input size over "
                         f"the last feature map's; below 32 the last strides become dilation), got {output_stride!r}")
    padding = overrides.get("padding")
    if padding is not None and padding not in ("symmetric", "same"):
        raise ValueError(f"padding must be 'symmetric' (torchvision's and timm's default) or 'same' "
                         f"(TensorFlow's, as in timm's tf_* models), got {padding!r}")
    dropout = overrides.get("dropout")
    if dropout is not None and not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    eps = overrides.get("bn_eps")
    if eps is not None and not eps > 0:
        raise ValueError(f"bn_eps must be > 0, got {eps!r}")


def _row_conv(in_channels, out_channels, kernel_size, stride, dilation, rng):
    """A conv row's convolution: 1x1 as a pointwise layer, else a standard KxK one."""
    if kernel_size == 1:
        if stride != 1:
            raise ValueError(f"a 1x1 conv row must have stride 1, got {stride}")
        return PointwiseConv2d(in_channels, out_channels, rng=rng)
    stride = 1 if dilation > 1 else stride
    return Conv2d(in_channels, out_channels, kernel_size, stride, same_padding(kernel_size, dilation), dilation, rng=rng)


def build(arch, width=1.0, num_classes=1000, seed=0, **overrides):
    """Build a MobileNet with freshly initialised weights.

    arch: one of `ARCHS`; width: the width multiplier alpha (channels rounded to multiples of 8);
    num_classes: classifier outputs; seed: initialisation and dropout seed. `overrides` change the
    architecture's free choices (bn_eps, bn_momentum, dropout, stem_channels, head_channels,
    last_channels, repeats per table row for V1, V2 and V4, padding 'same' for TensorFlow's
    padding, output_stride 16 or 8 for denser feature maps (the strides that would pass it
    become dilation, see `dilate`), and per block expanded_channels and se_channels), e.g. to
    follow timm's variant of a model or to describe a pruned one. The model's `config` records all of it, so
    `build(**model.config)` rebuilds the same architecture.

    V4 (`mobilenet_v4_conv_*`): `width` is timm's channel multiplier (every block's output and the
    960-wide head conv scaled; the stem kept below 1.0; the 1280 features after pooling never);
    `head_channels` is the 1x1 conv before pooling, `last_channels` the layer after it;
    `expanded_channels` lists every block, a conv row's entry being its output width (it has no
    expansion); `se_channels` does not apply (no V4 block has squeeze-and-excitation).
    """
    spec = arch_spec(arch, width, **overrides)
    _check_args(arch, width, num_classes, overrides)
    rng = np.random.default_rng(seed)
    eps, momentum = spec.bn_eps, spec.bn_momentum

    stem = ConvBNAct(Conv2d(3, spec.stem_channels, 3, stride=2, padding=1, rng=rng), eps, momentum, spec.stem_activation)
    blocks = Sequential()
    for b in spec.blocks:
        if b.kind == "separable":
            blocks.append(DepthwiseSeparable(b.in_channels, b.out_channels, b.stride, b.kernel_size, b.activation, eps,
                                             momentum, rng, b.dilation))
        elif b.kind == "inverted_residual":
            blocks.append(InvertedResidual(b.in_channels, b.expanded_channels, b.out_channels, b.kernel_size, b.stride,
                                           b.activation, b.se_channels, eps, momentum, rng, b.dilation))
        elif b.kind == "universal_inverted_bottleneck":
            blocks.append(UniversalInvertedBottleneck(b.in_channels, b.expanded_channels, b.out_channels,
                                                      b.start_kernel_size, b.kernel_size, b.stride, b.activation,
                                                      eps, momentum, rng, b.dilation))
        elif b.kind == "fused_inverted_bottleneck":
            blocks.append(FusedInvertedBottleneck(b.in_channels, b.expanded_channels, b.out_channels, b.kernel_size,
                                                  b.stride, b.activation, eps, momentum, rng, b.dilation))
        else:  # "conv": V4's conv -> BN -> ReLU rows, no shortcut
            blocks.append(ConvBNAct(_row_conv(b.in_channels, b.out_channels, b.kernel_size, b.stride, b.dilation, rng),
                                    eps, momentum, b.activation))
    features = spec.blocks[-1].out_channels
    head = None
    if spec.head_channels:
        head = ConvBNAct(PointwiseConv2d(features, spec.head_channels, rng=rng), eps, momentum, spec.head_activation)
        features = spec.head_channels

    dropout_rng = np.random.default_rng([seed, 1])
    if spec.last_norm:
        # V4 (timm's head_norm): the pooled features through a 1x1 conv without bias (on a 1x1 map,
        # a fully connected layer; initialised He-normal by fan-out, as timm initialises that conv),
        # batch norm and ReLU, then dropout and the classifier.
        post_pool = Linear(features, spec.last_channels, bias=False, rng=rng,
                           init_std=np.sqrt(2.0 / spec.last_channels))
        classifier = Sequential([
            ConvBNAct(post_pool, eps, momentum, spec.head_activation),
            Dropout(spec.dropout, dropout_rng), Linear(spec.last_channels, num_classes, rng=rng),
        ])
    elif spec.last_channels:
        # V3 paper, Fig. 5: the efficient last stage pools first, then two fully connected layers.
        classifier = Sequential([
            Linear(features, spec.last_channels, rng=rng), HardSwish(),
            Dropout(spec.dropout, dropout_rng), Linear(spec.last_channels, num_classes, rng=rng),
        ])
    elif spec.dropout:
        classifier = Sequential([Dropout(spec.dropout, dropout_rng), Linear(features, num_classes, rng=rng)])
    else:
        classifier = Sequential([Linear(features, num_classes, rng=rng)])

    config = dict(arch=arch, width=float(width), num_classes=int(num_classes))
    config.update({k: v for k, v in overrides.items() if v is not None})
    for key in PER_BLOCK + ("repeats",):
        if key in config:
            config[key] = [int(v) for v in config[key]]  # JSON-ready
    model = MobileNet(config, spec, stem, blocks, head, classifier)
    if overrides.get("padding") == "same":
        # TensorFlow's padding, on every KxK convolution (at stride 1 it is the symmetric one)
        for _, layer in model.modules():
            if hasattr(layer, "set_padding"):
                layer.set_padding("same")
    return model
