"""Batch norm's fused passes (ops/batch_norm.py) against the slow reference, forward and backward,
float32 and float64; identical bits for every thread count; eval mode's adjoint identity."""
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npmobilenet import config
from npmobilenet.ops import batch_norm as bn
from npmobilenet.ops import reference


def _case(rng, shape, dtype):
    x = (rng.standard_normal(shape) * 3 + rng.standard_normal(shape[-1]) * 5).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, shape[-1]), rng.standard_normal(shape[-1])
    return x, gamma, beta, rng.standard_normal(shape).astype(dtype)


@given(st.integers(1, 3), st.integers(1, 7), st.integers(1, 6), st.integers(1, 20), st.sampled_from([np.float32, np.float64]),
       st.booleans(), st.integers(0, 2**16))
def test_batch_norm_matches_reference(n, h, w, c, dtype, training, seed):
    rng = np.random.default_rng(seed)
    x, gamma, beta, dy = _case(rng, (n, h, w, c), dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    mean, var = bn.batch_statistics(x)
    want_mean, want_var = reference.batch_statistics(x)
    np.testing.assert_allclose(mean, want_mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(var, want_var, rtol=tol, atol=tol)
    if not training:
        mean, var = rng.standard_normal(c), rng.uniform(0.5, 2, c)      # running statistics
    eps = 1e-3
    y = bn.batch_norm_forward(x, mean, var, gamma, beta, eps)
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_allclose(y, reference.batch_norm(x, mean, var, gamma, beta, eps), rtol=tol, atol=tol)
    got = bn.batch_norm_backward(dy, x, mean, var, gamma, eps, training)
    want = reference.batch_norm_backward(dy, x, mean, var, gamma, eps, training)
    assert got[0].dtype == x.dtype
    for g, r, name in zip(got, want, ("dx", "dgamma", "dbeta")):
        scale = max(1.0, float(np.abs(r).max()))
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * scale, err_msg=name)


def test_eval_mode_is_linear_and_its_backward_is_the_adjoint():
    rng = np.random.default_rng(1)
    x, gamma, beta, dy = _case(rng, (2, 5, 4, 6), np.float64)
    mean, var = rng.standard_normal(6), rng.uniform(0.5, 2, 6)
    y = bn.batch_norm_forward(x, mean, var, gamma, beta, 1e-5) - bn.batch_norm_forward(0 * x, mean, var, gamma, beta, 1e-5)
    dx, _, _ = bn.batch_norm_backward(dy, x, mean, var, gamma, 1e-5, False)
    assert np.isclose(np.vdot(dy, y), np.vdot(dx, x), rtol=1e-12)


def test_results_are_identical_for_every_thread_count(monkeypatch):
    monkeypatch.setattr(config, "PARALLEL_MIN_MACS", 0)         # the parallel builds, even here
    rng = np.random.default_rng(2)
    x, gamma, beta, dy = _case(rng, (4, 9, 7, 24), np.float32)
    results = []
    for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
        config.set_num_threads(threads)
        mean, var = bn.batch_statistics(x)
        y = bn.batch_norm_forward(x, mean, var, gamma, beta, 1e-5)
        results.append((mean, var, y) + bn.batch_norm_backward(dy, x, mean, var, gamma, 1e-5, True))
    config.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    monkeypatch.setattr(config, "PARALLEL_MIN_MACS", 1 << 62)   # and the serial ones
    serial = bn.batch_statistics(x)
    for got in results[1:] + [serial]:
        for a, b in zip(results[0], got):
            assert np.array_equal(a, b)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="x must be a float32/float64 array of shape"):
        bn.batch_statistics(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="dy must have x's shape"):
        bn.batch_norm_backward(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 4)), np.zeros(4), np.ones(4), np.ones(4), 1e-5, True)


@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 20), st.sampled_from([np.float32, np.float64]),
       st.booleans(), st.sampled_from(["relu", "relu6", "hardswish", "hardsigmoid"]), st.integers(0, 2**16))
def test_batch_norm_with_its_activation_is_the_two_layers(n, h, w, c, dtype, training, activation, seed):
    # the fused passes against the reference batch norm followed by the activation layer's NumPy
    # formula and derivative (layers/activation.py), the derivative at the reference's BN output
    from npmobilenet.layers.activation import ACTIVATIONS
    rng = np.random.default_rng(seed)
    x, gamma, beta, dy = _case(rng, (n, h, w, c), dtype)
    beta = beta * 4                   # outputs on both sides of every kink (0, 6, +-3)
    mean, var = reference.batch_statistics(x) if training else (rng.standard_normal(c), rng.uniform(0.5, 2, c))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    z = reference.batch_norm(x, mean, var, gamma, beta, 1e-3)
    layer = ACTIVATIONS[activation]
    y = bn.batch_norm_forward(x, mean, var, gamma, beta, 1e-3, activation)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(y, layer.function(z), rtol=tol, atol=tol)
    # away from the kinks (where float32 rounding may put z on either side), the derivative is exact
    kink = np.zeros(z.shape, bool)
    for point in (-3, 0, 3, 6):
        kink |= np.abs(z - point) < 1e-3
    want = reference.batch_norm_backward(np.where(kink, 0, dy * layer.derivative(z)), x, mean, var, gamma, 1e-3, training)
    dy_kinkless = np.where(kink, 0, dy)
    got = bn.batch_norm_backward(dy_kinkless, x, mean, var, gamma, 1e-3, training, activation, beta)
    for g, r, name in zip(got, want, ("dx", "dgamma", "dbeta")):
        scale = max(1.0, float(np.abs(r).max()))
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * scale, err_msg=name)


def test_activation_keeps_nan_and_is_checked():
    x = np.array([np.nan, 1, -1, 7], np.float32).reshape(1, 1, 4, 1)
    for activation in ("relu", "relu6", "hardswish", "hardsigmoid"):
        y = bn.batch_norm_forward(x, np.zeros(1), np.ones(1), np.ones(1), np.zeros(1), 0.0, activation)
        assert np.isnan(y[0, 0, 0, 0]), activation
    with pytest.raises(ValueError, match="activation must be one of"):
        bn.batch_norm_forward(x, np.zeros(1), np.ones(1), np.ones(1), np.zeros(1), 0.0, "gelu")
    with pytest.raises(ValueError, match="needs beta"):
        bn.batch_norm_backward(x, x, np.zeros(1), np.ones(1), np.ones(1), 0.0, True, "relu")
