"""Central finite differences, shared by the layer and model tests (float64 only)."""
import numpy as np


def numeric_grad(f, array, index, h=1e-6):
    """d f() / d array[index] by central differences, perturbing `array` in place."""
    old = array[index]
    array[index] = old + h
    plus = f()
    array[index] = old - h
    minus = f()
    array[index] = old
    return (plus - minus) / (2 * h)


def sample_indices(shape, count, rng):
    flat = rng.choice(int(np.prod(shape)), size=min(count, int(np.prod(shape))), replace=False)
    return [np.unravel_index(i, shape) for i in flat]


def assert_close(analytic, numeric, what, rtol=1e-4, atol=1e-7):
    err = abs(analytic - numeric)
    assert err <= atol + rtol * max(abs(analytic), abs(numeric)), (
        f"{what}: analytic {analytic:.10g} vs finite difference {numeric:.10g} (error {err:.3g})"
    )


def check_model_gradients(net, x, weights, parameters, rng, label):
    """The whole model's backward pass against central differences (float64): d<weights, net(x)>
    with respect to the input at 4 random coordinates and to each `parameters` entry (name,
    coordinates) at that many random coordinates. Returns dx (a caller can check it is not zero)."""
    def loss():
        return float(np.sum(weights * net(x)))

    net(x)
    dx = net.backward(weights)
    grads = {name: p.grad.copy() for name, p in net.named_parameters()}
    for idx in sample_indices(x.shape, 4, rng):
        assert_close(dx[idx], numeric_grad(loss, x, idx, h=1e-7), f"{label} dx{idx}", rtol=2e-3, atol=1e-6)
    params = dict(net.named_parameters())
    for name, coords in parameters:
        for idx in sample_indices(params[name].shape, coords, rng):
            assert_close(grads[name][idx], numeric_grad(loss, params[name].data, idx, h=1e-7),
                         f"{label} d{name}{idx}", rtol=2e-3, atol=1e-6)
    return dx


# -- checks shared by every convolution op: op(x, w, **geometry) and op_backward(dy, x, w, **geometry)
def check_op_finite_differences(op, op_backward, x, w, geometry, rng, coords=3):
    """dx and dw of <r, op(x, w)> against central differences at a few random coordinates (float64)."""
    r = rng.standard_normal(op(x, w, **geometry).shape)

    def loss():
        return float(np.sum(r * op(x, w, **geometry)))

    dx, dw = op_backward(r, x, w, **geometry)
    for idx in sample_indices(x.shape, coords, rng):
        assert_close(dx[idx], numeric_grad(loss, x, idx), f"dx{idx}")
    for idx in sample_indices(w.shape, coords, rng):
        assert_close(dw[idx], numeric_grad(loss, w, idx), f"dw{idx}")


def check_op_adjoints(op, op_backward, x, w, geometry, rng):
    """A convolution is linear in x and in w, so <dy, y> = <dx, x> = <dw, w> up to rounding."""
    y = op(x, w, **geometry)
    dy = rng.standard_normal(y.shape)
    dx, dw = op_backward(dy, x, w, **geometry)
    forward = float(np.sum(dy * y))
    scale = float(np.sum(np.abs(dy * y))) + 1.0
    assert abs(forward - float(np.sum(dx * x))) <= 1e-12 * scale
    assert abs(forward - float(np.sum(dw * w))) <= 1e-12 * scale


def check_serial_and_parallel_agree(op, op_backward, x, w, geometry, rng):
    """y, dx, dw with every kernel forced serial, then forced parallel: the same numbers."""
    import pytest

    from npmobilenet import config

    dy = rng.standard_normal(op(x, w, **geometry).shape)
    results = {}
    for name, threshold in (("serial", 10**18), ("parallel", 0)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(config, "PARALLEL_MIN_MACS", threshold)
            results[name] = (op(x, w, **geometry),) + op_backward(dy, x, w, **geometry)
    for what, serial, parallel in zip(("y", "dx", "dw"), results["serial"], results["parallel"]):
        np.testing.assert_allclose(parallel, serial, rtol=1e-12, atol=1e-12, err_msg=what)
