"""Numba settings shared by every kernel, set once here (a test checks every kernel uses them).

`KERNEL_OPTIONS` is what each `@numba.njit` kernel is compiled with. `fastmath` lets LLVM
reassociate and contract sums (so it can vectorise the channel loops) but keeps NaN and Inf
semantics, because training must see a NaN loss to stop on it.
"""
import glob
import hashlib
import os
import types

import numba

FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})

# cache=True: compiled machine code is kept on disk (NUMBA_CACHE_DIR, or __pycache__ beside the
# module), so only the first run on a machine pays for compilation.
KERNEL_OPTIONS = dict(cache=True, nogil=True, fastmath=set(FASTMATH))

# Below this many multiply-accumulates a kernel runs serially: waking a sleeping worker costs about
# 0.2 ms on the 2-core development VM, and on a shared machine a parallel region waits for its
# slowest (descheduled) thread. Measured training steps (forward + backward, 2 threads): MobileNetV2
# 0.35 at 32x32, batch 64: 72 ms at 200k, 44 ms at 1M, 41 ms at 2M; V2 1.0 at 224, batch 4: 264,
# 242 and 230 ms.
PARALLEL_MIN_MACS = int(os.environ.get("NPMOBILENET_PARALLEL_MIN_MACS", 2_000_000))


_CPU_FEATURES = None


def cpu_features():
    """The CPU features Numba compiles for, as a set of names ("avx512f", ...): the host's unless
    NUMBA_CPU_FEATURES names others (a portable cache), as Numba itself reads them. The kernels
    written for an instruction set (`ops/vector16.py`, `compression/vnni.py`) check it."""
    global _CPU_FEATURES
    if _CPU_FEATURES is None:
        import llvmlite.binding as llvm

        features = numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
        _CPU_FEATURES = frozenset(f[1:] for f in features.split(",") if f.startswith("+"))
    return _CPU_FEATURES


def limit_openmp_spinning():
    """Let idle OpenMP worker threads spin only briefly before they sleep (GOMP_SPINCOUNT=3000),
    unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set already.

    Numba's OpenMP pool reads this when it starts (at the first parallel kernel of the process),
    so it is set when this module is imported, before any kernel runs. libgomp's default spins for
    ~300k iterations: the spinning worker competes with OpenBLAS's threads (and with any process
    holding the other core), and every parallel region then waits up to a scheduler tick.
    Measured on 2 cores: the stem's ops.conv2d at batch 1 (parallel im2col, then an OpenBLAS
    matmul) took 8.3 ms with the default spin and 0.89 ms with GOMP_SPINCOUNT=3000; fused
    MobileNetV2 at batch 1 on 2 threads, idle machine / one spinning process: PASSIVE 8.0 / 10.8
    ms, GOMP_SPINCOUNT=1000 6.8 / 12.8, 3000 6.1 / 17.1, 6000 5.9 / 24.7.
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "3000"


limit_openmp_spinning()


def kernel_sources_digest():
    """A digest of the source of every module that defines or inlines kernels (ops/, inference/,
    compression/ and this file)."""
    root = os.path.dirname(os.path.abspath(__file__))
    paths = [os.path.join(root, "config.py")]
    for package in ("ops", "inference", "compression"):
        paths += sorted(glob.glob(os.path.join(root, package, "*.py")))
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.relpath(path, root).encode())
        with open(path, "rb") as source:
            digest.update(source.read())
    return digest.hexdigest()[:16]


# Numba's on-disk cache keys a kernel by the source of its own file only. A kernel that inlines
# functions from other files (the op table and the int8 paths inline the tiles of ops/) would
# then load stale machine code after one of those files changed: wrong results (seen). So every
# kernel's cache entry is also stamped with this digest: a change to any kernel source
# recompiles every kernel once.
KERNEL_SOURCES_DIGEST = kernel_sources_digest()


def _stamp_cache(dispatcher):
    """Add KERNEL_SOURCES_DIGEST to the dispatcher's cache stamp (checked when the cache loads)."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if cache_file is not None and hasattr(cache_file, "_source_stamp"):
        cache_file._source_stamp = (cache_file._source_stamp, KERNEL_SOURCES_DIGEST)
    return dispatcher


def njit_serial(func):
    """Compile `func` as a serial kernel (`prange` runs as `range`)."""
    return _stamp_cache(numba.njit(parallel=False, **KERNEL_OPTIONS)(func))


def njit_inline(func):
    """A serial kernel that Numba inlines into each caller (`inline="always"`, at its IR level)
    instead of calling it: for the register tile's blocks (`ops/matmul_avx512.py`), whose calls
    passed some 60 arguments (five arrays, two tuples of eight) and cost as much as the sums of a
    block of K=16 (inlined, layers of K=16 to 32 ran 15 to 35% faster)."""
    return _stamp_cache(numba.njit(parallel=False, inline="always", **KERNEL_OPTIONS)(func))


def njit_serial_strict(func):
    """A serial kernel without fast-math: its floating-point operations stay IEEE's, as written.

    Fast-math lets LLVM fuse (FMA) and reorder operations per context, so a function inlined into
    a serial and into a parallel kernel could round differently in each. With no fast-math flags
    on its own instructions it computes the same bits wherever it is inlined: for the bilinear
    resize, whose serial and parallel builds must agree bit for bit. Marked `strict_math`."""
    dispatcher = _stamp_cache(numba.njit(parallel=False, **dict(KERNEL_OPTIONS, fastmath=False))(func))
    dispatcher.strict_math = True
    return dispatcher


def njit_parallel(func):
    """Compile `func` as a parallel kernel (`prange` splits across threads).

    The parallel build is compiled from a copy of `func` under the qualified name
    `<name>_parallel`: Numba's on-disk cache names its files by module, qualified name and line,
    and keys entries by signature and bytecode but not by `parallel=`, so a serial and a parallel
    build of one function would load each other's machine code (a parallel kernel silently running
    serially, or a crash). `tests/test_config.py` checks no two kernels share a cache file.
    """
    twin = types.FunctionType(func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__)
    twin.__qualname__ = func.__qualname__ + "_parallel"
    twin.__doc__, twin.__module__ = func.__doc__, func.__module__
    return _stamp_cache(numba.njit(parallel=True, **KERNEL_OPTIONS)(twin))


def serial_and_parallel(body):
    """One kernel body compiled twice, `(serial, parallel)`."""
    return njit_serial(body), njit_parallel(body)


def choose_kernel(serial, parallel, macs):
    """The parallel build when the work (`macs` multiply-accumulates) pays for starting threads."""
    if macs >= PARALLEL_MIN_MACS and numba.get_num_threads() > 1:
        return parallel
    return serial


def get_num_threads():
    """The number of threads parallel kernels use."""
    return numba.get_num_threads()


def set_num_threads(n):
    """Set the number of threads parallel kernels use (1 to `NUMBA_NUM_THREADS`)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"threads must be an int, got {type(n).__name__}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"threads must be between 1 and {limit} (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(n)
