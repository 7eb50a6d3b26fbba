"""An int8 model's ops bound once to buffers for one input shape: a list of kernel calls.

Why: at batch 1 a MobileNet is ~60 int8 ops of 10-200 us each, and `op.evaluate` spent ~20 us
of Python per op on shapes, padding, allocation and argument checks. A plan does that once:
every tensor gets a buffer, every op its `calls` (qops.py: kernels with their arguments bound to
those buffers), and a run copies the input in, calls each kernel in turn and copies the logits
out. The kernels are the ones `evaluate` runs, so the bits are the same.

Threads: the calls are then written into an op table (`qprogram.py`) that the caller and helper
threads run together, as the float model's, when every call has a table kernel (all but the
exact float32 paths), its tiles sized for the configured thread count (fewer and larger for one
thread); otherwise the calls run in turn from Python, each kernel parallel on its own.

Fusion: where VNNI is enabled, a pointwise layer whose output only a residual add reads, right
after it, writes the add's output directly (`qkernels.pointwise_int8_call` with a residual): the
layer's int8 output is computed in registers, exactly as stored, and added there.
"""
import numpy as np

from npmobilenet import config
from npmobilenet.compression import qprogram, vnni
from npmobilenet.inference.plan import assign_slots
from npmobilenet.ops.blas import single_threaded_blas


def _fusable_add(ops, k, readers, output):
    """The add that op k's output feeds and that can be fused into it, or None."""
    op = ops[k]
    if op.kind != "conv" or op.variant != "pointwise" or k + 1 >= len(ops) or not vnni.packed_enabled():
        return None
    add = ops[k + 1]
    if add.kind != "add" or op.output not in add.inputs or add.inputs[0] == add.inputs[1]:
        return None
    if readers[op.output] != 1 or op.output == output:
        return None
    return add


def _offsets(ops, shapes, output):
    """Byte offsets of every tensor in one arena and the arena's size: tensors whose lifetimes do
    not overlap share a slot, by the float model's memory plan (`inference.plan.assign_slots`),
    so the arena holds a few layers' activations rather than all of them (MobileNetV2 at batch
    32: 208 MiB in all). Each lifetime is held one op longer: a pointwise layer fused with the add
    after it (`_fusable_add`) writes the add's output while still reading its own inputs."""
    first, last = {"input": -1}, {name: -1 for name in shapes}
    for k, op in enumerate(ops):
        first[op.output] = k
        for name in op.inputs:
            last[name] = k
    last[output] = len(ops)                 # kept to the end
    slot_of, capacity = assign_slots(shapes, first, {name: k + 1 for name, k in last.items()})
    starts = np.cumsum([0] + [qprogram.Arena.size(size) for size in capacity])
    return {name: int(starts[slot_of[name]]) for name in shapes}, int(starts[-1])


class Int8Plan:
    """`QuantizedModel` ops bound to buffers for input (N, H, W, 3) int8; `run(xq)` -> int8 logits."""

    def __init__(self, qmodel, input_shape, float_kernels=False, table=True):
        """`table=False`: run the calls from Python even where the op table could."""
        ops, zero_points = qmodel.ops, {name: z for name, (_, z) in qmodel.tensors.items()}
        shapes = {"input": tuple(input_shape)}
        for op in ops:
            shapes[op.output] = op.output_shape(shapes[op.inputs[0]])
        readers = {name: 0 for name in shapes}
        for op in ops:
            for name in op.inputs:
                readers[name] += 1
        offsets, nbytes = _offsets(ops, shapes, qmodel.output)
        self.activation_bytes = nbytes      # the arena's activations (the constants follow them)
        arena = qprogram.Arena(nbytes)
        self.buffers = {name: arena.at(offsets[name], shape) for name, shape in shapes.items()}
        self.output = qmodel.output
        self.calls, self.fused = [], []
        k = 0
        while k < len(ops):
            op = ops[k]
            xs = [self.buffers[name] for name in op.inputs]
            add = _fusable_add(ops, k, readers, qmodel.output)
            if add is not None:
                residual, params = add.fused_params(op.output, zero_points)
                self.calls += op.calls(xs, zero_points, self.buffers[add.output], float_kernels,
                                       self.buffers[residual], params)
                del self.buffers[op.output]
                self.fused.append((op.name, add.name))
                k += 2
                continue
            self.calls += op.calls(xs, zero_points, self.buffers[op.output], float_kernels)
            k += 1
        # tiled for the configured threads (`qmodel.plan` keys its plans by them)
        self.program = qprogram.build(self.calls, arena, config.get_num_threads()) if table else None
        if self.program is not None:
            # the table runs on its own arena (the activations' bytes first, then the constants)
            whole = self.program.arena.view(np.int8)
            for name, buffer in self.buffers.items():
                start = arena.offset(buffer)
                self.buffers[name] = whole[start:start + buffer.size].reshape(buffer.shape)
            self.calls = None       # bound to the first arena, which they would keep alive

    def run(self, xq, threads=None):
        """int8 logits of xq, on `threads` (default: `config.get_num_threads()`)."""
        self.buffers["input"][...] = xq
        if self.program is not None:
            with single_threaded_blas():
                self.program.run(config.get_num_threads() if threads is None else threads)
        else:
            for kernel, args in self.calls:
                kernel(*args)
        return self.buffers[self.output].copy()
