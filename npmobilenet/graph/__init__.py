"""One lowered description of a model for every consumer.

Each layer and block describes itself once, in its `lower()`, as a short list of generic ops
(`ops.py`: conv, batch_norm, activation, global_avg_pool, linear, channel_scale, add, resize). Fused
inference, int8 quantization, ONNX export and the summary read that list, never the layer tree.

    graph = lower(model)                  # ops in execution order, the model's own arrays
    graph = fold_batch_norm(graph)        # the one place batch norm is folded (passes.py)
    graph = fuse_activations(graph)       # activations into the conv or linear before them
    graph(x)                              # the NumPy reference result (evaluate.py)
"""
from npmobilenet.graph.graph import INPUT, Builder, Graph, lower
from npmobilenet.graph.ops import (
    ACTIVATION_FUNCTIONS, Activation, Add, BatchNorm, ChannelScale, Conv, GlobalAvgPool, Linear, Op, Resize,
)
from npmobilenet.graph.passes import fold_batch_norm, fold_scale, fuse_activations, inference_graph

__all__ = [
    "INPUT", "Builder", "Graph", "lower", "Op", "Conv", "BatchNorm", "Activation", "GlobalAvgPool", "Linear",
    "ChannelScale", "Add", "Resize", "ACTIVATION_FUNCTIONS", "fold_batch_norm", "fold_scale", "fuse_activations",
    "inference_graph",
]
