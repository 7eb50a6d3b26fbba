"""Per-layer parameters and multiply-accumulates of a model, by formula (`npmobilenet summary`).

`summarize(model, resolution)` walks the model's leaf layers in execution order, reads each one's
hyper-parameters (kernel, stride, padding, channels; never its arrays) and prices it with the
formulas of `npmobilenet.analysis.ops`, carrying the activation shape from layer to layer. Nothing
runs and no activation is allocated, so it is instant even at 224x224 and for any batch size.
The tests check it against the parameters the model allocates and the MACs an instrumented
forward pass performs.

Conventions (the papers'): MACs of convolutions and fully connected layers, SE's included;
batch norm, activations, pooling and residual adds cost none. Parameters are everything trained,
batch-norm scale and shift included (running statistics are buffers, not parameters).

Each row keeps its input and output shapes: they are what a peak-activation-memory estimate
(planned) needs, together with the residual connections' lifetimes.
"""
import json
import numbers
from dataclasses import asdict, dataclass

from npmobilenet.analysis.ops import (
    batch_norm_cost,
    conv2d_cost,
    depthwise_conv2d_cost,
    global_avg_pool_cost,
    linear_cost,
    pointwise_conv2d_cost,
)
from npmobilenet.layers import (
    BatchNorm, Conv2d, DepthwiseConv2d, GlobalAvgPool, Linear, PointwiseConv2d, SqueezeExcite,
)

# Row types, in the order the breakdown lists them, with the names the V1 paper's Table 2 uses.
TYPE_NAMES = {
    "conv": "standard conv",
    "depthwise": "depthwise conv",
    "pointwise": "1x1 conv",
    "se": "SE (fully connected)",
    "linear": "fully connected",
    "bn": "batch norm",
}


@dataclass(frozen=True)
class Row:
    """One leaf layer. Shapes are NHWC `(N, H, W, C)` for feature maps, `(N, C)` for vectors."""

    index: int
    name: str             # dotted path in the model, e.g. "blocks.3.conv_dw.conv"
    type: str             # a key of TYPE_NAMES
    input_shape: tuple
    output_shape: tuple
    kernel: tuple | None  # (KH, KW) of a convolution, else None
    stride: tuple | None  # (SH, SW) of a convolution, else None
    params: int           # everything trained: weight, bias, BN scale and shift
    bias_params: int      # the part of `params` that is a bias (0 without one)
    macs: int             # over the whole batch
    share: float          # of the model's total MACs


@dataclass(frozen=True)
class TypeTotal:
    """The layers of one type together (a line of the V1 paper's Table 2)."""

    type: str
    layers: int
    params: int
    macs: int
    params_share: float
    macs_share: float


@dataclass(frozen=True)
class Summary:
    arch: str
    width: float
    resolution: tuple     # (H, W) of the input
    batch: int
    rows: tuple
    params: int
    macs: int

    def breakdown(self, weights_only=False):
        """Totals and shares per layer type, in `TYPE_NAMES` order.

        `weights_only=True` counts what the V1 paper's Table 2 counts: convolution and fully
        connected weights, no biases and no batch norm.
        """
        rows = [r for r in self.rows if not (weights_only and r.type == "bn")]
        params = {r.index: r.params - (r.bias_params if weights_only else 0) for r in rows}
        total_params = sum(params.values())
        total_macs = sum(r.macs for r in rows)
        result = []
        for kind in TYPE_NAMES:
            of_kind = [r for r in rows if r.type == kind]
            if not of_kind:
                continue
            p, m = sum(params[r.index] for r in of_kind), sum(r.macs for r in of_kind)
            result.append(TypeTotal(kind, len(of_kind), p, m, _ratio(p, total_params), _ratio(m, total_macs)))
        return result

    def to_dict(self):
        """Plain JSON-able data: `{"params", "macs", "layers", "breakdown", ...}`."""
        return dict(
            arch=self.arch,
            width=self.width,
            resolution=list(self.resolution),
            batch=self.batch,
            params=self.params,
            macs=self.macs,
            layers=[_jsonable(asdict(r)) for r in self.rows],
            breakdown=[asdict(t) for t in self.breakdown()],
        )

    def to_json(self):
        """`to_dict()` as JSON text, one layer per line."""
        data = self.to_dict()
        items = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items() if not isinstance(v, list) or k == "resolution"]
        for key in ("layers", "breakdown"):
            entries = ",\n".join(f"  {json.dumps(entry)}" for entry in data[key])
            items.append(f" {json.dumps(key)}: [\n{entries}\n ]")
        return "{\n" + ",\n".join(items) + "\n}"

    def format_table(self):
        """The per-layer table, totals, and the breakdown by type, as text."""
        header = (f"{'#':>3}  {'name':<28} {'type':<9} {'input':>13} {'output':>13} {'kernel':>6} "
                  f"{'stride':>6} {'params':>11} {'MACs':>13} {'share':>6}")
        lines = [
            f"{self.arch}, width {self.width}, input {self.resolution[0]}x{self.resolution[1]}x3, "
            f"batch {self.batch}",
            header,
            "-" * len(header),
        ]
        for r in self.rows:
            lines.append(
                f"{r.index:>3}  {r.name:<28} {r.type:<9} {_shape_text(r.input_shape):>13} "
                f"{_shape_text(r.output_shape):>13} {_pair_text(r.kernel):>6} {_pair_text(r.stride):>6} "
                f"{r.params:>11,} {r.macs:>13,} {100 * r.share:>5.2f}%"
            )
        lines.append("-" * len(header))
        lines.append(f"total: {self.params:,} parameters ({self.params / 1e6:.2f} M), "
                     f"{self.macs:,} multiply-accumulates ({self.macs / 1e6:.1f} M)")
        lines.append("")
        lines.append(f"{'by type':<22} {'layers':>6} {'params':>11} {'params %':>9} {'MACs':>13} {'MACs %':>8}")
        for t in self.breakdown():
            lines.append(f"{TYPE_NAMES[t.type]:<22} {t.layers:>6} {t.params:>11,} {100 * t.params_share:>8.2f}% "
                         f"{t.macs:>13,} {100 * t.macs_share:>7.2f}%")
        return "\n".join(lines)


