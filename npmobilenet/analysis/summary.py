"""Per-layer parameters and multiply-accumulates of a model, by formula (`npmobilenet summary`).

`summarize(model, resolution)` reads the model's lowered graph (`npmobilenet.graph`: what every
layer says it computes, in execution order), takes each conv, batch-norm and linear op's
hyper-parameters (kernel, stride, padding, channels; never its arrays) and prices it with the
formulas of `npmobilenet.analysis.ops`, the graph's shape rules carrying the activation shape. Nothing
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
    linear_cost,
    pointwise_conv2d_cost,
)
from npmobilenet.graph import lower

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

    def __repr__(self):
        # what a person wants at the prompt: the table, not the nested dataclass fields
        return self.format_table()

    __str__ = __repr__

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
def _as_resolution(resolution):
    if isinstance(resolution, numbers.Integral) and not isinstance(resolution, bool):
        resolution = (resolution, resolution)
    if not (isinstance(resolution, (tuple, list)) and len(resolution) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in resolution)):
        raise TypeError(f"resolution must be an int or a pair (H, W) of ints, got {resolution!r}")
    if min(resolution) < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution!r}")
    return int(resolution[0]), int(resolution[1])


def _conv_row(op, shape):
    """(type, cost) of a graph conv op on an input of `shape`, by the formulas of analysis.ops."""
    bias = op.bias is not None
    if op.variant == "pointwise":
        return "pointwise", pointwise_conv2d_cost(shape, op.out_channels, bias)
    top, bottom, left, right = op.padding_at(shape[1], shape[2])
    pads = ((top, bottom), (left, right))
    if op.variant == "depthwise":
        return "depthwise", depthwise_conv2d_cost(shape, op.kernel_size, op.stride, pads, op.dilation, bias)
    return "conv", conv2d_cost(shape, op.kernel_size, op.out_channels, op.stride, pads, op.dilation, bias)


def summarize(model, resolution=224, batch=1, in_channels=3):
    """Cost of every layer of `model` with parameters, on a `(batch, H, W, in_channels)` input,
    by formula: its lowered graph's conv, batch-norm and linear ops, in execution order.

    resolution: an int (square input) or `(H, W)`. Returns a `Summary` whose rows follow the
    layers in execution order; totals are over the whole batch (`batch=1`: per image, as the
    papers quote them). Fully connected layers that compute a squeeze-and-excitation gate are
    typed "se" (`graph.gate_ops`).
    """
    h, w = _as_resolution(resolution)
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    graph = lower(model)
    shapes = graph.shapes((int(batch), h, w, in_channels))   # each op checks its input's channels
    gates = graph.gate_ops()
    found = []                                               # (op, type, input shape, cost)
    for op in graph.ops:
        shape = shapes[op.inputs[0]]
        if op.kind == "conv":
            kind, cost = _conv_row(op, shape)
        elif op.kind == "batch_norm":
            kind, cost = "bn", batch_norm_cost(shape)
        elif op.kind == "linear":
            kind = "se" if op.name in gates else "linear"
            cost = linear_cost(shape, op.out_channels, bias=op.bias is not None)
        else:
            continue  # activations, pooling, channel scale, add: no parameters, no MACs
        found.append((op, kind, shape, cost))

    total_macs = sum(cost.macs for *_, cost in found)
    rows = tuple(
        Row(i, op.name, kind, shape, cost.output_shape, _pair(getattr(op, "kernel_size", None)),
            _pair(getattr(op, "stride", None)), cost.params, 0 if op.kind == "batch_norm" or op.bias is None else
            int(op.bias.size), cost.macs, _ratio(cost.macs, total_macs))
        for i, (op, kind, shape, cost) in enumerate(found)
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


def _pair(value):
    """A convolution's (vertical, horizontal) kernel size or stride; None for other ops."""
    return None if value is None else (int(value[0]), int(value[1]))
