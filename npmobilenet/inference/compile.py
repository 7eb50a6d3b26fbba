"""The inference graph (batch norm folded, activations fused) as a list of fused layers.

Each conv, linear and pooling op becomes one fused layer. Two patterns of ops run inside the
layers around them instead of as layers of their own:

- a residual `add` whose one input is a linear pointwise projection read by nothing else: the
  projection adds the shortcut while its output tile is in cache (V2 paper, Fig. 3b);
- squeeze-and-excitation, `channel_scale(x, hardsigmoid(linear(relu(linear(pool(x))))))` with x a
  depthwise convolution's output and the scaled tensor read by one pointwise convolution: the
  depthwise kernel also sums its output rows, the gate is computed from those sums (no second
  pass over x), and the pointwise kernel multiplies its input by the gate as it reads it;
- any other `channel_scale(x, gate)` read by one bilinear `resize` alone (LR-ASPP's head,
  V3 paper sec. 6.3): the resize multiplies each pixel by its gate as it reads it.

And an inverted residual's expansion with the depthwise convolution that alone reads it is one
layer (`FusedExpansion`; V2 paper, sec. 5.1), which on large maps runs in bands of rows whose
expanded tensor stays in cache.

Everything is decided from op kinds and tensor names; nothing here knows a block class. An op the
fused kernels do not compute raises NotImplementedError naming it.
"""
import numpy as np

from npmobilenet.ops.epilogue import ACTIVATIONS, LINEAR_ACTIVATIONS
from npmobilenet.inference.layers import (
    FusedConv2d, FusedDepthwise, FusedExpansion, FusedGlobalPool, FusedLinear, FusedPointwise, FusedResize,
    FusedSqueezeExcite,
)

# What the fused kernels compute after a convolution or a linear layer: what `fuse_model`
# asks `graph.inference_graph` to fuse into them.
FUSED_ACTIVATIONS = ("relu", "relu6", "hardswish", "sigmoid")


def _bias(op):
    return op.bias if op.bias is not None else np.zeros(op.out_channels, np.float32)


def _unsupported(op, why):
    return NotImplementedError(f"fused inference cannot run {op.kind} op {op.name} ({op.describe()}): {why}")


def _check_activation(op, codes=ACTIVATIONS):
    if op.activation not in codes:
        raise _unsupported(op, f"the fused kernels apply {sorted(a for a in codes if a)} or no activation")


class _Graph:
    """Lookups over the graph's ops: who writes a tensor, who reads it."""

    def __init__(self, graph):
        self.graph = graph
        self.producer = {op.output: op for op in graph.ops}
        self.position = {op.output: i for i, op in enumerate(graph.ops)}     # the graph input: absent
        self.readers = {}
        for op in graph.ops:
            for t in op.inputs:
                self.readers.setdefault(t, []).append(op)

    def only_reader(self, tensor):
        readers = self.readers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in self.graph.outputs else None

    def squeeze_excite(self, scale):
        """The ops of an SE that runs fused (see the module docstring), or None."""
        x, gate = scale.inputs
        sigmoid = self.producer.get(gate)
        expand = self.producer.get(sigmoid.inputs[0]) if sigmoid is not None else None
        reduce = self.producer.get(expand.inputs[0]) if expand is not None else None
        pool = self.producer.get(reduce.inputs[0]) if reduce is not None else None
        depthwise, reader = self.producer.get(x), self.only_reader(scale.output)
        chain = [sigmoid, expand, reduce, pool]
        if (None in chain or [op.kind for op in chain] != ["activation", "linear", "linear", "global_avg_pool"]
                or sigmoid.function != "hardsigmoid" or expand.activation is not None or reduce.activation != "relu"
                or pool.inputs[0] != x or depthwise is None or depthwise.kind != "conv"
                or depthwise.variant != "depthwise" or reader is None or reader.kind != "conv"
                or reader.variant != "pointwise"
                or sorted(op.name for op in self.readers[x]) != sorted([pool.name, scale.name])
                or any(self.only_reader(op.output) is None for op in chain[1:])):
            return None
        return dict(depthwise=depthwise, pool=pool, reduce=reduce, expand=expand, gate=sigmoid, reader=reader)


