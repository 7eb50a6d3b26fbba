"""Fast CPU inference: `model.fuse()` runs the model's lowered graph (`npmobilenet.graph`) with
batch norm folded and each convolution fused with its bias, activation, residual add and
squeeze-and-excitation (an inverted residual's expansion with its depthwise convolution, on large
maps in bands of rows), over a memory plan of a few reused buffers, as one table of tiled ops that
the threads share.

    model.py    fuse_model / FusedMobileNet: the inference-only model, chunked batches, planned memory
    compile.py  inference graph -> fused layers (the residual, SE and expansion patterns)
    layers.py   the fused layer kinds: shapes, costs, kernel calls, op-table rows
    plan.py     the memory plan;  program.py  the network as one op table;  atomics.py
    kernels.py  the per-layer kernels (convolution tiles from npmobilenet.ops);  tiles.py  SE gate,
                pooling, linear;  tiling.py  tile sizes and bands;  threads.py  thread counts, the governor
    bench.py    `npmobilenet bench`: latency beside PyTorch and ONNX Runtime
"""
from npmobilenet.inference.model import FusedMobileNet, fold_batch_norm, fuse_model, planned_peak_bytes
from npmobilenet.inference.plan import MemoryPlan

__all__ = ["FusedMobileNet", "MemoryPlan", "fold_batch_norm", "fuse_model", "planned_peak_bytes"]