def _ratio(part, whole):
    return part / whole if whole else 0.0


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _shape_text(shape):
    """A per-image shape: HxWxC for feature maps, C for vectors (the batch axis dropped)."""
    return "x".join(str(d) for d in shape[1:])


def _pair_text(pair):
    return "" if pair is None else f"{pair[0]}x{pair[1]}"


# -- the walk ---------------------------------------------------------------------------------
def _leaves(layer, prefix="", parent=None):
    """Leaf layers in execution order (registration order) as `(dotted name, layer, parent)`."""
    children = layer.children()
    if not children:
        yield prefix, layer, parent
    for name, child in children:
        yield from _leaves(child, f"{prefix}.{name}" if prefix else name, layer)


def _padding_sides(padding):
    # layers store (top, bottom, left, right); the formulas take ((top, bottom), (left, right))
    top, bottom, left, right = padding
    return (top, bottom), (left, right)


def _check_channels(name, layer_channels, shape):
    if shape[-1] != layer_channels:
        # a model whose layers are not registered in execution order ends up here too
        raise ValueError(f"layer {name} expects {layer_channels} channels but would receive shape {shape}")


def _as_resolution(resolution):
    if isinstance(resolution, numbers.Integral) and not isinstance(resolution, bool):
        resolution = (resolution, resolution)
    if not (isinstance(resolution, (tuple, list)) and len(resolution) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in resolution)):
        raise TypeError(f"resolution must be an int or a pair (H, W) of ints, got {resolution!r}")
    if min(resolution) < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution!r}")
    return int(resolution[0]), int(resolution[1])


def summarize(model, resolution=224, batch=1, in_channels=3):
    """Cost of every leaf layer of `model` on a `(batch, H, W, in_channels)` input, by formula.

    resolution: an int (square input) or `(H, W)`. Returns a `Summary` whose rows follow the
    layers in execution order; totals are over the whole batch (`batch=1`: per image, as the
    papers quote them).
    """
    h, w = _as_resolution(resolution)
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    feature_map = (int(batch), h, w, in_channels)  # the NHWC activation the convolutions see
    current = feature_map                          # the last layer's output (a vector after pooling, in SE)
    found = []                                     # (name, layer, type, input shape, cost)
    for name, layer, parent in _leaves(model):
        if isinstance(layer, (Conv2d, DepthwiseConv2d, PointwiseConv2d)):
            _check_channels(name, layer.in_channels, feature_map)
            input_shape, bias = feature_map, layer.bias is not None
            if isinstance(layer, PointwiseConv2d):
                kind, cost = "pointwise", pointwise_conv2d_cost(input_shape, layer.out_channels, bias)
            elif isinstance(layer, DepthwiseConv2d):
                pads = _padding_sides(layer.padding_at(input_shape[1], input_shape[2]))
                kind, cost = "depthwise", depthwise_conv2d_cost(
                    input_shape, layer.kernel_size, layer.stride, pads, layer.dilation, bias)
            else:
                pads = _padding_sides(layer.padding_at(input_shape[1], input_shape[2]))
                kind, cost = "conv", conv2d_cost(
                    input_shape, layer.kernel_size, layer.out_channels, layer.stride, pads, layer.dilation, bias)
            feature_map = cost.output_shape
        elif isinstance(layer, BatchNorm):
            _check_channels(name, layer.channels, current)
            input_shape, kind, cost = current, "bn", batch_norm_cost(current)
        elif isinstance(layer, Linear):
            # SE's layers see the feature map pooled inside the SE layer; the classifier sees the
            # model's pooled features or the previous Linear's output.
            _check_channels(name, layer.in_features, current)
            input_shape = (current[0], layer.in_features)
            kind = "se" if isinstance(parent, SqueezeExcite) else "linear"
            cost = linear_cost(input_shape, layer.out_features, bias=layer.bias is not None)
        elif isinstance(layer, GlobalAvgPool):
            current = global_avg_pool_cost(feature_map).output_shape
            continue
        elif any(True for _ in layer.named_parameters()):
            raise TypeError(f"summary cannot cost layer {name} ({type(layer).__name__}): it has parameters "
                            "but no formula in npmobilenet.analysis")
        else:
            continue  # activations, dropout: no parameters, no MACs, shape unchanged
        found.append((name, layer, kind, input_shape, cost))
        current = cost.output_shape

    total_macs = sum(cost.macs for *_, cost in found)
    rows = tuple(
        Row(i, name, kind, input_shape, cost.output_shape, _geometry(layer, "kernel_size"), _geometry(layer, "stride"),
            cost.params, _bias_params(layer), cost.macs, _ratio(cost.macs, total_macs))
        for i, (name, layer, kind, input_shape, cost) in enumerate(found)
    )
    config = getattr(model, "config", {})
    return Summary(
        arch=config.get("arch", type(model).__name__),
        width=float(config.get("width", 1.0)),
        resolution=(h, w),
        batch=int(batch),
        rows=rows,
        params=sum(r.params for r in rows),
        macs=total_macs,
    )