def fused_layers(graph, expansions=True):
    """The inference graph `graph` as a flat list of fused layers over named tensors, from the
    graph's input ("input") to its outputs (`graph.outputs`: tensors the layers write). With
    `expansions`, an inverted residual's expansion and depthwise convolution are one layer where
    `FusedExpansion.joins` them."""
    g = _Graph(graph)
    skip, residual_of, gate_of, sums_of, se_after, resize_gate = set(), {}, {}, {}, {}, {}
    # first the patterns that fold ops into the layers around them
    for op in graph.ops:
        if op.kind == "channel_scale":
            se = g.squeeze_excite(op)
            if se is None:
                reader = g.only_reader(op.output)
                if reader is None or reader.kind != "resize" or reader.inputs[0] != op.output:
                    raise _unsupported(op, "a channel scale runs fused as squeeze-and-excitation between a depthwise "
                                           "and a pointwise convolution, or into the one resize that reads it")
                resize_gate[id(reader)] = op.inputs
                skip.add(id(op))
                continue
            skip.update(id(o) for o in (se["pool"], se["reduce"], se["expand"], se["gate"], op))
            sums_of[se["depthwise"].output] = f"{se['depthwise'].output}.row_sums"
            gate_of[op.output] = (se, op)
            se_after[id(se["depthwise"])] = (se, op)
        elif op.kind == "add":
            for mine, other in ((0, 1), (1, 0)):
                projection = g.producer.get(op.inputs[mine])
                if (projection is not None and projection.kind == "conv" and projection.variant == "pointwise"
                        and projection.activation is None and g.only_reader(projection.output) is op
                        and id(projection) not in residual_of
                        # the shortcut exists when the projection runs (LR-ASPP adds two classifiers)
                        and g.position.get(op.inputs[other], -1) < g.position[projection.output]):
                    residual_of[id(projection)] = (op.inputs[other], op.output)
                    skip.add(id(op))
                    break
            else:
                raise _unsupported(op, "a residual add runs fused into a linear pointwise projection read by "
                                       "nothing else")
    layers = []
    for op in graph.ops:
        if id(op) in skip:
            continue
        if op.kind == "conv":
            layers.append(_conv_layer(op, residual_of, gate_of, sums_of))
            if id(op) in se_after:                # SE's gate, from the rows the depthwise kernel summed
                se, scale_op = se_after[id(op)]
                layers.append(FusedSqueezeExcite(
                    scale_op.name, (sums_of[op.output], op.output), (scale_op.output,),
                    se["reduce"].weight, _bias(se["reduce"]), se["expand"].weight, _bias(se["expand"])))
        elif op.kind == "linear":
            _check_activation(op, LINEAR_ACTIVATIONS)
            layers.append(FusedLinear(op.name, op.inputs, (op.output,), op.weight, _bias(op), op.activation))
        elif op.kind == "global_avg_pool":
            layers.append(FusedGlobalPool(op.name, op.inputs, (op.output,)))
        elif op.kind == "resize":
            if id(op) in resize_gate:             # resize(x * gate): the gate applied as x is read
                x, gate = resize_gate[id(op)]
                layers.append(FusedResize(op.name, (x, op.inputs[1], gate), (op.output,), gated=True))
            else:
                layers.append(FusedResize(op.name, op.inputs, (op.output,)))
        else:
            raise _unsupported(op, "no fused kernel computes it here")
    return _join_expansions(layers, graph.outputs) if expansions else layers


def _join_expansions(layers, outputs):
    """`layers` with each expansion and the depthwise layer that alone reads it as one
    `FusedExpansion` (where `FusedExpansion.joins` them)."""
    readers = {}
    for layer in layers:
        for name in layer.inputs:
            readers[name] = readers.get(name, 0) + 1
    joined = []
    for layer in layers:
        before = joined[-1] if joined else None
        if (before is not None and FusedExpansion.joins(before, layer) and layer.inputs[0] == before.outputs[0]
                and readers[before.outputs[0]] == 1 and before.outputs[0] not in (outputs or ())):
            joined[-1] = FusedExpansion(before, layer)
        else:
            joined.append(layer)
    return joined


def _conv_layer(op, residual_of, gate_of, sums_of):
    _check_activation(op)
    if op.variant == "standard":
        return FusedConv2d(op.name, op.inputs, (op.output,), op.weight, _bias(op), op.activation, op.stride, op.padding,
                           op.dilation)
    if op.variant == "depthwise":
        outputs = (op.output, sums_of[op.output]) if op.output in sums_of else (op.output,)
        return FusedDepthwise(op.name, op.inputs, outputs, op.weight, _bias(op), op.activation, op.stride, op.padding,
                              op.dilation)
    inputs, output = list(op.inputs), op.output
    gated = op.inputs[0] in gate_of
    if gated:                                   # read the depthwise output, scaled by the SE gate
        se, scale = gate_of[op.inputs[0]]
        inputs = [se["depthwise"].output]
    residual = id(op) in residual_of
    if residual:
        shortcut, output = residual_of[id(op)]
        inputs.append(shortcut)
    if gated:
        inputs.append(scale.output)
    return FusedPointwise(op.name, inputs, (output,), op.weight, _bias(op), op.activation, residual, gated)
