"""Memory plan: every activation of a fused network lives in one of a few reused buffers.

For one input shape (N, H, W, 3) the plan walks the fused layers once, giving each tensor (layer
outputs, and the small workspaces some kernels need) its shape and its lifetime: from the step
that writes it to the last step that reads it. Tensors whose lifetimes do not overlap share a
buffer ("slot"), chosen greedily (best fit among free slots, else grow the largest free one, else
a new slot); a tensor is a view of the start of its slot. A block's input stays live until its
projection adds it back (the shortcut), so an inverted residual holds at most its input, its
expansion and its depthwise output at once; MobileNet needs four or five slots in all.

The slots are consecutive, 64-byte-aligned pieces of one array (the arena), so that the op table
of `program.py` can name every tensor by its offset. Buffers are allocated when the plan is made; steady-state inference then allocates nothing for
activations (the only allocation per call is the returned copy of the logits). A new plan is
made when the batch size or resolution changes.

The total size of those buffers (`model.planned_peak_bytes`) is the activation memory
inference needs, input copy and logits included, weights excluded.
"""
import math

import numpy as np

from npmobilenet.inference.program import MAX_WORKERS, Program


ALIGN = 16      # float32 elements: 64 bytes, a cache line (and an AVX-512 register)


def aligned(size):
    """`size` elements rounded up to a whole number of ALIGN-element blocks."""
    return -(-int(size) // ALIGN) * ALIGN


def aligned_empty(size):
    """An uninitialised float32 array of `size` elements starting on a 64-byte boundary (numpy's
    own start 16 bytes past one, where half of a 32-byte vector's loads would cross two cache lines)."""
    raw = np.empty(int(size) + ALIGN, np.float32)
    start = (-raw.ctypes.data // 4) % ALIGN
    return raw[start:start + int(size)]


def _liveness(layers, input_shape, outputs=None, input_name="input", workers=MAX_WORKERS):
    """Shapes of every tensor and the steps that write and last read it (workspaces with a block for
    each of `workers` workers)."""
    shapes = {input_name: tuple(input_shape)}
    first, last = {input_name: -1}, {input_name: -1}
    steps = []
    for i, layer in enumerate(layers):
        in_shapes = [shapes[name] for name in layer.inputs]
        out_shapes = layer.output_shapes(in_shapes)
        work_shapes = layer.workspace_shapes(in_shapes, workers)
        work_names = [f"{layer.name}#workspace{k}" for k in range(len(work_shapes))]
        for name in layer.inputs:
            last[name] = i
        for name, shape in zip(list(layer.outputs) + work_names, out_shapes + work_shapes):
            if name in shapes:
                raise ValueError(f"tensor {name!r} is written twice")
            shapes[name] = tuple(int(d) for d in shape)
            first[name] = last[name] = i
        steps.append((layer, in_shapes, list(layer.inputs) + list(layer.outputs) + work_names))
    for name in outputs or (layers[-1].outputs[0],):
        if name not in shapes:
            raise ValueError(f"output {name!r} is written by no layer")
        last[name] = len(layers)               # the outputs (logits, maps) outlive the last step
    return shapes, first, last, steps


def assign_slots(shapes, first, last):
    """Greedy interval packing: tensor name -> slot index, and each slot's capacity (elements)."""
    order = sorted(shapes, key=lambda name: first[name])      # the input first (written at step -1)
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

    `arena`: the one float32 array allocated; `buffers`: its slots; `tensors`: name -> view into
    a slot, `offsets`: name -> its offset in the arena; `program`: the network as one op table
    over the arena (`program.py`; what the fused model runs), `layer_ops`: layer name -> its ops
    (k0, k1) in the table (with `params`, the model's packed weights); `calls`: [(kernel, args)],
    each layer by its own serial kernel, which computes the same tiles as the program (a second
    path to test it against, and to time a layer's kernel alone); `input`/`outputs`: the views the model copies
    in and out (the tensors named `outputs`, by default the last layer's first output; `output`: the
    first). The input is the tensor "input" (the images), or `input_name` for a plan of the layers
    after some tensor (the classifier after the pooled features: `model.py`). `workers`: how many
    threads may run the table at once (each with its block of every workspace): MAX_WORKERS, or 1
    for a plan only one thread runs (a chunk of a batch).
    """

    def __init__(self, layers, input_shape, sgemm, params=None, outputs=None, input_name="input", workers=MAX_WORKERS):
        self.input_shape = tuple(input_shape)
        shapes, first, last, steps = _liveness(layers, input_shape, outputs, input_name, workers)
        slot_of, capacity = assign_slots(shapes, first, last)
        # the slots are consecutive 64-byte-aligned pieces of one arena, which the op table of
        # `program.py` addresses by offset
        starts = np.concatenate([[0], np.cumsum([aligned(size) for size in capacity])]).astype(int)
        self.arena = aligned_empty(starts[-1])
        self.buffers = [self.arena[starts[k]:starts[k + 1]] for k in range(len(capacity))]
        self.offsets = {name: int(starts[slot_of[name]]) for name in shapes}
        self.tensors = {
            name: self.buffers[slot_of[name]][: math.prod(shape)].reshape(shape) for name, shape in shapes.items()}
        self.slot_of = slot_of
        self.input = self.tensors[input_name]
        self.outputs = [self.tensors[name] for name in outputs or (layers[-1].outputs[0],)]
        self.output = self.outputs[0]
        # the same layers as one op table (all of them tiled; run by `program.run(threads)`)
        self.program, self.layer_ops = None, {}
        if params is not None:
            rows = []
            for layer, in_shapes, names in steps:
                ops = layer.program_ops([self.offsets[n] for n in names], in_shapes, workers)
                self.layer_ops[layer.name] = (len(rows), len(rows) + len(ops))
                rows.extend(ops)
            self.program = Program(rows, params, self.arena, sgemm, workers=workers)
        # (after the table: its kernels are compiled first, by two processes on a cold start)
        self.calls = [layer.call([self.tensors[n] for n in names], False, sgemm) for layer, _, names in steps]

    @property
    def nbytes(self):
        return self.arena.nbytes

    @staticmethod
    def costs(layers, input_shape, outputs=None, input_name="input"):
        """[(name, description, macs, bytes moved)] per layer for `input_shape`."""
        _, _, _, steps = _liveness(layers, input_shape, outputs, input_name)
        return [(layer.name, layer.describe(), layer.macs(s), layer.bytes_moved(s)) for layer, s, _ in steps]

    @staticmethod
    def layout_bytes(layers, input_shape, outputs=None, input_name="input", workers=MAX_WORKERS):
        """What a plan for `input_shape` allocates, in bytes, without allocating it."""
        shapes, first, last, _ = _liveness(layers, input_shape, outputs, input_name, workers)
        return 4 * sum(aligned(size) for size in assign_slots(shapes, first, last)[1])
