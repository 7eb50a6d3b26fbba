"""`ModelPlugin`: the Dask worker plugin that opens and warms the model on every worker."""
import asyncio
import hashlib
import time

from distributed.diagnostics.plugin import WorkerPlugin

from npmobilenet.distributed.worker import cached_predictor


class ModelPlugin(WorkerPlugin):
    """Opens the model of `spec` (a worker.ModelSpec) on each worker and warms it on a zeros batch.

    Registered with `Client.register_plugin`, which returns once every current worker is set up;
    Dask also calls `setup(worker)` on workers that join later, a restarted one included. The load
    runs in a thread of its own, so the worker's event loop keeps answering the scheduler through
    a cold Numba compilation (about 20 s for MobileNetV2).
    """

    idempotent = True   # registering the same model twice does not load it twice

    def __init__(self, spec):
        self.spec = spec
        # a name stable across processes (str hashes are salted per process)
        self.name = "npmobilenet-model-" + hashlib.sha1(repr(spec).encode()).hexdigest()[:16]

    async def setup(self, worker):
        threads = self.spec.threads or int(worker.state.nthreads)
        t0 = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, cached_predictor, self.spec, threads)
        self.seconds = time.perf_counter() - t0
