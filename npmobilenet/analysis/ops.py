"""Cost of each op by formula: output shape, parameters and multiply-accumulates (MACs).

Everything here works from an input shape and an op's hyper-parameters alone; no array is
allocated. It is a second derivation, independent of the kernels in `npmobilenet.ops` (it shares
no code with `ops/geometry.py`), so the tests can check one against the other.

Conventions (as in the MobileNet papers):

- Input shapes are NHWC `(N, H, W, C)`; a linear layer takes `(N, ..., C_in)`.
- MACs count every (output element, kernel tap) pair, taps that land on zero padding included,
  summed over the whole batch `N` (pass `N = 1` for the per-image count the papers quote).
- Bias additions, batch norm, activations, pooling and residual adds are not MACs.
- Parameters are trainable values: weights, biases, batch-norm scale and shift (running
  statistics are buffers, not parameters).

In the V1 paper's symbols (Section 3.1): a `D_K x D_K` kernel, `M` input channels, `N` output
channels, a `D_F x D_F` output feature map. (The paper's `N` is a channel count; ours is the batch.)
"""
import numbers
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class OpCost:
    """What one op costs: the shape it produces, its parameter count, its MACs over the batch."""

    output_shape: tuple
    params: int
    macs: int


# -- argument checks --------------------------------------------------------------------------
def _is_int(value):
    # numpy ints count; bools (Python's are Integral, numpy's are not) do not
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(value, name):
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def _shape(input_shape, rank, layout):
    """`input_shape` as a tuple of positive ints of the given rank (None: any rank >= 2)."""
    if not isinstance(input_shape, (tuple, list)) or not all(_is_int(d) for d in input_shape):
        raise TypeError(f"input_shape must be a tuple of ints {layout}, got {input_shape!r}")
    if (rank is not None and len(input_shape) != rank) or (rank is None and len(input_shape) < 2):
        raise ValueError(f"input_shape must be {layout}, got {tuple(input_shape)}")
    if min(input_shape) < 1:
        raise ValueError(f"input_shape must have every dimension >= 1, got {tuple(input_shape)}")
    return tuple(int(d) for d in input_shape)


def _pair(value, name):
    """An int or a pair of ints, each >= 1, as `(vertical, horizontal)`."""
    if _is_int(value):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value)):
        raise TypeError(f"{name} must be an int or a pair of ints (vertical, horizontal), got {value!r}")
    if min(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value[0]), int(value[1])


def _padding(padding):
    """An int, a pair `(ph, pw)` or `((top, bottom), (left, right))`, as `((top, bottom), (left, right))`."""
    if _is_int(padding):
        sides = ((padding, padding), (padding, padding))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(_is_int(p) for p in padding):
        sides = ((padding[0], padding[0]), (padding[1], padding[1]))
    elif (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p) for p in padding)
    ):
        sides = tuple(tuple(p) for p in padding)
    else:
        raise TypeError(
            f"padding must be an int, a pair (ph, pw) or ((top, bottom), (left, right)), got {padding!r}"
        )
    if min(min(p) for p in sides) < 0:
        raise ValueError(f"padding must be >= 0 on every side, got {padding!r}")
    return tuple((int(a), int(b)) for a, b in sides)


def _bias(bias):
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be True or False, got {bias!r}")
    return bias


# -- geometry ---------------------------------------------------------------------------------
def sliding_window_count(size, kernel, stride=1, padding=(0, 0), dilation=1):
    """How many positions a dilated kernel takes along one axis of length `size`.

    A kernel of `kernel` taps spaced `dilation` apart covers `dilation*(kernel-1) + 1` inputs.
    Its first tap sits at offset `i*stride` of the padded axis (length `size + before + after`),
    and the window fits while `i*stride + dilation*(kernel-1) <= size + before + after - 1`,
    so there are `floor((size + before + after - dilation*(kernel-1) - 1) / stride) + 1`
    positions (0 or fewer: the kernel never fits).
    """
    before, after = padding
    padded = size + before + after
    last_start = padded - (dilation * (kernel - 1) + 1)  # the largest offset a window may start at
    if last_start < 0:
        return 0
    return last_start // stride + 1


def _conv_output_hw(h, w, kernel_size, stride, padding, dilation):
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    (pt, pb), (pl, pr) = padding
    ho = sliding_window_count(h, kh, sh, (pt, pb), dh)
    wo = sliding_window_count(w, kw, sw, (pl, pr), dw)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"a {kh}x{kw} kernel with dilation {(dh, dw)} spans {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1} "
            f"inputs, more than the padded {h + pt + pb}x{w + pl + pr} input (input {h}x{w}, "
            f"padding {padding}): no output"
        )
    return ho, wo


