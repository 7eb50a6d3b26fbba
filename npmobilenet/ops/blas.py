"""GEMM called from inside Numba kernels: numpy's own OpenBLAS, by address; and the tile product.

Why: a pointwise convolution (and a standard one, after gathering its receptive fields) is a
matrix product, and OpenBLAS's single-threaded SGEMM runs at 40-55 GMAC/s per core here, faster
than any loop nest Numba compiles (15-38 GMAC/s measured, see benchmarks/inference.py). Calling
it on row tiles *from inside* a Numba `prange` lets each thread multiply its own tile and then
apply the bias, activation and residual while the tile is still in cache (one pass over the
output instead of two), and lets both cores work on a layer that OpenBLAS alone would run on one
(its threading threshold is above MobileNet's layer sizes).

How: numpy's wheels ship OpenBLAS built for 64-bit integers (symbols `scipy_cblas_sgemm64_` /
`scipy_cblas_dgemm64_` or, in older wheels, `cblas_sgemm64_` / `cblas_dgemm64_`). We find the
loaded library, take the functions' addresses and pass them to the kernels as ordinary int64
arguments; an intrinsic casts the address to a function pointer of the array's type (SGEMM for
float32, DGEMM for float64). Passing the address as data (rather than baking a ctypes pointer
into the code) keeps the kernels cacheable on disk (`cache=True`).

OpenBLAS must run single-threaded while our threads call it (its own thread pool, entered from
two threads at once, serialises and spins: measured 50-100x slowdowns), so `single_threaded()`
sets its thread count to 1 for the duration of a forward pass and restores it afterwards.

If no such library is found (another BLAS, or `NPMOBILENET_BLAS=0`), `find_blas()` returns None,
the addresses are 0 and `matmul` uses its Numba loop instead: slower, same results within rounding.
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

from npmobilenet.config import njit_serial
from npmobilenet.ops.epilogue import _U

# (sgemm, dgemm, set-threads, get-threads symbols); all take/return 64-bit ints (ILP64).
_SYMBOLS = (
    ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", "scipy_openblas_set_num_threads64_",
     "scipy_openblas_get_num_threads64_"),
    ("cblas_sgemm64_", "cblas_dgemm64_", "openblas_set_num_threads64_", "openblas_get_num_threads64_"),
)

# CBLAS enums (cblas.h)
CBLAS_ROW_MAJOR, CBLAS_NO_TRANS = 101, 111


class Blas:
    """A located OpenBLAS: its path, SGEMM's and DGEMM's addresses, and its thread-count controls."""

    def __init__(self, path, sgemm_address, dgemm_address, set_threads, get_threads):
        self.path = path
        self.sgemm_address = sgemm_address
        self.dgemm_address = dgemm_address
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
    """The OpenBLAS kernels can call, or None (then they use their Numba matrix product).

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
        for names in _SYMBOLS:
            try:
                sgemm, dgemm, set_threads, get_threads = (getattr(lib, name) for name in names)
            except AttributeError:
                continue
            set_threads.argtypes, set_threads.restype = [ctypes.c_int64], None
            get_threads.argtypes, get_threads.restype = [], ctypes.c_int64
            address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
            blas = Blas(path, address(sgemm), address(dgemm), set_threads, get_threads)
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
    """The address float32 kernels take as `gemm` (0: use the Numba matrix product)."""
    blas = find_blas()
    return 0 if blas is None else blas.sgemm_address


def gemm_address(dtype):
    """The address of OpenBLAS's GEMM for `dtype` (float32: SGEMM, float64: DGEMM), or 0."""
    blas = find_blas()
    if blas is None:
        return 0
    return blas.sgemm_address if np.dtype(dtype) == np.float32 else blas.dgemm_address


@intrinsic
def gemm_call(typingctx, address, a, b, c):
    """c = a @ b by calling the CBLAS GEMM at `address` (row-major, no transposes, ILP64):
    SGEMM's signature for float32 arrays, DGEMM's for float64.

    a: (m, k), b: (k, n), c: (m, n) arrays of one float dtype whose rows are contiguous (last
    stride one element; row strides may be larger, e.g. a column block of a wider matrix). The
    caller checks `address != 0`, that it is the GEMM of that dtype, and the shapes.
    """
    dtype = getattr(a, "dtype", None)
    ok = (isinstance(address, types.Integer) and dtype in (types.float32, types.float64) and all(
        isinstance(t, types.Array) and t.ndim == 2 and t.dtype == dtype for t in (a, b, c)))
    if not ok:
        return None
    sig = types.void(address, a, b, c)
    itemsize = 4 if dtype == types.float32 else 8

    def codegen(context, builder, signature, args):
        address_value, a_value, b_value, c_value = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        f32 = ir.FloatType() if itemsize == 4 else ir.DoubleType()
        fptr = f32.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, f32, fptr, i64, fptr, i64, f32, fptr, i64])
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[1:], (a_value, b_value, c_value))]
        a_arr, b_arr, c_arr = arrays
        shape = lambda arr, i: builder.sext(builder.extract_value(arr.shape, i), i64)  # noqa: E731
        # leading dimension in elements: row stride (bytes) / itemsize
        lead = lambda arr: builder.sdiv(builder.sext(builder.extract_value(arr.strides, 0), i64), ir.Constant(i64, itemsize))  # noqa: E731
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


# ---------------------------------------------------------------------------------------------
# the matrix product of a tile, as kernels call it
# ---------------------------------------------------------------------------------------------
@njit_serial
def _matmul_numba(a, p0, p1, w, m0, m1, c):
    """c[p0:p1, m0:m1] = a[p0:p1] @ w[:, m0:m1]. Four rows at a time: each row of w loaded once
    feeds four rows of c (the vectorised loop runs over the contiguous column axis)."""
    k = a.shape[1]
    p = p0
    while p + 4 <= p1:
        c0, c1, c2, c3 = c[p], c[p + 1], c[p + 2], c[p + 3]
        for j in range(m0, m1):
            uj = _U(j)
            c0[uj] = 0
            c1[uj] = 0
            c2[uj] = 0
            c3[uj] = 0
        for q in range(k):
            a0, a1, a2, a3 = a[p, q], a[p + 1, q], a[p + 2, q], a[p + 3, q]
            wq = w[q]
            for j in range(m0, m1):
                uj = _U(j)
                wv = wq[uj]
                c0[uj] += a0 * wv
                c1[uj] += a1 * wv
                c2[uj] += a2 * wv
                c3[uj] += a3 * wv
        p += 4
    while p < p1:
        cp = c[p]
        for j in range(m0, m1):
            cp[_U(j)] = 0
        for q in range(k):
            ap = a[p, q]
            wq = w[q]
            for j in range(m0, m1):
                uj = _U(j)
                cp[uj] += ap * wq[uj]
        p += 1


@njit_serial
def matmul(gemm, a, p0, p1, w, m0, m1, c):
    """c[p0:p1, m0:m1] = a[p0:p1] @ w[:, m0:m1], by the OpenBLAS GEMM at address `gemm` (that of
    the arrays' dtype: `gemm_address`), or by Numba when `gemm` is 0. a: (P, K), w: (K, M),
    c: (P, M), rows contiguous."""
    if p1 <= p0 or m1 <= m0:
        return
    if gemm != 0:
        gemm_call(gemm, a[p0:p1], w[:, m0:m1], c[p0:p1, m0:m1])
    else:
        _matmul_numba(a, p0, p1, w, m0, m1, c)


__all__ = ["Blas", "find_blas", "gemm_address", "gemm_call", "matmul", "sgemm_address", "single_threaded_blas"]
