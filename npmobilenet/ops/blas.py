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

If no such library is found (another BLAS, or `NPMOBILENET_BLAS=0`), `find_blas()` returns None
and the addresses are those of a Numba GEMM with the same C signature (`numba_gemm_address`,
compiled on first use): slower, same results within rounding. So a kernel always calls a GEMM
by address and never compiles a matrix product of its own (a Numba loop in `matmul` was
compiled, optimised and turned into machine code once more inside every tile that calls it:
about 2 s of a cold start).
"""
import contextlib
import ctypes
import glob
import os
import threading
import types as pytypes

import numpy as np
from llvmlite import ir
from numba import types
from numba import carray, cfunc
from numba.extending import intrinsic

from npmobilenet.config import FASTMATH, njit_serial

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
    """The address float32 kernels take as `gemm`: OpenBLAS's SGEMM, or the Numba one."""
    return gemm_address(np.float32)


def gemm_address(dtype):
    """The address of OpenBLAS's GEMM for `dtype` (float32: SGEMM, float64: DGEMM), or of the
    Numba GEMM with its signature when there is no OpenBLAS (`numba_gemm_address`)."""
    blas = find_blas()
    if blas is None:
        return numba_gemm_address(dtype)
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
        # leading dimension in elements: row stride (bytes) / itemsize, at least the row's length
        # (CBLAS's rule): a matrix of one row may carry any row stride (x[None] has 0)
        def lead(arr):
            stride = builder.sdiv(builder.sext(builder.extract_value(arr.strides, 0), i64), ir.Constant(i64, itemsize))
            cols = shape(arr, 1)
            return builder.select(builder.icmp_signed("<", stride, cols), cols, stride)
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
# a GEMM in Numba with CBLAS's signature, for machines without OpenBLAS (and for tests)
# ---------------------------------------------------------------------------------------------
def _gemm_numba(layout, trans_a, trans_b, m, n, k, alpha, a_data, lda, b_data, ldb, beta, c_data, ldc):
    # c = a @ b, row-major, no transposes, alpha 1, beta 0 (all `gemm_call` passes): a (m, k),
    # b (k, n), c (m, n) with leading dimensions lda, ldb, ldc. Four rows at a time: each row of
    # b loaded once feeds four rows of c (the vectorised loop runs over the contiguous columns).
    a = carray(a_data, (m, lda))
    b = carray(b_data, (k, ldb))
    c = carray(c_data, (m, ldc))
    p = 0
    while p + 4 <= m:
        c0, c1, c2, c3 = c[p], c[p + 1], c[p + 2], c[p + 3]
        for j in range(n):
            c0[j] = 0
            c1[j] = 0
            c2[j] = 0
            c3[j] = 0
        for q in range(k):
            a0, a1, a2, a3 = a[p, q], a[p + 1, q], a[p + 2, q], a[p + 3, q]
            bq = b[q]
            for j in range(n):
                bv = bq[j]
                c0[j] += a0 * bv
                c1[j] += a1 * bv
                c2[j] += a2 * bv
                c3[j] += a3 * bv
        p += 4
    while p < m:
        cp = c[p]
        for j in range(n):
            cp[j] = 0
        for q in range(k):
            ap = a[p, q]
            bq = b[q]
            for j in range(n):
                cp[j] += ap * bq[j]
        p += 1


_numba_gemms = {}


def numba_gemm_address(dtype):
    """The address of a Numba GEMM with CBLAS's row-major signature (`gemm_call`'s) for float32
    or float64, compiled (or loaded from the cache) on first use."""
    kind = np.dtype(dtype)
    if kind not in (np.float32, np.float64):
        raise TypeError(f"the Numba GEMM takes float32 or float64, got {kind}")
    if kind not in _numba_gemms:
        real = types.float32 if kind == np.float32 else types.float64
        pointer = types.CPointer(real)
        signature = types.void(types.int32, types.int32, types.int32, types.int64, types.int64, types.int64, real,
                               pointer, types.int64, pointer, types.int64, real, pointer, types.int64)
        # a copy per dtype, named for it: Numba's cache names its files by qualified name
        body = pytypes.FunctionType(_gemm_numba.__code__, _gemm_numba.__globals__, f"_gemm_numba_{kind.name}")
        body.__qualname__ = body.__name__
        _numba_gemms[kind] = cfunc(signature, cache=True, fastmath=set(FASTMATH))(body)
    return _numba_gemms[kind].address


# ---------------------------------------------------------------------------------------------
# the matrix product of a tile, as kernels call it
# ---------------------------------------------------------------------------------------------
@njit_serial
def matmul(gemm, a, p0, p1, w, m0, m1, c):
    """c[p0:p1, m0:m1] = a[p0:p1] @ w[:, m0:m1], by the GEMM at address `gemm` (that of the
    arrays' dtype: `gemm_address`). a: (P, K), w: (K, M), c: (P, M), rows contiguous."""
    if p1 <= p0 or m1 <= m0:
        return
    gemm_call(gemm, a[p0:p1], w[:, m0:m1], c[p0:p1, m0:m1])


__all__ = ["Blas", "find_blas", "gemm_address", "gemm_call", "matmul", "numba_gemm_address", "sgemm_address",
           "single_threaded_blas"]
