"""Bad input to every op raises ValueError/TypeError naming the argument, never a Numba error."""
import numpy as np
import pytest

from npmobilenet import ops

f32 = np.float32


def _x(shape=(1, 5, 5, 3), dtype=f32):
    return np.ones(shape, dtype)


# Each op: (forward, backward, a good weight for x of shape (1, 5, 5, 3), forward keywords allowed)
OPS = {
    "conv2d": (ops.conv2d, ops.conv2d_backward, np.ones((3, 3, 3, 4), f32), True),
    "depthwise_conv2d": (ops.depthwise_conv2d, ops.depthwise_conv2d_backward, np.ones((3, 3, 3), f32), True),
    "pointwise_conv2d": (ops.pointwise_conv2d, ops.pointwise_conv2d_backward, np.ones((3, 4), f32), False),
}


def _raises(error, match, call, *args, **kwargs):
    with pytest.raises(error, match=match) as info:
        call(*args, **kwargs)
    # exactly the documented type: a Numba TypingError would not be a ValueError/TypeError subclass
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    return info


@pytest.mark.parametrize("name", OPS)
def test_input_type_dtype_rank_and_emptiness(name):
    forward, backward, w, _ = OPS[name]
    _raises(TypeError, r"x must be a numpy array", forward, [[[[1.0]]]], w)
    _raises(TypeError, r"w must be a numpy array", forward, _x(), w.tolist())
    _raises(TypeError, r"x must be float32 or float64, got dtype int64", forward, np.ones((1, 5, 5, 3), np.int64), w)
    _raises(TypeError, r"x must be float32 or float64, got dtype float16", forward, _x(dtype=np.float16), w)
    _raises(TypeError, r"w must be float32 or float64", forward, _x(), w.astype(np.complex64))
    _raises(TypeError, r"share one float dtype.*x: float64, w: float32", forward, _x(dtype=np.float64), w)
    _raises(ValueError, r"x must have rank 4 \(N, H, W, C", forward, np.ones((5, 5, 3), f32), w)
    _raises(ValueError, r"w must have rank", forward, _x(), w[..., None])
    _raises(ValueError, r"x must not be empty", forward, _x((0, 5, 5, 3)), w)


@pytest.mark.parametrize("name", OPS)
def test_channel_mismatch(name):
    forward, backward, w, _ = OPS[name]
    x = _x((1, 5, 5, 2))
    pattern = r"one kernel per input channel: w has 3 channels" if name == "depthwise_conv2d" else r"w must have Cin"
    _raises(ValueError, pattern, forward, x, w)
    y = forward(_x(), w)
    _raises(ValueError, pattern, backward, y, x, w)


@pytest.mark.parametrize("name", ["conv2d", "depthwise_conv2d"])
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(stride=0), ValueError, r"stride must be >= 1, got 0"),
        (dict(stride=(1, -2)), ValueError, r"stride must be >= 1"),
        (dict(stride=1.5), TypeError, r"stride must be an int or a pair"),
        (dict(stride=True), TypeError, r"stride must be an int"),
        (dict(stride=(1, 2, 3)), TypeError, r"stride must be an int or a pair"),
        (dict(dilation=0), ValueError, r"dilation must be >= 1, got 0"),
        (dict(dilation=(2, -1)), ValueError, r"dilation must be >= 1"),
        (dict(padding=-1), ValueError, r"padding must be >= 0 on every side"),
        (dict(padding=((0, 1), (-1, 0))), ValueError, r"padding must be >= 0 on every side"),
        (dict(padding="same"), TypeError, r"padding must be an int, a pair"),
        (dict(padding=((1, 1), 1)), TypeError, r"padding must be an int, a pair"),
        # 5x5 input, 3x3 kernel dilated by 3 spans 7: no output without padding
        (dict(dilation=3), ValueError, r"padded input 5x5 .* smaller than the dilated kernel 7x7: no output"),
    ],
)
def test_bad_geometry(name, kwargs, error, match):
    forward, backward, w, _ = OPS[name]
    _raises(error, match, forward, _x(), w, **kwargs)
    _raises(error, match, backward, np.ones((1, 3, 3, 4 if name == "conv2d" else 3), f32), _x(), w, **kwargs)


def test_kernel_larger_than_padded_input():
    _raises(ValueError, r"padded input 4x6 \(x is 2x4, padding \(1, 1, 1, 1\)\) is smaller than the dilated "
            r"kernel 5x5", ops.depthwise_conv2d, _x((1, 2, 4, 3)), np.ones((5, 5, 3), f32), padding=1)
    _raises(ValueError, r"smaller than the dilated kernel", ops.conv2d, _x((1, 2, 2, 3)), np.ones((3, 1, 3, 1), f32))


@pytest.mark.parametrize("name", OPS)
def test_bad_dy(name):
    forward, backward, w, _ = OPS[name]
    x = _x()
    y = forward(x, w)
    _raises(ValueError, r"dy must have the forward output's shape " + str(y.shape).replace("(", r"\(").replace(")", r"\)"),
            backward, y[:, :-1], x, w)
    _raises(ValueError, r"dy must have rank 4", backward, y[0], x, w)
    _raises(TypeError, r"dy must have dtype float32 like x, got float64", backward, y.astype(np.float64), x, w)
    _raises(TypeError, r"dy must be float32 or float64", backward, y.astype(np.int32), x, w)
    _raises(TypeError, r"dy must be a numpy array", backward, y.tolist(), x, w)
    # and the good call works
    dx, dw = backward(y, x, w)
    assert dx.shape == x.shape and dw.shape == w.shape


@pytest.mark.parametrize("name", ["depthwise_conv2d", "pointwise_conv2d"])
def test_torch_weight_layout_is_refused(name):
    # a torch weight passed unconverted ((C, 1, KH, KW) or (Cout, Cin, 1, 1)) has the wrong rank
    forward, _, _, _ = OPS[name]
    torch_like = {"depthwise_conv2d": np.ones((3, 1, 3, 3), f32), "pointwise_conv2d": np.ones((4, 3, 1, 1), f32)}[name]
    _raises(ValueError, r"w must have rank", forward, _x(), torch_like)
