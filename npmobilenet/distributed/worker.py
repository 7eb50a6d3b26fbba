"""The worker side of distributed prediction: one model per worker process, loaded once.

A Dask task that loaded the weights and compiled the kernels itself would pay seconds per
partition; so each worker process keeps its `Predictor` (npmobilenet.io.predict.open_predictor) in
a cache keyed by the model's settings. `ModelPlugin`, registered on the cluster, fills that cache
when a worker starts (and when a restarted worker rejoins) and warms the model on a zeros batch,
so Numba compiles, or loads its cache, once per process before any image is read (the plugin is in
plugin.py, the one module here that imports Dask at import time).

Threads: a worker with T Dask threads runs the model on T Numba threads (numba's thread count is
per calling thread, so it is passed with every call, through the Predictor's `threads`), and one
forward pass at a time (the fused model's buffers are its own, not per thread). OpenBLAS runs
inside the fused model's threads single-threaded by design (npmobilenet.ops.blas); its own pool,
and OpenMP's, are sized by the worker's environment (`worker_environment`).

This module imports nothing of Dask at import time: workers unpickle `classify_partition` by
name, and the client imports this module without a cluster.
"""
import os
import tempfile
import threading
from dataclasses import dataclass

_PREDICTORS = {}            # ModelSpec -> Predictor, this process's models
_FORWARD_LOCKS = {}         # ModelSpec -> Lock: one forward pass at a time per model
_CACHE_LOCK = threading.Lock()
WARM_UP_SECONDS = {}        # ModelSpec -> seconds the warm-up took in this process


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides a worker's model and preprocessing (the arguments of
    `open_predictor`, hashable). `labels` is the list itself, read on the client: a worker need not
    see the client's labels file. `weights` must be readable by every worker (shared storage)."""

    weights: str
    arch: str = None
    width: float = None
    tf: bool = False
    resize: int = None
    crop: int = None
    mean: tuple = None
    std: tuple = None
    interpolation: str = None
    labels: tuple = None
    threads: int = None     # Numba threads per forward pass; None: the worker's Dask thread count

    def open(self, threads, fuse=True):
        from npmobilenet.io.predict import open_predictor

        return open_predictor(
            self.weights, arch=self.arch, width=self.width, tf=self.tf, resize=self.resize, crop=self.crop,
            mean=self.mean, std=self.std, interpolation=self.interpolation,
            labels=list(self.labels) if self.labels is not None else None, threads=threads, fuse=fuse)


def _hostname():
    import socket

    return socket.gethostname()


def _worker_threads():
    """This Dask worker's thread count (1 outside a worker)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1


def cached_predictor(spec, threads=None):
    """This process's Predictor for `spec`, opened and warmed on first use."""
    with _CACHE_LOCK:
        predictor = _PREDICTORS.get(spec)
        if predictor is None:
            threads = spec.threads or threads or _worker_threads()
            try:
                predictor = spec.open(threads)
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"on worker host {_hostname()}: {exc} (every worker reads the weights: "
                                        "put the file on storage they all see, at the same path)") from None
            WARM_UP_SECONDS[spec] = predictor.warm_up()   # a zeros batch: compile or load kernels now
            _PREDICTORS[spec] = predictor
            _FORWARD_LOCKS[spec] = threading.Lock()
        return predictor


def classify_partition(paths, spec, topk, batch_size):
    """The Dask task: predict_files rows for one partition of image paths, in order.

    paths: list of str; batches of `batch_size` images go through the model one after another, so
    memory holds one batch. An unreadable image comes back as its row with "error" set.
    """
    predictor = cached_predictor(spec)
    rows = []
    with _FORWARD_LOCKS[spec]:
        for start in range(0, len(paths), batch_size):
            rows.extend(predictor.predict_files(paths[start:start + batch_size], topk=topk))
    return rows


def worker_probe():
    """What a worker reports about its setup (run by the client through `Client.run`)."""
    import numba

    return {"host": _hostname(), "pid": os.getpid(), "numba_cache_dir": numba.config.CACHE_DIR or None,
            "numba_threads": numba.config.NUMBA_NUM_THREADS,
            "warm_up_seconds": {spec.weights: round(s, 3) for spec, s in WARM_UP_SECONDS.items()}}


def node_local_cache_dir():
    """A Numba cache directory on this node's own disk: $NUMBA_CACHE_DIR if set, else one under
    the system temporary directory. Numba's default (__pycache__ beside the package, or the home
    directory) is often network storage on a cluster, shared by every worker of every node."""
    return os.environ.get("NUMBA_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"npmobilenet-numba-{os.getuid()}")


def worker_environment(threads, numba_cache_dir=None):
    """Environment variables for worker processes started by us (set before they start, since
    Numba, OpenMP and OpenBLAS read them when they load).

    Numba's pool and OpenMP/OpenBLAS get the worker's thread count (Dask's nanny sets
    OMP_NUM_THREADS=1 etc. whatever the worker's threads; Numba would start one thread per core in
    every worker). MALLOC_TRIM_THRESHOLD_ is left to glibc: see `DASK_ENVIRONMENT_OVERRIDES`.
    """
    threads = str(int(threads))
    return {
        "NUMBA_CACHE_DIR": numba_cache_dir or node_local_cache_dir(),
        "NUMBA_NUM_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }


# Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker it starts (so freed memory goes
# back to the OS). Setting it, at any value, also turns off glibc's adaptive mmap threshold: every
# allocation over 128 KiB (a decoded image, each preprocessing temporary, the batch) is then a
# fresh mmap whose pages the kernel faults in and zeroes, and a munmap when freed. Measured here
# (benchmarks/distributed.py --environment): see the README, "Batch prediction on a Dask cluster".
DASK_ENVIRONMENT_OVERRIDES = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}

