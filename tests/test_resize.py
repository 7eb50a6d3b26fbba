"""Bilinear resize (ops.resize, layers.resize) against the NumPy reference, PyTorch's values
(tests/fixtures/resize_torch.npz, made by make_resize_fixture.py), finite differences and the
adjoint identity."""
import os

import numpy as np
import pytest

from gradcheck import assert_close, numeric_grad, sample_indices
from npmobilenet import config
from npmobilenet.graph import Builder, Conv, Graph
from npmobilenet.layers.resize import BilinearResize
from npmobilenet.ops import reference, resize

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "resize_torch.npz")
# up, down, mixed, odd, identity, one pixel in and out, large factors
SHAPES = [((2, 5, 7, 3), (11, 4)), ((1, 9, 6, 2), (3, 13)), ((1, 4, 4, 5), (4, 4)), ((2, 1, 1, 3), (5, 6)),
          ((1, 6, 5, 2), (1, 1)), ((1, 3, 3, 2), (25, 24)), ((2, 8, 8, 1), (17, 9))]


@pytest.mark.parametrize("shape, size", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference(shape, size, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    y = resize.bilinear_resize(x, size)
    assert y.dtype == dtype and y.shape == (shape[0], *size, shape[3])
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y, reference.bilinear_resize(x.astype(np.float64), size), rtol=tol, atol=tol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = resize.bilinear_resize_backward(dy, shape[1:3])
    assert dx.dtype == dtype and dx.shape == shape
    np.testing.assert_allclose(dx, reference.bilinear_resize_backward(dy.astype(np.float64), shape[1:3]),
                               rtol=tol * 10, atol=tol * 10)


def test_matches_torch():
    data = np.load(FIXTURE)
    cases = sorted({k.split("_")[1] for k in data.files if k.startswith("x_")}, key=int)
    assert len(cases) >= 8
    for i in cases:
        x, size = data[f"x_{i}"], tuple(int(s) for s in data[f"size_{i}"])
        y = resize.bilinear_resize(x, size)
        np.testing.assert_allclose(y, data[f"y_{i}"], rtol=1e-5, atol=2e-6, err_msg=f"case {i}")
        dx = resize.bilinear_resize_backward(data[f"r_{i}"], x.shape[1:3])
        np.testing.assert_allclose(dx, data[f"dx_{i}"], rtol=1e-5, atol=2e-5, err_msg=f"case {i}")
        # the reference agrees with PyTorch too (an oracle checked against the source it imitates;
        # its positions are float64, PyTorch's float32: 1.4e-5 apart at 33 -> 65)
        np.testing.assert_allclose(reference.bilinear_resize(x.astype(np.float64), size), data[f"y_{i}"],
                                   rtol=1e-5, atol=3e-5)


def test_half_pixel_rule_by_hand():
    # 2 -> 4 pixels: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (past the last: the last pixel)
    x = np.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    y = resize.bilinear_resize(np.repeat(x, 1, axis=2), (4, 1))
    np.testing.assert_allclose(y.ravel(), [1.0, 1.5, 2.5, 3.0])
    # 4 -> 2 pixels: sources 0.5 and 2.5, the means of the pairs
    x = np.array([1.0, 2.0, 5.0, 9.0]).reshape(1, 4, 1, 1)
    np.testing.assert_allclose(resize.bilinear_resize(x, (2, 1)).ravel(), [1.5, 7.0])


@pytest.mark.parametrize("shape, size", SHAPES[:4])
def test_finite_differences(shape, size):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    r = rng.standard_normal((shape[0], *size, shape[3]))
    dx = resize.bilinear_resize_backward(r, shape[1:3])
    for idx in sample_indices(shape, 5, rng):
        assert_close(dx[idx], numeric_grad(lambda: float(np.sum(r * resize.bilinear_resize(x, size))), x, idx),
                     f"dx{idx}")


@pytest.mark.parametrize("shape, size", SHAPES)
def test_adjoint(shape, size):
    # linear in x: <dy, resize(x)> = <resize_backward(dy), x>
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal((shape[0], *size, shape[3]))
    lhs = float(np.sum(dy * resize.bilinear_resize(x, size)))
    rhs = float(np.sum(resize.bilinear_resize_backward(dy, shape[1:3]) * x))
    assert abs(lhs - rhs) <= 1e-12 * (1 + float(np.sum(np.abs(dy)) * np.abs(x).max()))


def test_serial_and_parallel_agree(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 9, 7, 4)).astype(np.float32)
    dy = rng.standard_normal((3, 20, 15, 4)).astype(np.float32)
    results = []
    for threshold in (10**12, 0):
        monkeypatch.setattr(config, "PARALLEL_MIN_MACS", threshold)
        results.append((resize.bilinear_resize(x, (20, 15)), resize.bilinear_resize_backward(dy, (9, 7))))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_bad_input():
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="x must have rank 4"):
        resize.bilinear_resize(np.zeros((4, 4, 2), np.float32), (2, 2))
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        resize.bilinear_resize(x.astype(np.int32), (2, 2))
    with pytest.raises(ValueError, match="size must be >= 1"):
        resize.bilinear_resize(x, (0, 3))
    with pytest.raises(TypeError, match="size must be an int or a pair"):
        resize.bilinear_resize(x, (2.5, 3))
    with pytest.raises(TypeError, match="input_size must be an int or a pair"):
        resize.bilinear_resize_backward(x, "4x4")


def test_layer_forward_backward_and_lowering():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    like = np.zeros((2, 9, 11, 7), np.float32)
    layer = BilinearResize()
    y = layer(x, like.shape[1:3])
    np.testing.assert_allclose(y, reference.bilinear_resize(x.astype(np.float64), (9, 11)), rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(layer.backward(dy), resize.bilinear_resize_backward(dy, (5, 6)))
    with pytest.raises(ValueError, match="dy must have the resized map's shape"):
        layer.backward(dy[:, :3])
    with pytest.raises(RuntimeError, match="before forward"):
        BilinearResize().backward(dy)
    # lowered: the graph's "resize" op, run by the graph's NumPy evaluator after a stride-2
    # subsampling (a 1x1 depthwise conv of ones), back to the input's size
    builder = Builder()
    small = builder.add(Conv("down", ("input",), "depthwise", np.ones((1, 1, 3), np.float32), stride=(2, 2)))
    out = layer.lower(builder, small, "up", "input")
    assert builder.ops[-1].kind == "resize" and builder.ops[-1].inputs == (small, "input")
    graph = Graph(builder.ops, ("input",), (out,))
    assert graph.shapes(x.shape)[out] == x.shape
    expected = layer(np.ascontiguousarray(x[:, ::2, ::2]), x.shape[1:3])
    np.testing.assert_allclose(graph(x), expected, rtol=1e-5, atol=1e-5)
