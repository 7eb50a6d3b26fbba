"""A lowered graph computed by the slow NumPy reference: every tensor, op by op.

Convolutions are `npmobilenet.ops.reference`'s tap-by-tap sums (which share no code with any
kernel), so this is an oracle for the fused and int8 engines as well as what int8 calibration
runs to see every activation. Arithmetic is in the input's dtype (float32 or float64).
"""
import numpy as np

from npmobilenet.ops import reference


def _hardsigmoid(x):
    return np.clip(x + 3, 0, 6) / 6


def _sigmoid(x):
    # 1 / (1 + exp(-x)) = exp(min(x, 0)) / (1 + exp(-|x|)): exp never overflows, no cancellation
    return np.exp(np.minimum(x, 0)) / (1 + np.exp(-np.abs(x)))


ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "hardsigmoid": _hardsigmoid,                   # relu6(x + 3) / 6 (V3 paper, sec. 5.2)
    "hardswish": lambda x: x * _hardsigmoid(x),    # V3 paper, Eq. (2)
    "sigmoid": _sigmoid,                           # LR-ASPP's gate (V3 paper, sec. 6.3)
}
CONVOLUTIONS = {"standard": reference.conv2d, "depthwise": reference.depthwise_conv2d}


def activate(function, x):
    return x if function is None else ACTIVATIONS[function](x)


def conv(op, x):
    if op.variant == "pointwise":
        y = reference.pointwise_conv2d(x, op.weight.astype(x.dtype))
    else:
        top, bottom, left, right = op.padding_at(x.shape[1], x.shape[2])
        y = CONVOLUTIONS[op.variant](x, op.weight.astype(x.dtype), stride=op.stride,
                                     padding=((top, bottom), (left, right)), dilation=op.dilation)
    return activate(op.activation, y if op.bias is None else y + op.bias)


def linear(op, x):
    y = x @ op.weight.astype(x.dtype)
    return activate(op.activation, y if op.bias is None else y + op.bias)


def batch_norm(op, x):
    mean, var, gamma, beta = (np.asarray(a, x.dtype) for a in (op.mean, op.var, op.gamma, op.beta))
    return (x - mean) / np.sqrt(var + op.eps) * gamma + beta        # var + eps in x's dtype too


def _bilinear_taps(size, out_size):
    """(lower index, upper index, weight of the upper) per output position along one axis:
    position (o + 0.5) size / out_size - 0.5, clamped at 0 (PyTorch, align_corners=False)."""
    position = np.maximum((np.arange(out_size) + 0.5) * size / out_size - 0.5, 0.0)
    lower = np.minimum(np.floor(position).astype(np.int64), size - 1)
    upper = np.minimum(lower + 1, size - 1)
    return lower, upper, position - lower


def resize(op, x, like):
    (top, bottom, wy), (left, right, wx) = (_bilinear_taps(x.shape[1], like.shape[1]),
                                            _bilinear_taps(x.shape[2], like.shape[2]))
    rows = x[:, top] * (1 - wy)[None, :, None, None] + x[:, bottom] * wy[None, :, None, None]
    return rows[:, :, left] * (1 - wx)[None, None, :, None] + rows[:, :, right] * wx[None, None, :, None]


STEPS = {
    "conv": conv,
    "linear": linear,
    "batch_norm": batch_norm,
    "activation": lambda op, x: ACTIVATIONS[op.function](x),
    "global_avg_pool": lambda op, x: x.mean(axis=(1, 2)),
    "channel_scale": lambda op, x, gate: x * gate[:, None, None, :],
    "add": lambda op, a, b: a + b,
    "resize": resize,
}


def run(graph, x):
    """{tensor: value} of every tensor of `graph` for input `x` (N, H, W, C) float."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be a float array, got dtype {x.dtype}")
    dtype = x.dtype
    values = {graph.inputs[0]: x}
    for op in graph.ops:
        step = STEPS.get(op.kind)
        if step is None:
            raise NotImplementedError(f"the NumPy reference has no {op.kind!r} op ({op.name})")
        values[op.output] = np.asarray(step(op, *(values[t] for t in op.inputs)), dtype)
    return values