# -- ops --------------------------------------------------------------------------------------
def conv2d_cost(input_shape, kernel_size, out_channels, stride=1, padding=0, dilation=1, bias=False):
    """Standard convolution: `(N, H, W, M) -> (N, Ho, Wo, out_channels)`, weight `(KH, KW, M, Cout)`.

    Each output element sums `KH*KW*M` products, so MACs are `N*Ho*Wo * Cout * KH*KW*M`,
    the V1 paper's `D_K * D_K * M * N * D_F * D_F` (Eq. 2) per image.
    """
    n, h, w, in_channels = _shape(input_shape, 4, "(N, H, W, C)")
    kh, kw = _pair(kernel_size, "kernel_size")
    out_channels = _positive_int(out_channels, "out_channels")
    ho, wo = _conv_output_hw(
        h, w, (kh, kw), _pair(stride, "stride"), _padding(padding), _pair(dilation, "dilation")
    )
    params = kh * kw * in_channels * out_channels + (out_channels if _bias(bias) else 0)
    macs = n * ho * wo * out_channels * kh * kw * in_channels
    return OpCost((n, ho, wo, out_channels), params, macs)


def depthwise_conv2d_cost(input_shape, kernel_size, stride=1, padding=0, dilation=1, bias=False):
    """Depthwise convolution, one filter per channel: `(N, H, W, M) -> (N, Ho, Wo, M)`, weight `(KH, KW, M)`.

    Each output element sums `KH*KW` products from its own channel: MACs are
    `N*Ho*Wo * M * KH*KW`, the V1 paper's `D_K * D_K * M * D_F * D_F` (Eq. 4) per image.
    """
    n, h, w, channels = _shape(input_shape, 4, "(N, H, W, C)")
    kh, kw = _pair(kernel_size, "kernel_size")
    ho, wo = _conv_output_hw(
        h, w, (kh, kw), _pair(stride, "stride"), _padding(padding), _pair(dilation, "dilation")
    )
    params = kh * kw * channels + (channels if _bias(bias) else 0)
    macs = n * ho * wo * channels * kh * kw
    return OpCost((n, ho, wo, channels), params, macs)


def pointwise_conv2d_cost(input_shape, out_channels, bias=False):
    """1x1 convolution: `(N, H, W, M) -> (N, H, W, out_channels)`, weight `(M, Cout)`.

    MACs are `N*H*W * M * Cout`, the V1 paper's `M * N * D_F * D_F` (Section 3.1).
    """
    n, h, w, in_channels = _shape(input_shape, 4, "(N, H, W, C)")
    out_channels = _positive_int(out_channels, "out_channels")
    params = in_channels * out_channels + (out_channels if _bias(bias) else 0)
    macs = n * h * w * in_channels * out_channels
    return OpCost((n, h, w, out_channels), params, macs)


def linear_cost(input_shape, out_features, bias=True):
    """Fully connected layer: `(N, ..., C_in) -> (N, ..., out_features)`, weight `(C_in, out_features)`.

    Every leading position (the batch, and any axes before the features) costs `C_in * out_features` MACs.
    """
    shape = _shape(input_shape, None, "(N, ..., C_in) with rank >= 2")
    out_features = _positive_int(out_features, "out_features")
    in_features = shape[-1]
    positions = 1
    for d in shape[:-1]:
        positions *= d
    params = in_features * out_features + (out_features if _bias(bias) else 0)
    return OpCost(shape[:-1] + (out_features,), params, positions * in_features * out_features)


def batch_norm_cost(input_shape):
    """Batch norm over the last (channel) axis: shape unchanged, `2*C` parameters (scale, shift), no MACs.

    Inference folds it into the preceding convolution; the papers count none of its arithmetic.
    """
    shape = _shape(input_shape, None, "(N, ..., C) with rank >= 2")
    return OpCost(shape, 2 * shape[-1], 0)


def global_avg_pool_cost(input_shape):
    """Global average pooling `(N, H, W, C) -> (N, C)`: no parameters, and additions are not MACs."""
    n, _, _, channels = _shape(input_shape, 4, "(N, H, W, C)")
    return OpCost((n, channels), 0, 0)


def separable_conv2d_cost(input_shape, kernel_size, out_channels, stride=1, padding=0, dilation=1):
    """Depthwise separable convolution (V1 paper, Fig. 2; cost Eq. 5): a depthwise conv, then a 1x1 conv.

    Returns the total; the two parts are `depthwise_conv2d_cost` and `pointwise_conv2d_cost`.
    """
    dw = depthwise_conv2d_cost(input_shape, kernel_size, stride, padding, dilation)
    pw = pointwise_conv2d_cost(dw.output_shape, out_channels)
    return OpCost(pw.output_shape, dw.params + pw.params, dw.macs + pw.macs)


def separable_ratio(out_channels, kernel_size):
    """Separable over standard convolution MACs: `1/N + 1/(KH*KW)` exactly (V1 paper, section 3.1, after Eq. 5).

        (D_K^2 * M * D_F^2 + M * N * D_F^2) / (D_K^2 * M * N * D_F^2) = 1/N + 1/D_K^2

    The input channels `M` and the output size `D_F` cancel, so only the output channels `N`
    and the kernel area matter. With 3x3 kernels the ratio is just above 1/9: 8 to 9 times fewer MACs.
    """
    out_channels = _positive_int(out_channels, "out_channels")
    kh, kw = _pair(kernel_size, "kernel_size")
    return Fraction(1, out_channels) + Fraction(1, kh * kw)
