"""Channel groups: which parameter slices go together when a convolution's output channels are cut.

Channel c of a tensor written by a convolution is one output filter (the last axis of its weight)
and one bias entry; it then passes through ops that keep channels apart (batch norm, activations,
depthwise convolution, pooling, squeeze-and-excitation's channel scale) until a convolution or
fully connected layer mixes channels, where it is one input row. Removing channel c everywhere
along that path removes it exactly: the network computes what it computed with channel c
silenced (V2 paper, Fig. 3b: an inverted residual's expansion channels are such a group).

A group is cut-able only if the channels never reach a residual add or a graph output, whose
widths other layers share. `channel_group(graph, seed)` follows them; `internal_groups(graph)`
lists every cut-able group of a graph (for a block: its expansion channels).
"""

CHANNELWISE = ("batch_norm", "activation", "global_avg_pool")


class ChannelGroup:
    """The slices of one group: `slices` is [(op, attribute name, axis)], `norm` the first batch
    norm after the seed (None if there is none), `width` the number of channels."""

    def __init__(self, seed):
        self.seed, self.norm = seed, None
        self.slices = [(seed, "weight", -1)] + ([(seed, "bias", 0)] if seed.bias is not None else [])

    @property
    def width(self):
        return self.seed.out_channels

    def add_outputs(self, op):
        """`op`'s own channels are the group's (a depthwise conv, a batch norm, a gate's layer)."""
        names = {"batch_norm": ("gamma", "beta", "mean", "var")}.get(op.kind, ("weight", "bias"))
        self.slices += [(op, name, -1 if name == "weight" else 0) for name in names if getattr(op, name) is not None]


def _gate_layer(graph, producers, gate):
    """The layer that writes a channel-scale gate's channels (through activations), or None."""
    op = producers.get(gate)
    while op is not None and op.kind == "activation":
        op = producers.get(op.inputs[0])
    return op if op is not None and (op.kind == "linear" or (op.kind == "conv" and op.variant == "pointwise")) else None


def channel_group(graph, seed):
    """The `ChannelGroup` of conv or linear op `seed`'s output channels, or None if they reach an
    op that cannot lose channels alone (an add, a graph output, a gate's input, ...)."""
    producers = {op.output: op for op in graph.ops}
    readers = {}
    for op in graph.ops:
        for t in op.inputs:
            readers.setdefault(t, []).append(op)
    group = ChannelGroup(seed)
    stack, seen = [seed.output], set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in graph.outputs or not readers.get(tensor):
            return None
        for op in readers[tensor]:
            if op.kind in CHANNELWISE or (op.kind == "conv" and op.variant == "depthwise"):
                if op.kind == "batch_norm":
                    group.norm = group.norm or op
                if op.kind in ("batch_norm", "conv"):
                    group.add_outputs(op)
                stack.append(op.output)
            elif op.kind == "channel_scale" and op.inputs[0] == tensor:
                layer = _gate_layer(graph, producers, op.inputs[1])
                if layer is None:
                    return None
                group.add_outputs(layer)     # the gate must have the group's channels too
                stack.append(op.output)
            elif op.kind == "linear" or (op.kind == "conv" and op.variant == "pointwise"):
                group.slices.append((op, "weight", 0))      # input rows (Cin, Cout)
            elif op.kind == "conv" and op.variant == "standard":
                group.slices.append((op, "weight", 2))      # (KH, KW, Cin, Cout)
            else:
                return None
    return group


def internal_groups(graph):
    """Every cut-able group of `graph` seeded by a pointwise or standard convolution."""
    seeds = [op for op in graph.ops if op.kind == "conv" and op.variant in ("pointwise", "standard")]
    return [group for group in (channel_group(graph, op) for op in seeds) if group is not None]
