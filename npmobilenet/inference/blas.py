"""SGEMM called from inside Numba kernels: numpy's own OpenBLAS, by address.

Why: a pointwise convolution is a matrix product, and OpenBLAS's single-threaded SGEMM runs at
40-55 GMAC/s per core here, faster than any loop nest Numba compiles (15-38 GMAC/s measured,
see benchmarks/inference.py). Calling it on row tiles *from inside* a Numba `prange` lets each
thread multiply its own tile and then apply the bias, activation and residual while the tile is
still in cache (one pass over the output instead of two), and lets both cores work on a layer
that OpenBLAS alone would run on one (its threading threshold is above MobileNet's layer sizes).

How: numpy's wheels ship OpenBLAS built for 64-bit integers (symbol `scipy_cblas_sgemm64_` or,
in older wheels, `cblas_sgemm64_`). We find the loaded library, take the function's address and
pass it to the kernels as an ordinary int64 argument; an intrinsic casts it to a function
pointer. Passing the address as data (rather than baking a ctypes pointer into the code) keeps
the kernels cacheable on disk (`cache=True`).

OpenBLAS must run single-threaded while our threads call it (its own thread pool, entered from
two threads at once, serialises and spins: measured 50-100x slowdowns), so `single_threaded()`
sets its thread count to 1 for the duration of a forward pass and restores it afterwards.

If no such library is found (another BLAS, or `NPMOBILENET_BLAS=0`), `find_blas()` returns None
and the kernels use their Numba matrix product instead: slower, same results within float32
rounding.
"""
import contextlib
import ctypes
import glob
import os
import threading

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

# (sgemm symbol, set-threads symbol, get-threads symbol); all take/return 64-bit ints (ILP64).
_SYMBOLS = (
    ("scipy_cblas_sgemm64_", "scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("cblas_sgemm64_", "openblas_set_num_threads64_", "openblas_get_num_threads64_"),
)

# CBLAS enums (cblas.h)
CBLAS_ROW_MAJOR, CBLAS_NO_TRANS = 101, 111


class Blas:
    """A located SGEMM: its library path and address, and the library's thread-count controls."""

    def __init__(self, path, sgemm_address, set_threads, get_threads):
        self.path = path
        self.sgemm_address = sgemm_address
        self._set_threads = set_threads
        self._get_threads = get_threads
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = None

    @contextlib.contextmanager
    def single_threaded(self):
        """Run OpenBLAS on the calling threads only, restoring its thread count on exit (re-entrant)."""
        with self._lock:
            if self._depth == 0:
                self._saved = int(self._get_threads())
                if self._saved != 1:
                    self._set_threads(1)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._saved not in (None, 1):
                    self._set_threads(self._saved)

    def __repr__(self):
        return f"Blas({os.path.basename(self.path)})"


def _candidate_libraries():
    """Paths of loaded (or numpy-bundled) OpenBLAS libraries, most likely first."""
    paths = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(np.__file__))
    for pattern in ("numpy.libs/*openblas*", "numpy/.dylibs/*openblas*"):
        paths.extend(p for p in sorted(glob.glob(os.path.join(root, pattern))) if p not in paths)
    return paths


_found = []


def find_blas():
    """The SGEMM kernels can call, or None (then they use their Numba matrix product).

    Set the environment variable NPMOBILENET_BLAS=0 to force the Numba path.
    """
    if os.environ.get("NPMOBILENET_BLAS", "1") == "0":
        return None
    if _found:
        return _found[0]
    blas = None
    for path in _candidate_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sgemm_name, set_name, get_name in _SYMBOLS:
            try:
                sgemm, set_threads, get_threads = getattr(lib, sgemm_name), getattr(lib, set_name), getattr(lib, get_name)
            except AttributeError:
                continue
            set_threads.argtypes, set_threads.restype = [ctypes.c_int64], None
            get_threads.argtypes, get_threads.restype = [], ctypes.c_int64
            address = ctypes.cast(sgemm, ctypes.c_void_p).value
            blas = Blas(path, address, set_threads, get_threads)
            break
        if blas is not None:
            break
    _found.append(blas)
    return blas


def single_threaded_blas():
    """The context in which kernels that call SGEMM from several threads run: OpenBLAS on the
    calling threads only (`Blas.single_threaded`), or nothing when no OpenBLAS was found."""
    blas = find_blas()
    return blas.single_threaded() if blas is not None else contextlib.nullcontext()


def sgemm_address():
    """The address kernels take as `sgemm` (0: use the Numba matrix product)."""
    blas = find_blas()
    return 0 if blas is None else blas.sgemm_address


@intrinsic
def sgemm_call(typingctx, address, a, b, c):
    """c = a @ b by calling the CBLAS SGEMM at `address` (row-major, no transposes, ILP64).

    a: (m, k), b: (k, n), c: (m, n) float32 arrays whose rows are contiguous (last stride 4 bytes;
    row strides may be larger, e.g. a column block of a wider matrix). The caller checks
    `address != 0` and the shapes.
    """
    ok = (isinstance(address, types.Integer) and all(
        isinstance(t, types.Array) and t.ndim == 2 and t.dtype == types.float32 for t in (a, b, c)))
    if not ok:
        return None
    sig = types.void(address, a, b, c)

    def codegen(context, builder, signature, args):
        address_value, a_value, b_value, c_value = args
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        fptr = f32.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, f32, fptr, i64, fptr, i64, f32, fptr, i64])
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[1:], (a_value, b_value, c_value))]
        a_arr, b_arr, c_arr = arrays
        shape = lambda arr, i: builder.sext(builder.extract_value(arr.shape, i), i64)  # noqa: E731
        # leading dimension in elements: row stride (bytes) / 4
        lead = lambda arr: builder.sdiv(builder.sext(builder.extract_value(arr.strides, 0), i64), ir.Constant(i64, 4))  # noqa: E731
        m, k, n = shape(a_arr, 0), shape(a_arr, 1), shape(b_arr, 1)
        address_value = builder.sext(address_value, i64) if address_value.type.width < 64 else address_value
        fn = builder.inttoptr(address_value, fnty.as_pointer())
        builder.call(fn, [
            ir.Constant(i32, CBLAS_ROW_MAJOR), ir.Constant(i32, CBLAS_NO_TRANS), ir.Constant(i32, CBLAS_NO_TRANS),
            m, n, k, ir.Constant(f32, 1.0), a_arr.data, lead(a_arr), b_arr.data, lead(b_arr),
            ir.Constant(f32, 0.0), c_arr.data, lead(c_arr),
        ])
        return context.get_dummy_value()

    return sig, codegen


__all__ = ["Blas", "find_blas", "sgemm_address", "sgemm_call", "single_threaded_blas"]
