"""A lowered model: a list of ops in execution order over named tensors, and `lower(model)`.

    graph = npmobilenet.graph.lower(model)     # every layer's `lower()`, stem to classifier
    graph.shapes((1, 224, 224, 3))             # {tensor: shape}, from each op's shape rule
    graph(x)                                   # the outputs, computed by the NumPy reference (evaluate.py)

The graph describes the model in eval mode (running statistics, no dropout). It holds the
model's arrays, not copies; passes (`passes.py`) return new graphs and never modify arrays.
"""
from npmobilenet.graph.evaluate import run as evaluate
from npmobilenet.graph.ops import Activation, ChannelScale, GlobalAvgPool, Linear

INPUT = "input"


class Builder:
    """What `Layer.lower(builder, x, name)` appends its ops to; tensor names are unique."""

    def __init__(self, inputs=(INPUT,)):
        self.ops = []
        self._tensors = set(inputs)

    def add(self, op):
        """Append `op` (its inputs must exist); returns the name of the tensor it writes."""
        missing = [t for t in op.inputs if t not in self._tensors]
        if missing:
            raise ValueError(f"op {op.name} reads tensors no earlier op writes: {missing}")
        if op.output in self._tensors:
            raise ValueError(f"tensor {op.output!r} is written twice (op {op.name})")
        self._tensors.add(op.output)
        self.ops.append(op)
        return op.output


class Graph:
    """Ops in execution order; `inputs` and `outputs` name tensors; `config` is the model's."""

    def __init__(self, ops, inputs=(INPUT,), outputs=None, config=None):
        self.ops = list(ops)
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs) if outputs is not None else (self.ops[-1].output,)
        self.config = dict(config or {})

    # -- structure --------------------------------------------------------------------------------
    def __iter__(self):
        return iter(self.ops)

    def __len__(self):
        return len(self.ops)

    def replace_ops(self, ops, outputs=None):
        """A graph of the same inputs and config with other ops (and outputs)."""
        return Graph(ops, self.inputs, outputs if outputs is not None else self.outputs, self.config)

    def producer(self, tensor):
        """The op that writes `tensor` (None for a graph input)."""
        return self._producers().get(tensor)

    def consumers(self, tensor):
        """The ops that read `tensor`, in order."""
        return [op for op in self.ops if tensor in op.inputs]

    def _producers(self):
        return {op.output: op for op in self.ops}

    def gate_ops(self):
        """Names of the ops that compute a `channel_scale` gate (squeeze-and-excitation's pool and
        fully connected layers): walking up from each gate input through linear, activation and
        pooling ops. Their vectors stand for 1x1 feature maps (the summary's "SE" rows, ONNX's
        1x1 convolutions)."""
        producers, found = self._producers(), set()
        stack = [op.inputs[1] for op in self.ops if op.kind == ChannelScale.kind]
        while stack:
            op = producers.get(stack.pop())
            if op is not None and op.kind in (Linear.kind, Activation.kind, GlobalAvgPool.kind) and op.name not in found:
                found.add(op.name)
                if op.kind != GlobalAvgPool.kind:
                    stack.extend(op.inputs)
        return found

    # -- shapes and values ------------------------------------------------------------------------
    def shapes(self, input_shape):
        """{tensor: shape} for an input of `input_shape` (each op's shape rule, in order)."""
        shapes = {self.inputs[0]: tuple(int(d) for d in input_shape)}
        for op in self.ops:
            shapes[op.output] = op.output_shape(*(shapes[t] for t in op.inputs))
        return shapes

    def run(self, x):
        """Every tensor's value for input `x`, by the slow NumPy reference (`evaluate.run`)."""
        return evaluate(self, x)

    def __call__(self, x):
        values = self.run(x)
        outputs = [values[t] for t in self.outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def __repr__(self):
        lines = [f"Graph({self.config.get('arch', '')}: {', '.join(self.inputs)} -> {', '.join(self.outputs)})"]
        lines += [f"  {op!r}" for op in self.ops]
        return "\n".join(lines)


def lower(model):
    """The `Graph` of a model (or any layer): each layer's `lower()`, in execution order.

    The graph is the model in eval mode whatever mode the model is in (batch norm with its
    running statistics, dropout the identity); it shares the model's arrays. A model whose
    `lower()` returns a tuple of tensors (SSDLite's twelve head maps) gives a graph with those
    outputs, in that order.
    """
    builder = Builder()
    output = model.lower(builder, INPUT, "")
    outputs = tuple(output) if isinstance(output, (tuple, list)) else (output,)
    return Graph(builder.ops, (INPUT,), outputs, getattr(model, "config", None))
