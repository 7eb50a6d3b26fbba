"""Convolution geometry: normalising stride, dilation and padding, and validating inputs.

Every public op calls these before a kernel runs, so a kernel sees only clean C-contiguous
arrays and ints, and a user sees a `ValueError`/`TypeError` naming the argument, never a Numba
typing error. `serial_and_parallel` and `choose_kernel` build and pick the two compilations of a
kernel body.
"""
import numbers

import numpy as np


FLOAT_DTYPES = (np.float32, np.float64)
MIN_RESOLUTION = 32  # a MobileNet's five stride-2 stages take 32x32 to 1x1


def check_images(x, dtype):
    """An image batch `x` (N, H, W, 3) float, H, W >= MIN_RESOLUTION, as a C-contiguous array of
    `dtype`; otherwise the error every model (float, fused, int8) gives for it."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array of shape (N, H, W, 3), got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be a float array (float32), got dtype {x.dtype}; scale images to floats first")
    if x.ndim != 4:
        raise ValueError(f"x must have rank 4 (N, H, W, 3) in NHWC layout, got shape {x.shape}")
    if x.shape[3] != 3:
        raise ValueError(f"x must have 3 channels last (N, H, W, 3), got shape {x.shape}")
    if x.shape[0] < 1:
        raise ValueError(f"x must hold at least one image, got shape {x.shape}")
    if x.shape[1] < MIN_RESOLUTION or x.shape[2] < MIN_RESOLUTION:
        raise ValueError(f"x must be at least {MIN_RESOLUTION}x{MIN_RESOLUTION}, got {x.shape[1]}x{x.shape[2]}")
    return np.ascontiguousarray(x, dtype=dtype)


def as_pair(value, name):
    """`value` (an int or a pair of ints, each >= 1) as a tuple `(vertical, horizontal)`."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, numbers.Integral):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (vertical, horizontal), got {value!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair


def as_padding(padding):
    """`padding` as `(top, bottom, left, right)`.

    Accepts an int (all four sides), a pair `(ph, pw)` (symmetric per axis), or
    `((top, bottom), (left, right))` (asymmetric, as TensorFlow's SAME padding at stride 2 needs).
    """
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))

    if is_int(padding):
        sides = (int(padding),) * 4
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(is_int(p) for p in padding):
        sides = (int(padding[0]), int(padding[0]), int(padding[1]), int(padding[1]))
    elif (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(is_int(v) for v in p) for p in padding)
    ):
        sides = (int(padding[0][0]), int(padding[0][1]), int(padding[1][0]), int(padding[1][1]))
    else:
        raise TypeError(
            "padding must be an int, a pair (ph, pw) or ((top, bottom), (left, right)), "
            f"got {padding!r}"
        )
    if min(sides) < 0:
        raise ValueError(f"padding must be >= 0 on every side, got {padding!r}")
    return sides


def tf_same_padding(size, kernel, stride, dilation=1):
    """TensorFlow's 'SAME' padding along one axis: (before, after) such that the output has
    ceil(size / stride) positions; the odd pixel, if any, goes after (so at stride 2 on an even
    size the padding is asymmetric, (0, 1) for a 3-wide kernel). Depends on the input size."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def tf_same_sides(height, width, kernel_size, stride, dilation=(1, 1)):
    """(top, bottom, left, right) of TensorFlow's 'SAME' padding for a height x width input;
    kernel_size, stride, dilation: (vertical, horizontal) pairs."""
    return (tf_same_padding(height, kernel_size[0], stride[0], dilation[0])
            + tf_same_padding(width, kernel_size[1], stride[1], dilation[1]))


def output_size(size, kernel, stride, pad_before, pad_after, dilation):
    """Output length along one axis: floor((size + pads - dilation*(kernel-1) - 1) / stride) + 1."""
    span = dilation * (kernel - 1) + 1
    return (size + pad_before + pad_after - span) // stride + 1


def check_array(x, name, ndim, layout):
    """`x` as a C-contiguous float32/float64 array of rank `ndim`, or a clear error."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array {layout}, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have rank {ndim} {layout}, got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    return np.ascontiguousarray(x)


def check_same_dtype(**arrays):
    """All arrays share one dtype (the output's), or a TypeError naming them."""
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
        raise TypeError(f"arrays must share one float dtype, got {listing}")


def check_dy(dy, expected_shape, dtype):
    """`dy` has the forward output's shape and dtype."""
    dy = check_array(dy, "dy", 4, "(N, Ho, Wo, C)")
    if dy.shape != tuple(expected_shape):
        raise ValueError(f"dy must have the forward output's shape {tuple(expected_shape)}, got {dy.shape}")
    if dy.dtype != dtype:
        raise TypeError(f"dy must have dtype {dtype} like x, got {dy.dtype}")
    return dy


def conv_geometry(x_shape, kh, kw, stride, padding, dilation):
    """Validated geometry of a convolution of an `(N, H, W, C)` input by a `kh x kw` kernel.

    Returns `(ho, wo, (sh, sw), (pt, pb, pl, pr), (rh, rw))` (rh, rw: the dilation); raises ValueError when the padded
    input is smaller than the dilated kernel (there would be no output).
    """
    sh, sw = as_pair(stride, "stride")
    rh, rw = as_pair(dilation, "dilation")
    pt, pb, pl, pr = as_padding(padding)
    _, h, w, _ = x_shape
    ho = output_size(h, kh, sh, pt, pb, rh)
    wo = output_size(w, kw, sw, pl, pr, rw)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"padded input {h + pt + pb}x{w + pl + pr} (x is {h}x{w}, padding {(pt, pb, pl, pr)}) is "
            f"smaller than the dilated kernel {rh * (kh - 1) + 1}x{rw * (kw - 1) + 1}: no output"
        )
    return ho, wo, (sh, sw), (pt, pb, pl, pr), (rh, rw)


# -- serial and parallel builds of one kernel body ----------------------------------------------------
