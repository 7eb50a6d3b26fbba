"""The Dask client a run uses: the caller's, one joined by scheduler address, or a local cluster.

A `LocalCluster` we start has worker processes (one Dask thread each by default: the model runs
single-threaded in each, and the processes share nothing), a node-local Numba cache, and each
worker's Numba, OpenMP and OpenBLAS threads set to its Dask thread count before it starts
(`worker.worker_environment`). Dask's MALLOC_TRIM_THRESHOLD_ is not passed to these workers
(`worker.DASK_ENVIRONMENT_OVERRIDES`; why, in the README's section on Dask).
"""
import contextlib
import importlib
import logging
import os

from npmobilenet.distributed.worker import DASK_ENVIRONMENT_OVERRIDES, worker_environment


def require_dask():
    """Import dask.distributed, or ImportError naming the install."""
    for module in ("distributed", "pandas", "pyarrow"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise ImportError(
                f"prediction on a Dask cluster needs the optional package {module}: "
                "pip install 'npmobilenet[dask]' (dask[distributed], pyarrow, pandas)") from None


def _positive(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def start_local_cluster(workers=None, threads_per_worker=1, numba_cache_dir=None):
    """A `LocalCluster` of `workers` processes (default: one per core) with `threads_per_worker`
    threads each, set up for npmobilenet (see the module docstring). Its processes log only
    critical messages: what goes wrong reaches the caller as the run's exception."""
    import dask
    from distributed import LocalCluster

    workers = _positive(workers, "workers") or os.cpu_count() or 1
    threads_per_worker = _positive(threads_per_worker, "threads_per_worker")
    with dask.config.set(DASK_ENVIRONMENT_OVERRIDES):
        return LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
            dashboard_address=":0", silence_logs=logging.CRITICAL,
            env=worker_environment(threads_per_worker, numba_cache_dir))


@contextlib.contextmanager
def dask_client(client=None, scheduler=None, workers=None, threads_per_worker=1, numba_cache_dir=None):
    """The client to run on: `client` as given (left open), else a client of the scheduler at
    `scheduler` (tcp://host:8786), else of a local cluster (both closed on exit)."""
    require_dask()
    if client is not None:
        if scheduler is not None or workers is not None:
            raise ValueError("give a client, or a scheduler address or a number of workers, not both")
        yield client
        return
    from distributed import Client

    if scheduler is not None:
        if workers is not None:
            raise ValueError("give a scheduler address (a running cluster) or a number of workers "
                             "(a local cluster), not both")
        try:
            joined = Client(scheduler)
        except OSError as exc:   # refused, unreachable, timed out
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler!r}: {exc}") from None
        with joined:
            yield joined
        return
    # Dask's nanny writes its workers' pre-spawn variables (MALLOC_TRIM_THRESHOLD_, OMP_NUM_THREADS=1,
    # ...) into this process's os.environ as it starts them: put the caller's environment back.
    caller_environment = dict(os.environ)
    try:
        with start_local_cluster(workers, threads_per_worker, numba_cache_dir) as cluster, Client(cluster) as local:
            _restore_environment(caller_environment)
            yield local
    finally:
        _restore_environment(caller_environment)


def _restore_environment(environment):
    for name in set(os.environ) - set(environment):
        del os.environ[name]
    os.environ.update(environment)