def _geometry(layer, attribute):
    """A convolution's (vertical, horizontal) kernel size or stride; None for other layers."""
    value = getattr(layer, attribute, None)
    return None if value is None else (int(value[0]), int(value[1]))


def _bias_params(layer):
    bias = getattr(layer, "bias", None)
    return 0 if bias is None else int(bias.size)


# -- command line -----------------------------------------------------------------------------
def add_arguments(parser):
    from npmobilenet.models import ARCHS

    parser.add_argument("arch", metavar="ARCH|CHECKPOINT",
                        help=f"one of: {', '.join(ARCHS)}; or a checkpoint (.npz: float, pruned, factorised or int8)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier alpha (default 1.0)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="input height and width (default 224, or the checkpoint's training resolution)")
    parser.add_argument("--classes", type=int, default=1000, help="classifier outputs (default 1000)")
    parser.add_argument("--json", action="store_true", help="print JSON: {params, macs, layers, breakdown}")


def _load(path):
    """The model in a checkpoint and its training resolution (None if not recorded)."""
    from npmobilenet.compression.structure import load

    model = load(path)
    meta = model.info.get("meta", {}) if hasattr(model, "info") else _float_meta(path)
    return model, meta.get("resolution")


def _float_meta(path):
    from npmobilenet.training.checkpoint import load_checkpoint

    return load_checkpoint(path).meta


def run(args):
    import json
    import os

    from npmobilenet.models import ARCHS, build
    from npmobilenet.models.mobilenet import MIN_RESOLUTION

    if args.arch in ARCHS:
        model, trained_at = build(args.arch, width=args.width, num_classes=args.classes), None
    elif os.path.exists(args.arch):
        model, trained_at = _load(args.arch)
    else:
        raise ValueError(f"ARCH must be one of {', '.join(ARCHS)} or an existing checkpoint file, got {args.arch!r}")
    resolution = args.resolution or trained_at or 224
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"--resolution must be at least {MIN_RESOLUTION}, got {resolution}")
    if not hasattr(model, "modules"):
        # An int8 model is a graph of integer ops, not layers: report its totals.
        macs, params = model.macs((1, resolution, resolution, 3)), model.num_parameters()
        c = model.config
        if args.json:
            print(json.dumps({"params": int(params), "macs": int(macs), "layers": [], "quantized": True}))
        else:
            print(f"{args.arch}: int8 {c['arch']} width {c['width']}, input {resolution}x{resolution}x3")
            print(f"total: {params:,} parameters (int8 weights, int32 biases), {macs:,} multiply-accumulates")
        return 0
    summary = summarize(model, resolution)
    peak = _peak_activation_bytes(model, resolution)
    if args.json:
        data = summary.to_json()
        print(data[:-2] + f',\n "peak_activation_bytes_per_image": {json.dumps(peak)}\n}}')
    else:
        print(summary.format_table())
        if peak is not None:
            print(f"\nfused inference (model.fuse()): planned peak activation memory {peak:,} bytes "
                  f"({peak / 2**20:.2f} MiB) per image at {resolution}x{resolution}")
    return 0


def _peak_activation_bytes(model, resolution):
    """Bytes per image of the fused model's memory plan, or None where fusing does not apply."""
    from npmobilenet.inference import planned_peak_bytes

    try:
        return int(planned_peak_bytes(model, resolution, batch=1))
    except (TypeError, ValueError, AttributeError, NotImplementedError):
        return None  # e.g. a low-rank factorised model, which the fused path does not take
