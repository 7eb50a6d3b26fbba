"""Memory plan: every activation of a fused network lives in one of a few reused buffers.

For one input shape (N, H, W, 3) the plan walks the fused layers once, giving each tensor (layer
outputs, and the small workspaces some kernels need) its shape and its lifetime: from the step
that writes it to the last step that reads it. Tensors whose lifetimes do not overlap share a
buffer ("slot"), chosen greedily (best fit among free slots, else grow the largest free one, else
a new slot); a tensor is a view of the start of its slot. A block's input stays live until its
projection adds it back (the shortcut), so an inverted residual holds at most its input, its
expansion and its depthwise output at once; MobileNet needs four or five slots in all.

Buffers are allocated when the plan is made; steady-state inference then allocates nothing for
activations (the only allocation per call is the returned copy of the logits). A new plan is
made when the batch size or resolution changes.

`planned_peak_bytes(model, resolution, batch)` is the total size of those buffers: the activation
memory inference needs, input copy and logits included, weights excluded.
"""
import math

import numpy as np


def _liveness(layers, input_shape):
    """Shapes of every tensor and the steps that write and last read it."""
    shapes = {"input": tuple(input_shape)}
    first, last = {"input": -1}, {"input": -1}
    steps = []
    for i, layer in enumerate(layers):
        in_shapes = [shapes[name] for name in layer.inputs]
        out_shapes = layer.output_shapes(in_shapes)
        work_shapes = layer.workspace_shapes(in_shapes)
        work_names = [f"{layer.name}#workspace{k}" for k in range(len(work_shapes))]
        for name in layer.inputs:
            last[name] = i
        for name, shape in zip(list(layer.outputs) + work_names, out_shapes + work_shapes):
            if name in shapes:
                raise ValueError(f"tensor {name!r} is written twice")
            shapes[name] = tuple(int(d) for d in shape)
            first[name] = last[name] = i
        steps.append((layer, in_shapes, list(layer.inputs) + list(layer.outputs) + work_names))
    last[layers[-1].outputs[0]] = len(layers)  # the logits outlive the last step
    return shapes, first, last, steps


def _assign_slots(shapes, first, last):
    """Greedy interval packing: tensor name -> slot index, and each slot's capacity (elements)."""
    order = sorted(shapes, key=lambda name: (first[name], name != "input"))
    capacity, holder_last, slot_of = [], [], {}
    for name in order:
        size = math.prod(shapes[name])
        free = [s for s in range(len(capacity)) if holder_last[s] < first[name]]
        fitting = [s for s in free if capacity[s] >= size]
        if fitting:
            slot = min(fitting, key=lambda s: capacity[s])
        elif free:
            slot = max(free, key=lambda s: capacity[s])
            capacity[slot] = size
        else:
            slot = len(capacity)
            capacity.append(size)
            holder_last.append(-2)
        holder_last[slot] = last[name]
        slot_of[name] = slot
    return slot_of, capacity


class MemoryPlan:
    """Buffers, tensor views and the kernel calls of a fused network for one input shape.

    `buffers`: the float32 arrays allocated; `tensors`: name -> view into a buffer; `calls`:
    [(kernel, args)] to run in order; `input`/`output`: the views the model copies in and out.
    """

    def __init__(self, layers, input_shape, parallel_min_macs, sgemm):
        self.input_shape = tuple(input_shape)
        shapes, first, last, steps = _liveness(layers, input_shape)
        slot_of, capacity = _assign_slots(shapes, first, last)
        self.buffers = [np.empty(size, np.float32) for size in capacity]
        self.tensors = {
            name: self.buffers[slot_of[name]][: math.prod(shape)].reshape(shape) for name, shape in shapes.items()}
        self.slot_of = slot_of
        self.parallel = {}
        self.calls = []
        self.layer_names = []
        for layer, in_shapes, names in steps:
            work = max(layer.macs(in_shapes), layer.bytes_moved(in_shapes) // 4)
            parallel = work >= parallel_min_macs
            self.parallel[layer.name] = parallel
            self.calls.append(layer.call([self.tensors[n] for n in names], parallel, sgemm))
            self.layer_names.append(layer.name)
        self.input = self.tensors["input"]
        self.output = self.tensors[layers[-1].outputs[0]]

    @property
    def nbytes(self):
        return sum(b.nbytes for b in self.buffers)

    @staticmethod
    def costs(layers, input_shape):
        """[(name, description, macs, bytes moved)] per layer for `input_shape`."""
        _, _, _, steps = _liveness(layers, input_shape)
        return [(layer.name, layer.describe(), layer.macs(s), layer.bytes_moved(s)) for layer, s, _ in steps]

    @staticmethod
    def layout_bytes(layers, input_shape):
        """What a plan for `input_shape` allocates, in bytes, without allocating it."""
        shapes, first, last, _ = _liveness(layers, input_shape)
        return 4 * sum(_assign_slots(shapes, first, last)[1])


def planned_peak_bytes(model, resolution=224, batch=1, threads=1):
    """Activation memory (bytes) fused inference allocates for `batch` images of `resolution`.

    model: a MobileNet (fused or not; an unfused model is laid out as `model.fuse()` would lay it
    out, in any mode). resolution: an int (square) or (H, W). `batch=1` gives bytes per image.
    Counts the plans' buffers: input copy, every activation and workspace, logits; not weights.
    A batch run in chunks (`fuse.chunk_images`) holds one plan per worker thread (`threads`),
    plus, when the batch is not a whole number of chunks, one plan for the last, smaller chunk
    (an upper bound then: the worker that runs the last chunk may hold no full-size plan).
    """
    from npmobilenet.inference.fuse import CHUNK_PIXELS, FusedMobileNet, chunk_images, fused_layers

    if isinstance(resolution, (tuple, list)):
        h, w = (int(r) for r in resolution)
    else:
        h = w = int(resolution)
    if h < 32 or w < 32:
        raise ValueError(f"resolution must be at least 32x32, got {h}x{w}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    fused = isinstance(model, FusedMobileNet)
    layers = model.layers if fused else fused_layers(model)
    chunk = chunk_images(int(batch), h, w, model.chunk_pixels if fused else CHUNK_PIXELS)
    if chunk >= batch:
        return MemoryPlan.layout_bytes(layers, (int(batch), h, w, 3))
    chunks, remainder = divmod(int(batch), chunk)
    total = min(int(threads), chunks + (remainder > 0)) * MemoryPlan.layout_bytes(layers, (chunk, h, w, 3))
    if remainder:
        total += MemoryPlan.layout_bytes(layers, (remainder, h, w, 3))
    return total
