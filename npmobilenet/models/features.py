"""Feature maps out of a backbone at named points ("taps"), forward and backward.

A tap is a module's dotted name; its map is that module's output. The model's *path* is its
top-level steps in order (stem, blocks.0, ..., blocks.N-1, head, pool, classifier.*); a tap is
either a path step ("blocks.5", "head") or a module inside one ("blocks.12.conv_pw": block 12
after its expansion, before its depthwise convolution). The forward pass runs the path only as
far as the deepest tap; a tap inside a step is read by shadowing that module's `forward` for the
one call, and its gradient joins the gradient coming back from later layers by shadowing its
`backward` (PyTorch's forward hook and backward pre-hook), so no block has tap code and there is
no second walker over the model.

The default taps (`stage_ends`) are the last step of each stage, a stage starting at the stem
and at every block whose table stride is > 1, the 1x1 head conv closing the last stage: timm's
`features_only` taps for V3 and V4 (V3-Large: 16, 24, 40, 112, 960 channels at reductions 2, 4,
8, 16, 32), torchvision's `features[-1]` for the last one of V2 (1280; timm's V2 ends at the
320-channel block, the tap "blocks.16"). With `output_stride` 16 or 8 the stages stay the same
and the dilated ones report the smaller reduction, as timm's do.
"""
import contextlib
from dataclasses import dataclass

import numpy as np

from npmobilenet.graph.graph import INPUT, Builder, Graph

PROBE = 224  # an input size divisible by 32, at which every map's size is the input's over its reduction


@dataclass(frozen=True)
class FeatureTap:
    """One feature map: the module whose output it is, its channels, and its reduction (input
    size over the map's size: its stride)."""
    name: str
    channels: int
    reduction: int


def path_names(model):
    """The model's top-level steps in execution order, as dotted names."""
    return [name for name, _ in model.path()]


def stage_ends(model):
    """The default taps: the last step of each stage (see the module docstring)."""
    names = ["stem"]
    for i, block in enumerate(model.spec.blocks):
        if block.stride > 1:
            names.append(None)           # a new stage starts here: the previous step ended one
        names.append(f"blocks.{i}")
    if model.head is not None:
        names.append("head")
    ends = [names[i - 1] for i in range(1, len(names)) if names[i] is None]
    return ends + [names[-1]]


def anchor_of(model, tap):
    """The index in the path of the step that is `tap` or holds it; a ValueError naming the
    accepted forms when `tap` is no module with a feature map."""
    modules = dict(model.modules())
    steps = path_names(model)
    last_map = steps.index("pool") - 1   # after pooling there are vectors, not maps
    if isinstance(tap, str) and tap in modules:
        for i, step in enumerate(steps[:last_map + 1]):
            if tap == step or tap.startswith(step + "."):
                return i
    raise ValueError(f"tap {tap!r} is not a module with a feature map: give a step of the path ({steps[0]}, "
                     f"blocks.0 ... {steps[last_map]}) or a module inside one, e.g. 'blocks.3.conv_pw' "
                     f"(names from model.modules())")


def resolve_taps(model, out_indices):
    """Tap names for `out_indices`: None (every default tap), or a list of indices into
    `stage_ends` (negative ones count from the end, as timm's) and/or module names."""
    ends = stage_ends(model)
    if out_indices is None:
        return list(ends)
    if isinstance(out_indices, (str, int, np.integer)):
        raise ValueError(f"out_indices must be a list of indices into feature_info or of module names, "
                         f"got {out_indices!r}")
    taps = []
    for item in out_indices:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not -len(ends) <= item < len(ends):
                raise ValueError(f"out_indices: {item} is out of range for the {len(ends)} default taps {ends}")
            taps.append(ends[item])
        else:
            anchor_of(model, item)          # raises for a name that is no map
            taps.append(item)
    if not taps:
        raise ValueError("out_indices must name at least one tap")
    repeated = sorted({tap for tap in taps if taps.count(tap) > 1})
    if repeated:
        raise ValueError(f"out_indices names the same tap more than once: {repeated}")
    return taps


def tap_tensors(ops, taps, prefix=""):
    """The tensor each tap's module writes last among lowered `ops` (its block's residual add, its
    activation...): the last op named after the module or inside it."""
    found = []
    for tap in taps:
        full = f"{prefix}.{tap}" if prefix else tap
        tensor = None
        for op in ops:
            if op.name == full or op.name.startswith(full + "."):
                tensor = op.output
        if tensor is None:
            raise ValueError(f"tap {tap!r}: no lowered op comes from module {full!r}")
        found.append(tensor)
    return found


def lower_features(model, graph, x, name, taps):
    """Append to `graph` (a `graph.Builder`) the model's ops up to its deepest tap, reading tensor
    `x`, with op names under `name`; return the tensor names of the taps' maps, in order."""
    anchors = [anchor_of(model, tap) for tap in taps]
    first = len(graph.ops)
    for step, layer in model.path()[:max(anchors) + 1]:
        x = layer.lower(graph, x, f"{name}.{step}" if name else step)
    return tap_tensors(graph.ops[first:], taps, name)


