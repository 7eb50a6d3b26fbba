"""Slow, readable integer arithmetic: the oracle the int8 kernels are tested against bit for bit,
beside `reference.py`, the float oracle.

It shares no code with the kernels (`npmobilenet.compression.qkernels`). Where the kernels follow gemmlowp's step-by-step integer
recipes, this module writes the same roundings in closed form, on whole int64 arrays:

    saturating_rounding_doubling_high_mul(a, b) = floor((a*b + 2^30) / 2^31)     (round half up)
    rounding_divide_by_pot(x, e)                = sign(x) * floor((|x| + 2^(e-1)) / 2^e)
                                                                             (round half away from 0)

and each convolution as a sum over kernel taps of int64 products on a zero-point-padded input
(padding holds q = z_x, the real value 0), in the style of `npmobilenet.ops.reference`.
"""
import numpy as np

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def srdhm(a, b):
    """round(a * b / 2^31), ties toward +inf, saturating the single overflow a = b = -2^31."""
    a, b = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
    out = (a * b + 2**30) // 2**31
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, out)


def rdbpot(x, exponent):
    """x / 2^exponent rounded to nearest, ties away from zero."""
    x, exponent = np.broadcast_arrays(np.asarray(x, np.int64), np.asarray(exponent, np.int64))
    half = np.where(exponent > 0, np.left_shift(1, np.maximum(exponent - 1, 0)), 0)
    return np.sign(x) * ((np.abs(x) + half) // np.left_shift(1, exponent))


def requantize(acc, multiplier, shift):
    """acc * multiplier * 2^(shift - 31) in integers: left shift (saturated), high mul, rounding right shift."""
    acc = np.asarray(acc, np.int64)
    multiplier = np.asarray(multiplier, np.int64)
    shift = np.asarray(shift, np.int64)
    shifted = np.clip(acc * np.left_shift(np.int64(1), np.maximum(shift, 0)), INT32_MIN, INT32_MAX)
    return rdbpot(srdhm(shifted, multiplier), np.maximum(-shift, 0))


def to_int8(acc, multiplier, shift, zero_point, lo=-128, hi=127):
    return np.clip(requantize(acc, multiplier, shift) + zero_point, lo, hi).astype(np.int8)


def _padding(op, x_shape):
    """The op's (top, bottom, left, right), TensorFlow's 'same' worked out for this input:
    ceil(size / stride) outputs, the odd padding pixel after."""
    if op.padding != "same":
        return op.padding
    sides = []
    for size, k, s, d in zip(x_shape[1:3], op.weight.shape[:2], op.stride, op.dilation):
        total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
        sides += [total // 2, total - total // 2]
    return tuple(sides)


def _pad_to_zero_point(x, padding, zero_point):
    t, b, l, r = padding
    return np.pad(x.astype(np.int64), ((0, 0), (t, b), (l, r), (0, 0)), constant_values=zero_point)


def _tap_windows(xp, kh, kw, stride, dilation, out_hw):
    (sh, sw), (dilation_h, dilation_w), (ho, wo) = stride, dilation, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i * dilation_h : i * dilation_h + sh * (ho - 1) + 1 : sh, j * dilation_w : j * dilation_w + sw * (wo - 1) + 1 : sw, :]


def _out_hw(x, kh, kw, stride, padding, dilation):
    t, b, l, r = padding
    ho = (x.shape[1] + t + b - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (x.shape[2] + l + r - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


def conv2d_acc(x, zx, w, bias, stride, padding, dilation):
    """int32 accumulators of a standard convolution: b + sum_taps (x - z_x) . w.  x (N,H,W,Cin), w (KH,KW,Cin,Cout)."""
    kh, kw = w.shape[:2]
    out_hw = _out_hw(x, kh, kw, stride, padding, dilation)
    xp = _pad_to_zero_point(x, padding, zx) - zx
    acc = np.zeros((x.shape[0], *out_hw, w.shape[3]), np.int64) + bias
    for i, j, window in _tap_windows(xp, kh, kw, stride, dilation, out_hw):
        acc += np.einsum("nhwc,cd->nhwd", window, w[i, j].astype(np.int64))
    return acc


def depthwise_acc(x, zx, w, bias, stride, padding, dilation):
    """int32 accumulators of a depthwise convolution. x (N,H,W,C), w (KH,KW,C)."""
    kh, kw = w.shape[:2]
    out_hw = _out_hw(x, kh, kw, stride, padding, dilation)
    xp = _pad_to_zero_point(x, padding, zx) - zx
    acc = np.zeros((x.shape[0], *out_hw, w.shape[2]), np.int64) + bias
    for i, j, window in _tap_windows(xp, kh, kw, stride, dilation, out_hw):
        acc += window * w[i, j].astype(np.int64)
    return acc


def matmul_acc(x, zx, w, bias):
    """int32 accumulators of a pointwise convolution or linear layer: x (..., Cin), w (Cin, Cout)."""
    return (x.astype(np.int64) - zx) @ w.astype(np.int64) + bias


def conv2d(x, zx, w, bias, multiplier, shift, zy, lo, hi, stride, padding, dilation):
    return to_int8(conv2d_acc(x, zx, w, bias, stride, padding, dilation), multiplier, shift, zy, lo, hi)


def depthwise_conv2d(x, zx, w, bias, multiplier, shift, zy, lo, hi, stride, padding, dilation):
    return to_int8(depthwise_acc(x, zx, w, bias, stride, padding, dilation), multiplier, shift, zy, lo, hi)


def pointwise(x, zx, w, bias, multiplier, shift, zy, lo, hi):
    return to_int8(matmul_acc(x, zx, w, bias), multiplier, shift, zy, lo, hi)


def lookup(x, table):
    return np.asarray(table)[x.astype(np.int64) + 128]


def add(a, za, ma, sa, b, zb, mb, sb, left_shift, zy, my, sy, lo=-128, hi=127):
    ra = requantize((a.astype(np.int64) - za) * 2**left_shift, ma, sa)
    rb = requantize((b.astype(np.int64) - zb) * 2**left_shift, mb, sb)
    return to_int8(ra + rb, my, sy, zy, lo, hi)


def mean(x, zx, multiplier, shift, zy):
    return to_int8((x.astype(np.int64) - zx).sum(axis=(1, 2)), multiplier, shift, zy)


def channel_scale(x, zx, g, zg, multiplier, shift, zy):
    prod = (x.astype(np.int64) - zx) * (g.astype(np.int64) - zg)[:, None, None, :]
    return to_int8(prod, multiplier, shift, zy)


def run_graph(qmodel, xq):
    """Every int8 tensor of a `QuantizedModel` on input `xq`, computed with this module's arithmetic.

    Reads the model's ops as data (kind, attributes, arrays); calls none of their kernels.
    """
    env = {"input": xq}
    zp = {name: z for name, (_, z) in qmodel.tensors.items()}
    for op in qmodel.ops:
        xs = [env[name] for name in op.inputs]
        zx = zp[op.inputs[0]]
        zy = zp[op.output]
        if op.kind == "conv":
            args = (op.bias, op.multiplier, op.shift, zy, op.lo, op.hi)
            if op.variant in ("linear", "pointwise"):
                y = pointwise(xs[0], zx, op.weight, *args)
            else:
                padding = _padding(op, xs[0].shape)
                if op.variant == "depthwise":
                    y = depthwise_conv2d(xs[0], zx, op.weight, *args, op.stride, padding, op.dilation)
                else:
                    y = conv2d(xs[0], zx, op.weight, *args, op.stride, padding, op.dilation)
        elif op.kind == "lookup":
            y = lookup(xs[0], op.table)
        elif op.kind == "mean":
            m, s = op.multiplier(xs[0].shape[1] * xs[0].shape[2])
            y = mean(xs[0], zx, m, s, zy)
        elif op.kind == "channel_scale":
            y = channel_scale(xs[0], zx, xs[1], zp[op.inputs[1]], int(op.requant[0]), int(op.requant[1]), zy)
        elif op.kind == "add":
            (ma, sa), (mb, sb), (my, sy) = op.requant.tolist()
            y = add(xs[0], zx, ma, sa, xs[1], zp[op.inputs[1]], mb, sb, 20, zy, my, sy)
        else:
            raise ValueError(f"unknown op kind {op.kind!r}")
        env[op.output] = y.astype(np.int8)
    return env
