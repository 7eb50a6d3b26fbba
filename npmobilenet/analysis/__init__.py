"""Cost analysis: parameters and multiply-accumulates by formula, per op and per layer.

`npmobilenet.analysis.ops` holds the per-op formulas (shapes in, costs out, no arrays);
`npmobilenet.analysis.summary` walks a model with them (the `npmobilenet summary` command):
`summarize(model, resolution)` -> `Summary`, whose repr is the per-layer table.
"""
from npmobilenet.analysis.ops import (
    OpCost,
    batch_norm_cost,
    conv2d_cost,
    depthwise_conv2d_cost,
    global_avg_pool_cost,
    linear_cost,
    pointwise_conv2d_cost,
    separable_conv2d_cost,
    separable_ratio,
    sliding_window_count,
)
from npmobilenet.analysis.summary import Summary, summarize  # the graph it reads is loaded with npmobilenet

__all__ = [
    "OpCost",
    "batch_norm_cost",
    "conv2d_cost",
    "depthwise_conv2d_cost",
    "global_avg_pool_cost",
    "linear_cost",
    "pointwise_conv2d_cost",
    "separable_conv2d_cost",
    "separable_ratio",
    "sliding_window_count",
    "Summary",
    "summarize",
]