def describe_taps(model, taps):
    """`FeatureTap`s of `taps`: channels and reduction from the lowered graph's shape rules at a
    PROBE x PROBE input (no arrays are computed)."""
    builder = Builder()
    tensors = lower_features(model, builder, INPUT, "", taps)
    shapes = Graph(builder.ops).shapes((1, PROBE, PROBE, 3))
    infos = []
    for tap, tensor in zip(taps, tensors):
        shape = shapes[tensor]
        if len(shape) != 4:
            raise ValueError(f"tap {tap!r} is a vector of shape {shape}, not a feature map")
        infos.append(FeatureTap(tap, int(shape[3]), PROBE // int(shape[1])))
    return infos


@contextlib.contextmanager
def _capturing(layer, sink):
    """While open, `layer`'s output is appended to `sink` on every forward call."""
    def forward(x):
        y = type(layer).forward(layer, x)
        sink.append(y)
        return y
    layer.forward = forward
    try:
        yield
    finally:
        del layer.forward


@contextlib.contextmanager
def _adding_gradient(layer, dmap):
    """While open, `layer.backward(dy)` receives dy + dmap: the tap's own gradient joins the
    gradient that the layers after it send back."""
    def backward(dy):
        return type(layer).backward(layer, dy + dmap)
    layer.backward = backward
    try:
        yield
    finally:
        del layer.backward


class FeatureRun:
    """One forward pass through the taps, kept for the backward pass."""

    def __init__(self, model, taps):
        self.model, self.taps = model, list(taps)
        self.anchors = [anchor_of(model, tap) for tap in self.taps]
        self.steps = model.path()[:max(self.anchors) + 1]
        self.modules = dict(model.modules())

    def forward(self, x):
        """x: (N, H, W, 3) -> the taps' maps, each (N, h, w, channels)."""
        inner = {k: [] for k, tap in enumerate(self.taps) if tap != self.steps[self.anchors[k]][0]}
        maps = [None] * len(self.taps)
        self.input_shape, self.step_shapes = x.shape, []
        with contextlib.ExitStack() as stack:
            for k, sink in inner.items():
                stack.enter_context(_capturing(self.modules[self.taps[k]], sink))
            for i, (step, layer) in enumerate(self.steps):
                x = layer(x)
                self.step_shapes.append(x.shape)
                for k, anchor in enumerate(self.anchors):
                    if anchor == i and k not in inner:
                        maps[k] = x
        for k, sink in inner.items():
            if len(sink) != 1:
                raise RuntimeError(f"tap {self.taps[k]!r} ran {len(sink)} times in one forward pass, expected once")
            maps[k] = sink[0]
        for tap, value in zip(self.taps, maps):
            if value.ndim != 4:
                raise ValueError(f"tap {tap!r} is a vector of shape {value.shape}, not a feature map")
        self.shapes = [m.shape for m in maps]
        return maps

    def backward(self, dmaps, dtype):
        """dmaps: one gradient per map (None: no gradient) -> dx (N, H, W, 3). Fills the gradient
        of every parameter: through the taps, and zero for the steps after the deepest tap (which
        did not run) or that no tap's gradient reaches."""
        if len(dmaps) != len(self.taps):
            raise ValueError(f"backward_features needs one gradient per feature map ({len(self.taps)}: "
                             f"{self.taps}), got {len(dmaps)}")
        grads = []
        for tap, shape, d in zip(self.taps, self.shapes, dmaps):
            if d is not None:
                if not isinstance(d, np.ndarray) or d.shape != shape:
                    got = d.shape if isinstance(d, np.ndarray) else type(d).__name__
                    raise ValueError(f"the gradient of tap {tap!r} must have its map's shape {shape}, got {got}")
                d = np.ascontiguousarray(d, dtype=dtype)
            grads.append(d)
        for _, layer in self.model.path()[len(self.steps):]:
            layer.zero_grad()
        inner = {k for k, tap in enumerate(self.taps) if tap != self.steps[self.anchors[k]][0]}
        d = None
        with contextlib.ExitStack() as stack:
            for k in inner:
                if grads[k] is not None:
                    stack.enter_context(_adding_gradient(self.modules[self.taps[k]], grads[k]))
            for i in range(len(self.steps) - 1, -1, -1):
                for k, anchor in enumerate(self.anchors):
                    if anchor == i and k not in inner and grads[k] is not None:
                        d = grads[k] if d is None else d + grads[k]
                if d is None and any(self.anchors[k] == i and grads[k] is not None for k in inner):
                    d = np.zeros(self.step_shapes[i], dtype)   # a tap inside this step is where gradient starts
                if d is None:
                    self.steps[i][1].zero_grad()               # no gradient reaches this step
                    continue
                d = self.steps[i][1].backward(d)
        return d if d is not None else np.zeros(self.input_shape, dtype)
