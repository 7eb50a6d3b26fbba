"""The cost formulas against brute-force counting, the kernels' shapes and an instrumented reference."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npmobilenet import ops
from npmobilenet.analysis import (
    OpCost,
    batch_norm_cost,
    conv2d_cost,
    depthwise_conv2d_cost,
    global_avg_pool_cost,
    linear_cost,
    pointwise_conv2d_cost,
    separable_conv2d_cost,
    separable_ratio,
)
from npmobilenet.ops import reference


# -- the famous example (V1 paper, Section 3.1) -------------------------------------------------
def test_3x3_conv_224x224x3_to_64_channels():
    # 3x3 kernel, 3 input channels, 64 output channels, 224x224 output ('same' padding, stride 1)
    cost = conv2d_cost((1, 224, 224, 3), 3, 64, stride=1, padding=1)
    assert cost == OpCost((1, 224, 224, 64), 3 * 3 * 3 * 64, 3 * 3 * 3 * 64 * 224 * 224)
    assert cost.macs == 86_704_128
    # The figure popular write-ups print, 9 * 2**20, is not divisible by 7, while any count over
    # 224 x 224 = 2**10 * 7**2 output positions is.
    assert 9_437_184 % 7 != 0 and cost.macs % (224 * 224) == 0

    depthwise = depthwise_conv2d_cost((1, 224, 224, 3), 3, padding=1)
    pointwise = pointwise_conv2d_cost(depthwise.output_shape, 64)
    assert depthwise.macs == 1_354_752 and pointwise.macs == 9_633_792
    separable = separable_conv2d_cost((1, 224, 224, 3), 3, 64, padding=1)
    assert separable.macs == 10_988_544 and separable.params == 27 + 192
    ratio = Fraction(separable.macs, cost.macs)
    assert ratio == separable_ratio(64, 3) == Fraction(1, 64) + Fraction(1, 9) == Fraction(73, 576)
    assert ratio != Fraction(1, 3) + Fraction(1, 9)  # the misquoted 1/D_K + 1/D_K^2


def test_batch_multiplies_macs_not_params():
    one = conv2d_cost((1, 9, 7, 4), (3, 2), 5, stride=(2, 1), padding=((1, 0), (0, 1)))
    eight = conv2d_cost((8, 9, 7, 4), (3, 2), 5, stride=(2, 1), padding=((1, 0), (0, 1)))
    assert eight.macs == 8 * one.macs and eight.params == one.params
    assert eight.output_shape == (8,) + one.output_shape[1:]


def test_bias_adds_params_not_macs():
    without = conv2d_cost((2, 6, 6, 3), 3, 4)
    with_bias = conv2d_cost((2, 6, 6, 3), 3, 4, bias=True)
    assert with_bias.params == without.params + 4 and with_bias.macs == without.macs
    assert depthwise_conv2d_cost((1, 5, 5, 6), 3, bias=True).params == 9 * 6 + 6
    assert pointwise_conv2d_cost((1, 5, 5, 6), 7, bias=True).params == 6 * 7 + 7
    assert linear_cost((3, 10), 4) == OpCost((3, 4), 44, 120)
    assert linear_cost((3, 10), 4, bias=False).params == 40
    assert linear_cost((2, 1, 1, 10), 4).output_shape == (2, 1, 1, 4)


def test_uncounted_ops():
    assert batch_norm_cost((2, 7, 7, 32)) == OpCost((2, 7, 7, 32), 64, 0)
    assert global_avg_pool_cost((2, 7, 7, 32)) == OpCost((2, 32), 0, 0)


# -- brute force: enumerate every (output element, kernel tap) pair ----------------------------
def brute_force_conv(input_shape, kernel_size, channel_taps, out_channels, stride, padding, dilation):
    """Output shape and tap count by walking the padded input, sharing nothing with the formula."""
    n, h, w, _ = input_shape
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    (pt, pb), (pl, pr) = padding
    rows = [r for r in range(0, h + pt + pb, sh) if r + dh * (kh - 1) < h + pt + pb]
    cols = [c for c in range(0, w + pl + pr, sw) if c + dw * (kw - 1) < w + pl + pr]
    taps = 0
    for _ in rows:
        for _ in cols:
            for i in range(kh):
                for j in range(kw):
                    taps += channel_taps  # taps on padding count (the papers' convention)
    return (n, len(rows), len(cols), out_channels), n * out_channels * taps


pairs = st.tuples(st.integers(1, 3), st.integers(1, 3))
paddings = st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2)))


@given(
    n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), cin=st.integers(1, 4), cout=st.integers(1, 4),
    kernel=pairs, stride=pairs, dilation=pairs, padding=paddings,
)
def test_conv2d_cost_matches_brute_force(n, h, w, cin, cout, kernel, stride, dilation, padding):
    (pt, pb), (pl, pr) = padding
    if h + pt + pb < dilation[0] * (kernel[0] - 1) + 1 or w + pl + pr < dilation[1] * (kernel[1] - 1) + 1:
        with pytest.raises(ValueError, match="no output"):
            conv2d_cost((n, h, w, cin), kernel, cout, stride, padding, dilation)
        return
    cost = conv2d_cost((n, h, w, cin), kernel, cout, stride, padding, dilation)
    shape, macs = brute_force_conv((n, h, w, cin), kernel, cin, cout, stride, padding, dilation)
    assert cost.output_shape == shape and cost.macs == macs
    assert cost.params == kernel[0] * kernel[1] * cin * cout

    dw = depthwise_conv2d_cost((n, h, w, cin), kernel, stride, padding, dilation)
    shape, macs = brute_force_conv((n, h, w, cin), kernel, 1, cin, stride, padding, dilation)
    assert dw.output_shape == shape and dw.macs == macs


def test_argument_forms_agree():
    base = conv2d_cost((1, 8, 8, 2), 3, 4, stride=2, padding=1, dilation=1)
    assert conv2d_cost((1, 8, 8, 2), (3, 3), 4, stride=(2, 2), padding=(1, 1), dilation=(1, 1)) == base
    assert conv2d_cost((1, 8, 8, 2), [3, 3], 4, stride=[2, 2], padding=((1, 1), (1, 1))) == base
    assert conv2d_cost((np.int64(1), 8, 8, 2), np.int64(3), np.int32(4), stride=2, padding=1) == base
    # TensorFlow's SAME at stride 2 on an even input pads (0, 1) instead of (1, 1): same output grid
    assert conv2d_cost((1, 8, 8, 2), 3, 4, stride=2, padding=((0, 1), (0, 1))).output_shape == (1, 4, 4, 4)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: conv2d_cost((1, 8, 8), 3, 4), ValueError, "input_shape"),
        (lambda: conv2d_cost((1, 8, 8, 0), 3, 4), ValueError, "input_shape"),
        (lambda: conv2d_cost([1, 8.0, 8, 3], 3, 4), TypeError, "input_shape"),
        (lambda: conv2d_cost("1,8,8,3", 3, 4), TypeError, "input_shape"),
        (lambda: conv2d_cost((1, 8, 8, 3), 0, 4), ValueError, "kernel_size"),
        (lambda: conv2d_cost((1, 8, 8, 3), (3, 3, 3), 4), TypeError, "kernel_size"),
        (lambda: conv2d_cost((1, 8, 8, 3), 3, 0), ValueError, "out_channels"),
        (lambda: conv2d_cost((1, 8, 8, 3), 3, 4.0), TypeError, "out_channels"),
        (lambda: conv2d_cost((1, 8, 8, 3), 3, 4, stride=0), ValueError, "stride"),
        (lambda: conv2d_cost((1, 8, 8, 3), 3, 4, stride=True), TypeError, "stride"),
        (lambda: conv2d_cost((1, 8, 8, 3), 3, 4, dilation=(1, 0)), ValueError, "dilation"),
        (lambda: conv2d_cost((1, 8, 8, 3), 3, 4, padding=-1), ValueError, "padding"),
        (lambda: conv2d_cost((1, 8, 8, 3), 3, 4, padding="same"), TypeError, "padding"),
        (lambda: conv2d_cost((1, 8, 8, 3), 3, 4, padding=((1, 1), 1)), TypeError, "padding"),
        (lambda: conv2d_cost((1, 8, 8, 3), 3, 4, bias=1), TypeError, "bias"),
        (lambda: conv2d_cost((1, 2, 2, 3), 3, 4), ValueError, "no output"),
        (lambda: depthwise_conv2d_cost((1, 4, 4, 3), 3, dilation=2), ValueError, "no output"),
        (lambda: pointwise_conv2d_cost((1, 4, 4, 3), -2), ValueError, "out_channels"),
        (lambda: linear_cost((10,), 4), ValueError, "input_shape"),
        (lambda: linear_cost((2, 10), None), TypeError, "out_features"),
        (lambda: separable_ratio(0, 3), ValueError, "out_channels"),
        (lambda: separable_ratio(4, (3, "3")), TypeError, "kernel_size"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call()


@given(cout=st.integers(1, 2048), kh=st.integers(1, 7), kw=st.integers(1, 7))
def test_separable_ratio_formula(cout, kh, kw):
    ratio = separable_ratio(cout, (kh, kw))
    assert isinstance(ratio, Fraction) and ratio == Fraction(kh * kw + cout, cout * kh * kw)


@given(
    n=st.integers(1, 3), size=st.integers(3, 40), cin=st.integers(1, 64), cout=st.integers(1, 256),
    kernel=st.sampled_from([(1, 1), (3, 3), (5, 5), (3, 1), (7, 7)]), stride=st.integers(1, 2),
)
def test_separable_over_standard_is_eq5(n, size, cin, cout, kernel, stride):
    padding = (kernel[0] // 2, kernel[1] // 2)
    standard = conv2d_cost((n, size, size, cin), kernel, cout, stride, padding)
    separable = separable_conv2d_cost((n, size, size, cin), kernel, cout, stride, padding)
    assert separable.output_shape == standard.output_shape
    assert Fraction(separable.macs, standard.macs) == separable_ratio(cout, kernel)
    # and the parameters shrink by the same factor (Eq. 5 holds for weights, D_F aside)
    assert Fraction(separable.params, standard.params) == separable_ratio(cout, kernel)


# -- against the kernels (shapes, weight sizes) and the instrumented reference (MACs) ---------------
conv_cases = dict(
    n=st.integers(1, 2), h=st.integers(1, 7), w=st.integers(1, 7), cin=st.integers(1, 3), cout=st.integers(1, 3),
    kernel=pairs, stride=pairs, dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), padding=paddings,
)


def _fits(h, w, kernel, padding, dilation):
    (pt, pb), (pl, pr) = padding
    return h + pt + pb >= dilation[0] * (kernel[0] - 1) + 1 and w + pl + pr >= dilation[1] * (kernel[1] - 1) + 1


@given(**conv_cases)
def test_conv2d_cost_matches_kernel_and_counted_reference(n, h, w, cin, cout, kernel, stride, dilation, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    weight = rng.standard_normal(kernel + (cin, cout)).astype(np.float32)
    if not _fits(h, w, kernel, padding, dilation):  # the formula and the kernel both refuse
        with pytest.raises(ValueError):
            conv2d_cost(x.shape, kernel, cout, stride, padding, dilation)
        with pytest.raises(ValueError):
            ops.conv2d(x, weight, stride, padding, dilation)
        return
    cost = conv2d_cost(x.shape, kernel, cout, stride, padding, dilation)
    assert cost.output_shape == ops.conv2d(x, weight, stride, padding, dilation).shape
    assert cost.params == weight.size
    counter = [0]
    reference.conv2d(x, weight, stride, padding, dilation, counter=counter)
    assert cost.macs == counter[0]


@given(**conv_cases)
def test_depthwise_cost_matches_kernel_and_counted_reference(n, h, w, cin, cout, kernel, stride, dilation, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    weight = rng.standard_normal(kernel + (cin,)).astype(np.float32)
    if not _fits(h, w, kernel, padding, dilation):  # the formula and the kernel both refuse
        with pytest.raises(ValueError):
            depthwise_conv2d_cost(x.shape, kernel, stride, padding, dilation)
        with pytest.raises(ValueError):
            ops.depthwise_conv2d(x, weight, stride, padding, dilation)
        return
    cost = depthwise_conv2d_cost(x.shape, kernel, stride, padding, dilation)
    assert cost.output_shape == ops.depthwise_conv2d(x, weight, stride, padding, dilation).shape
    assert cost.params == weight.size
    counter = [0]
    reference.depthwise_conv2d(x, weight, stride, padding, dilation, counter=counter)
    assert cost.macs == counter[0]


@given(n=st.integers(1, 2), h=st.integers(1, 6), w=st.integers(1, 6), cin=st.integers(1, 5), cout=st.integers(1, 5))
def test_pointwise_cost_matches_kernel_and_counted_reference(n, h, w, cin, cout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    weight = rng.standard_normal((cin, cout)).astype(np.float32)
    cost = pointwise_conv2d_cost(x.shape, cout)
    assert cost.output_shape == ops.pointwise_conv2d(x, weight).shape
    assert cost.params == weight.size
    counter = [0]
    reference.pointwise_conv2d(x, weight, counter=counter)
    assert cost.macs == counter[0]


@given(
    n=st.integers(1, 2), size=st.integers(3, 8), cin=st.integers(1, 4), cout=st.integers(1, 6),
    kernel=st.sampled_from([(1, 1), (3, 3), (5, 5), (3, 1)]), stride=st.integers(1, 2),
)
def test_counted_separable_over_standard_is_eq5(n, size, cin, cout, kernel, stride):
    # the ratio measured by running the reference, not by the formulas: (1/N + 1/D_K^2), exactly
    padding = (kernel[0] // 2, kernel[1] // 2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, size, size, cin)).astype(np.float32)
    standard, separable = [0], [0]
    reference.conv2d(x, rng.standard_normal(kernel + (cin, cout)).astype(np.float32), stride, padding, counter=standard)
    y = reference.depthwise_conv2d(x, rng.standard_normal(kernel + (cin,)).astype(np.float32), stride, padding, counter=separable)
    reference.pointwise_conv2d(y, rng.standard_normal((cin, cout)).astype(np.float32), counter=separable)
    assert Fraction(separable[0], standard[0]) == separable_ratio(cout, kernel) == Fraction(1, cout) + Fraction(1, kernel[0] * kernel[1])
