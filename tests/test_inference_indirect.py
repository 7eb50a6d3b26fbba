"""Calls by address (ops/indirect.py), views by offset (inference/views.py) and the atomics
the op table's workers share tiles with (inference/atomics.py)."""
import numpy as np
import pytest
from numba import types
from numba.core.errors import TypingError

from npmobilenet.config import njit_serial
from npmobilenet.inference.atomics import atomic_cas, atomic_load, atomic_store
from npmobilenet.ops.indirect import CompiledCall
from npmobilenet.inference.views import view


@njit_serial
def _scaled_rows(x, y, t):
    # y[t] = 2 x + t; a negative t is refused
    if t < 0:
        raise ValueError("negative tile")
    for i in range(x.shape[0]):
        y[t, i] = 2 * x[i] + t


_F1, _F2 = types.Array(types.float32, 1, "C"), types.Array(types.float32, 2, "C")
_SCALED_ROWS = CompiledCall(_scaled_rows, (_F1, _F2, types.int64))
_call_scaled_rows = _SCALED_ROWS.call


@njit_serial
def _by_address(address, buffer, n, rows, t0):
    x = view(buffer, 0, (n,))
    y = view(buffer, n, (rows, n))
    for t in range(t0, rows):
        _call_scaled_rows(address, (x, y, np.int64(t)))


@njit_serial
def _with_wrong_types(address, buffer):
    _call_scaled_rows(address, (buffer, buffer, 1.5))


def test_a_call_by_address_runs_the_compiled_function():
    buffer = np.zeros(4 + 3 * 4, np.float32)
    buffer[:4] = [1, 2, 3, 4]
    _by_address(_SCALED_ROWS.address(), buffer, 4, 3, 0)
    assert np.array_equal(buffer[4:].reshape(3, 4), 2 * buffer[:4] + np.arange(3)[:, None])
    assert _SCALED_ROWS.address() == _SCALED_ROWS.address() != 0


def test_a_call_by_address_propagates_the_callees_exception():
    buffer = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="negative tile"):
        _by_address(_SCALED_ROWS.address(), buffer, 2, 3, -1)


def test_a_call_by_address_compiles_only_for_its_signature():
    with pytest.raises(TypingError, match="by address takes arguments"):
        _with_wrong_types(_SCALED_ROWS.address(), np.zeros(4, np.float32))


@njit_serial
def _views(buffer, offset):
    return view(buffer, offset, (2, 3)), view(buffer, offset, (0, 3)), view(buffer, -1, (0,))


def test_view_is_the_reshaped_slice_and_writes_through():
    buffer = np.arange(20, dtype=np.float32)
    matrix, empty, absent = _views(buffer, 5)
    assert matrix.flags.c_contiguous and np.array_equal(matrix, buffer[5:11].reshape(2, 3))
    assert empty.shape == (0, 3) and absent.shape == (0,)
    matrix[1, 2] = -1
    assert buffer[10] == -1


@njit_serial
def _swap_twice(counters):
    first = atomic_cas(counters, 0, 5, 7)       # 5 -> 7
    second = atomic_cas(counters, 0, 5, 9)      # no longer 5: unchanged
    atomic_store(counters, 1, 42)
    return first, second, atomic_load(counters, 0), atomic_load(counters, 1)


def test_compare_and_swap_and_store():
    counters = np.array([5, 0], np.int64)
    assert _swap_twice(counters) == (True, False, 7, 42)
    assert list(counters) == [7, 42]
