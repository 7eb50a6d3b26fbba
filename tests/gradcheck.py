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
