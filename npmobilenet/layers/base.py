"""The layer protocol every part of a model follows.

A layer is a `forward`/`backward` pair, side by side, and a `lower` that describes it as graph
ops (`npmobilenet.graph`) for every consumer that does not train it. `forward(x)` caches what `backward` needs;
`backward(dy)` returns `dx` and *overwrites* (does not accumulate) the `.grad` of each of its
parameters, since every parameter is used once per forward pass. Layers hold two kinds of state:
parameters (trained; `Parameter` objects with a gradient) and buffers (running statistics; plain
arrays). Names are dotted paths, e.g. `blocks.3.conv_dw.bn.gamma`.
"""
import numpy as np


class Parameter:
    """A trainable array and its gradient.

    `decay` says whether weight decay applies: False for batch-norm scale/shift and biases, so an
    optimizer can exempt them (as the MobileNet papers' training recipes do).
    """

    __slots__ = ("data", "grad", "decay")

    def __init__(self, data, decay=True):
        self.data = data
        self.grad = np.zeros_like(data)
        self.decay = decay

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self):
        return self.data.size

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}, decay={self.decay})"


class Layer:
    """Base class: parameters, buffers, children, train/eval switching, state dicts."""

    def __init__(self):
        self.training = True
        self._params = {}
        self._buffers = {}
        self._children = {}

    # -- registration -------------------------------------------------------------------------
    def add_param(self, name, data, decay=True):
        p = Parameter(data, decay)
        self._params[name] = p
        return p

    def add_buffer(self, name, data):
        self._buffers[name] = data
        return data

    def add_child(self, name, layer):
        self._children[str(name)] = layer
        return layer

    # -- the computation ----------------------------------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def lower(self, graph, x, name):
        """Append this layer's ops (`npmobilenet.graph.ops`) to `graph` (a `graph.Builder`),
        reading tensor `x`; return the name of the tensor it writes. `name` is the layer's dotted
        path, which its ops carry. Every layer a model holds describes itself here, once."""
        raise TypeError(f"layer {name} ({type(self).__name__}) has no lowering: a layer must describe "
                        "itself as graph ops in lower() (see npmobilenet.graph)")

    def lower_children(self, graph, x, name):
        """Lower the children in order, each reading the last one's output."""
        for child_name, child in self.children():
            x = child.lower(graph, x, f"{name}.{child_name}" if name else child_name)
        return x

    # -- traversal ----------------------------------------------------------------------------
    def children(self):
        """Direct sub-layers as `(name, layer)` in execution order."""
        return list(self._children.items())

    def modules(self, prefix=""):
        """Every layer in the tree, this one first, as `(dotted name, layer)`."""
        yield prefix, self
        for name, child in self._children.items():
            yield from child.modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        for mod_name, mod in self.modules(prefix):
            for name, p in mod._params.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for mod_name, mod in self.modules(prefix):
            for name, b in mod._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # -- modes --------------------------------------------------------------------------------
    def train(self, mode=True):
        for _, mod in self.modules():
            mod.training = mode
        return self

    def eval(self):
        return self.train(False)

    def astype(self, dtype):
        """Convert every parameter, gradient and buffer to `dtype` in place (float64 for gradient checks)."""
        dtype = np.dtype(dtype)
        for _, mod in self.modules():
            for p in mod._params.values():
                p.data = p.data.astype(dtype)
                p.grad = p.grad.astype(dtype)
            for name, b in mod._buffers.items():
                mod._buffers[name] = b.astype(dtype)
        return self

    @property
    def dtype(self):
        """The dtype of this layer's parameters (float32 unless `astype` changed it)."""
        for p in self.parameters():
            return p.data.dtype
        return np.dtype(np.float32)

    def zero_grad(self):
        for p in self.parameters():
            p.grad[...] = 0

    # -- state --------------------------------------------------------------------------------
    def state_dict(self):
        """Every parameter and buffer as `{dotted name: array}` (copies)."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update({name: b.copy() for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state):
        """Copy arrays from `state` into this layer's parameters and buffers, in place.

        Raises one ValueError listing every missing key, unexpected key and shape mismatch.
        """
        targets = {name: p.data for name, p in self.named_parameters()}
        targets.update(dict(self.named_buffers()))
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        mismatched = [
            f"{k}: model expects {targets[k].shape}, got {np.shape(state[k])}"
            for k in targets
            if k in state and tuple(np.shape(state[k])) != targets[k].shape
        ]
        if missing or unexpected or mismatched:
            lines = []
            if missing:
                lines.append("missing keys: " + ", ".join(missing))
            if unexpected:
                lines.append("unexpected keys: " + ", ".join(unexpected))
            if mismatched:
                lines.append("shape mismatches: " + "; ".join(mismatched))
            raise ValueError("state does not match the model:\n  " + "\n  ".join(lines))
        for k, target in targets.items():
            target[...] = np.asarray(state[k], dtype=target.dtype)
        return self

    def extra_repr(self):
        return ""

    def __repr__(self):
        head = f"{type(self).__name__}({self.extra_repr()})"
        if not self._children:
            return head
        body = "\n".join(
            "  (" + name + "): " + repr(child).replace("\n", "\n  ") for name, child in self._children.items()
        )
        return head + "\n" + body
