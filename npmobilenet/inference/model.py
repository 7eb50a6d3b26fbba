"""`model.fuse()`: an inference-only MobileNet that runs the model's lowered graph fused.

`fuse_model` lowers the model (`npmobilenet.graph`), folds batch norm and fuses activations
(`graph.inference_graph`), turns the graph into fused layers (`compile.py`: each convolution with
its bias, activation, residual add and squeeze-and-excitation in one kernel) and packs every
weight into one array (`layers.pack_parameters`). Nothing here knows a block class: what the
model lowers to is what runs.

Threads: one image (or a small batch of small images) runs as one call of the plan's op table
(`program.py`), every layer cut into tiles that the calling thread and its helper threads
(`workers.py`) take in turn, one compiled call each for the whole network; a larger batch is cut into chunks of about two 224x224 images that worker
threads run through the whole network, each with its own plan (`chunk_images`), up to the pooled
features when a classifier follows them: the classifier's linear layers then run once over the
whole batch (`classifier_start`), reading their weights once rather than once per chunk. A
`ThreadGovernor` (threads.py) drops the single-image path to one thread while parallel calls are
slower (another process holding a core). The work is cut by shapes only, so outputs are bitwise
identical for every thread count.
"""
import contextlib
import math
import threading
import time

import numba
import numpy as np

from npmobilenet.graph import fold_scale, inference_graph
from npmobilenet.ops.blas import sgemm_address, single_threaded_blas
from npmobilenet.inference.compile import FUSED_ACTIVATIONS, fused_layers
from npmobilenet.inference.layers import FLOAT, FusedGlobalPool, FusedLinear, pack_parameters
from npmobilenet.inference.plan import MemoryPlan
from npmobilenet.inference.threads import ThreadGovernor, check_threads, worker_pool
from npmobilenet.ops.geometry import MIN_RESOLUTION, check_images


def fold_batch_norm(weight, bias, bn):
    """`weight` (output channels last) and `bias` (or None) of a convolution with the eval-mode
    BatchNorm layer `bn` after it folded in: float32 `(w s, beta + (b - mean) s)`, s = gamma /
    sqrt(var + eps) (`npmobilenet.graph.fold_scale`, the one folding formula)."""
    return fold_scale(weight, bias, bn.gamma.data, bn.beta.data, bn.running_mean, bn.running_var, bn.eps)


CHUNK_PIXELS = 100_000

_NO_GUARD = contextlib.nullcontext()      # reusable: a call's guard where no tile calls OpenBLAS


def chunk_images(batch, height, width, chunk_pixels=CHUNK_PIXELS):
    """Images per chunk when a batch is run in chunks: about `chunk_pixels` input pixels (two
    224x224 images), so that a chunk's activations stay in the caches from one layer to the next
    (a whole batch of 32 would stream ~250 MB through memory at every layer); a small batch of
    small images runs whole. Depends on the shape only, never on the thread count."""
    return max(1, min(batch, math.ceil(chunk_pixels / (height * width))))


def classifier_start(layers, outputs):
    """Index of the first layer of the classifier that follows the last global pooling (linear
    layers in a chain, ending in the network's one output), or None when the network has none.

    In chunks of two images, a classifier's weights (5 to 10 MB: V3-Large's 960x1280 and
    1280x1000) are read from memory twice per image, where the convolutions before it stay in
    cache; over the whole batch they are read once, and the products are large enough for the
    GEMM."""
    if len(outputs) != 1:
        return None
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, FusedGlobalPool)]
    if not pools or pools[-1] == len(layers) - 1:
        return None
    tensor = layers[pools[-1]].outputs[0]
    for layer in layers[pools[-1] + 1:]:
        if not isinstance(layer, FusedLinear) or tuple(layer.inputs) != (tensor,):
            return None
        tensor = layer.outputs[0]
    return pools[-1] + 1 if tensor == outputs[0] else None


class FusedMobileNet:
    """An inference-only MobileNet: `fused(x) -> logits`, x: (N, H, W, 3) float, H, W >= 32.

    It runs any lowered graph the fused layers compute: a classifier returns logits (N, K); a
    graph of several outputs (`outputs`, the graph's output tensors: SSDLite's head maps) returns
    a tuple of arrays, one per output, each (N, ...) as the graph gives it (LR-ASPP: its logits
    (N, H, W, K)).

    Built by `model.fuse()`. Holds folded float32 weights (copies: later changes to the source
    model do not reach it) and memory plans for the last input shape seen. `threads` is the
    number of threads it uses (None: Numba's current setting, `NUMBA_NUM_THREADS` or
    `npmobilenet.config.set_num_threads`); `adaptive` lets the governor fall back to one thread
    at batch 1 under load (`set_threads(n, adaptive=False)` pins it). There is no backward pass
    and no training mode. `planned_peak_bytes(resolution, batch)` is the activation memory its
    plans allocate; `activation_bytes` what they hold now.
    """

    training = False

    def __init__(self, layers, config_, threads=None, adaptive=True, outputs=None):
        self.layers = layers
        self.outputs = tuple(outputs) if outputs else (layers[-1].outputs[0],)
        self.params = pack_parameters(layers)      # every weight, in one array (see program.py)
        self.config = dict(config_)
        self.threads = check_threads(threads)
        self.num_classes = self.config.get("num_classes")
        self.adaptive = adaptive     # let the ThreadGovernor fall back to one thread under load
        self.governor = ThreadGovernor()
        self.last_threads = None     # threads the last call ran on
        self._plan = None            # batch 1: one plan, its tiles shared by the threads
        self._worker_plans = {}      # larger batches: (worker, chunk shape) -> plan run on one thread
        self._classifier_plan = None  # and the classifier's plan over the whole batch
        self.chunk_pixels = CHUNK_PIXELS
        # chunks run the layers up to the pooled features, the classifier runs over the batch
        start = classifier_start(layers, self.outputs)
        self.chunk_layers = layers if start is None else layers[:start]
        self.chunk_outputs = self.outputs if start is None else (layers[start - 1].outputs[0],)
        self.classifier_layers = [] if start is None else layers[start:]
        self._lock = threading.RLock()

    # -- the computation --------------------------------------------------------------------
    @property
    def dtype(self):
        return np.dtype(FLOAT)

    def plan(self, input_shape):
        """The memory plan of one image (or one small batch), whose op table the threads share:
        made once for `input_shape` (N, H, W, 3), kept until the shape changes."""
        input_shape = tuple(int(d) for d in input_shape)
        if self._plan is None or self._plan.input_shape != input_shape:
            self._plan = None  # release the old buffers before allocating the new ones
            self._plan = MemoryPlan(self.layers, input_shape, sgemm_address(), self.params, self.outputs)
            self.governor.reset()
        return self._plan

    def _worker_plan(self, worker, input_shape):
        """Worker `worker`'s plan for a chunk of `input_shape` (run on that worker's thread alone)."""
        key = (worker, input_shape)
        if key not in self._worker_plans:
            self._worker_plans[key] = MemoryPlan(self.chunk_layers, input_shape, sgemm_address(), self.params,
                                                 self.chunk_outputs, workers=1)
        return self._worker_plans[key]

    def classifier_plan(self, features_shape):
        """The plan of the classifier's layers over a whole batch of pooled features (N, C)."""
        features_shape = tuple(int(d) for d in features_shape)
        plan = self._classifier_plan
        if plan is None or plan.input_shape != features_shape:
            self._classifier_plan = None
            self._classifier_plan = MemoryPlan(self.classifier_layers, features_shape, sgemm_address(), self.params,
                                               self.outputs, input_name=self.chunk_outputs[0])
        return self._classifier_plan

    def chunk_images(self, batch, height, width):
        """Images per chunk when a batch is split (see `chunk_images`)."""
        return chunk_images(batch, height, width, self.chunk_pixels)

    @property
    def activation_bytes(self):
        """Bytes of every activation buffer this model holds now (all its plans)."""
        plans = ([self._plan] if self._plan is not None else []) + list(self._worker_plans.values())
        plans += [self._classifier_plan] if self._classifier_plan is not None else []
        return sum(plan.nbytes for plan in plans)

    def __call__(self, x):
        x = check_images(x, FLOAT)     # the unfused model's checks and messages
        batch, height, width, _ = x.shape
        threads = self.threads if self.threads is not None else numba.get_num_threads()
        chunk = self.chunk_images(batch, height, width)
        # The governor watches the single-plan path only: its threads wait for each other at
        # every layer, which another process's load can stall. Chunks of a batch need no
        # synchronisation but the last join, and a slowed worker just takes fewer chunks, so
        # they use every thread.
        governed = self.adaptive and chunk >= batch
        # One call at a time: calls share the plans' buffers and the op table's counters (a
        # second caller resetting them mid-run would leave the first waiting forever).
        with self._lock:
            if governed:
                threads = self.governor.choose(threads)
            start = time.perf_counter()
            if chunk >= batch:
                # OpenBLAS kept on the calling threads where a tile calls it (its thread count is
                # set and restored around the call: not done where the register tiles compute
                # every product)
                plan = self.plan(x.shape)
                with single_threaded_blas() if plan.program.calls_sgemm else _NO_GUARD:
                    logits = self._run_whole(x, threads, plan)
            else:
                with single_threaded_blas():
                    logits = self._run_chunks(x, chunk, threads)
            if governed:
                self.governor.record(threads, time.perf_counter() - start)
            self.last_threads = threads
        return logits

    def _run_whole(self, x, threads, plan):
        """`plan` (this shape's); every layer's tiles shared by `threads` threads (this one and helpers)."""
        np.copyto(plan.input, x)
        plan.program.run(threads)
        return self._result([out.copy() for out in plan.outputs])

    def _result(self, arrays):
        return arrays[0] if len(self.outputs) == 1 else tuple(arrays)

    def _run_chunks(self, x, chunk, threads):
        """The batch in chunks of `chunk` images, each run through the whole network by one
        thread; `threads` workers (this thread and pool threads) take the next chunk as they
        finish the last, so a worker slowed by another process simply does fewer chunks. The
        kernels release the GIL. Which worker runs a chunk never changes what it computes. A
        classifier then runs over the whole batch's pooled features, its tiles on `threads`."""
        batch = x.shape[0]
        if self._worker_plans and next(iter(self._worker_plans))[1][1:] != x.shape[1:]:
            self._worker_plans = {}                           # a new resolution: re-plan
        first = self._worker_plan(0, (chunk,) + x.shape[1:])   # its outputs' shapes: those of a chunk
        classifier = None
        if self.classifier_layers:
            classifier = self.classifier_plan((batch,) + first.outputs[0].shape[1:])
            outs = [classifier.input]                         # the chunks write the features there
        else:
            outs = [np.empty((batch,) + a.shape[1:], FLOAT) for a in first.outputs]
        chunks = iter(range(0, batch, chunk))                 # next() on it is atomic under the GIL

        def work(worker):
            for start in chunks:
                stop = min(batch, start + chunk)
                plan = self._worker_plan(worker, (stop - start,) + x.shape[1:])
                np.copyto(plan.input, x[start:stop])
                plan.program.run(1)
                for out, a in zip(outs, plan.outputs):
                    out[start:stop] = a

        workers = min(threads, -(-batch // chunk))
        futures = [worker_pool().submit(work, w) for w in range(1, workers)]
        try:
            work(0)
        finally:
            for future in futures:
                future.result()
        if classifier is not None:
            classifier.program.run(threads)
            outs = [out.copy() for out in classifier.outputs]
        return self._result(outs)

    forward = __call__

    def backward(self, *args, **kwargs):
        raise RuntimeError("a fused model is inference-only: it has no backward pass; "
                           "train the unfused model and call model.fuse() again")

    def train(self, mode=True):
        if mode:
            raise RuntimeError("a fused model is inference-only and cannot be put in training mode; "
                               "train the unfused model and call model.fuse() again")
        return self

    def eval(self):
        return self

    def set_threads(self, threads, adaptive=None):
        """Threads for the parallel layers (None: Numba's current setting); `adaptive=False`
        pins the count (no fallback to one thread under load)."""
        self.threads = check_threads(threads)
        if adaptive is not None:
            self.adaptive = bool(adaptive)
        self.governor.reset()
        return self

    # -- costs ----------------------------------------------------------------------------------
    def layer_costs(self, resolution=224, batch=1):
        """[(name, description, macs, bytes moved)] per fused layer for a square input."""
        return MemoryPlan.costs(self.layers, (batch, resolution, resolution, 3), self.outputs)

    def macs(self, resolution=224, batch=1):
        return sum(c[2] for c in self.layer_costs(resolution, batch))

    def planned_peak_bytes(self, resolution=224, batch=1, threads=None):
        """Bytes of activation memory the plans allocate for a batch at this resolution."""
        if threads is None:
            threads = self.threads if self.threads is not None else numba.get_num_threads()
        return planned_peak_bytes(self, resolution, batch, threads)

    def __repr__(self):
        c = self.config
        lines = [f"FusedMobileNet({c.get('arch')}, width={c.get('width')}, threads={self.threads})"]
        lines += [f"  {layer.name}: {layer.describe()}" for layer in self.layers]
        return "\n".join(lines)


def fuse_model(model, threads=None):
    """`model.fuse(threads)`: the inference-only `FusedMobileNet` of an eval-mode `model`."""
    threads = check_threads(threads)
    training = [name or "model" for name, layer in model.modules() if layer.training]
    if training:
        raise RuntimeError(
            "fuse() needs a model in eval mode (batch norm must use its running statistics, dropout "
            f"must be off), but {len(training)} layer(s) are in training mode (e.g. {training[0]!r}): "
            "call model.eval() first")
    if np.dtype(model.dtype) not in (np.float32, np.float64):
        raise TypeError(f"fuse() needs a float32 or float64 model, got {model.dtype}")
    graph = inference_graph(model, FUSED_ACTIVATIONS)
    return FusedMobileNet(fused_layers(graph), model.config, threads, outputs=graph.outputs)


def planned_peak_bytes(model, resolution=224, batch=1, threads=1):
    """Activation memory (bytes) fused inference allocates for `batch` images of `resolution`.

    model: a MobileNet (fused or not; an unfused model is laid out as `model.fuse()` would lay it
    out, in any mode). resolution: an int (square) or (H, W). `batch=1` gives bytes per image.
    Counts the plans' buffers: input copy, every activation and workspace, logits; not weights.
    A batch run in chunks (`chunk_images`) holds one plan per worker thread (`threads`),
    plus, when the batch is not a whole number of chunks, one plan for the last, smaller chunk
    (an upper bound then: the worker that runs the last chunk may hold no full-size plan), plus
    the classifier's plan over the whole batch when the network ends in one.
    """
    if isinstance(resolution, (tuple, list)):
        h, w = (int(r) for r in resolution)
    else:
        h = w = int(resolution)
    if h < MIN_RESOLUTION or w < MIN_RESOLUTION:
        raise ValueError(f"resolution must be at least {MIN_RESOLUTION}x{MIN_RESOLUTION}, got {h}x{w}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    fused = isinstance(model, FusedMobileNet)
    if fused:
        layers, outputs = model.layers, model.outputs
    else:
        graph = inference_graph(model, FUSED_ACTIVATIONS)
        layers, outputs = fused_layers(graph), graph.outputs
    chunk = chunk_images(int(batch), h, w, model.chunk_pixels if fused else CHUNK_PIXELS)
    if chunk >= batch:
        return MemoryPlan.layout_bytes(layers, (int(batch), h, w, 3), outputs)
    start = classifier_start(layers, outputs)
    classifier_bytes = 0
    if start is not None:
        features = layers[start - 1].outputs[0]
        classifier_bytes = MemoryPlan.layout_bytes(layers[start:], (int(batch), layers[start].in_features), outputs,
                                                   features)
        layers, outputs = layers[:start], (features,)
    chunks, remainder = divmod(int(batch), chunk)
    # (a chunk's plan runs on its worker's thread alone: one block of each workspace)
    total = (min(int(threads), chunks + (remainder > 0))
             * MemoryPlan.layout_bytes(layers, (chunk, h, w, 3), outputs, workers=1))
    if remainder:
        total += MemoryPlan.layout_bytes(layers, (remainder, h, w, 3), outputs, workers=1)
    return total + classifier_bytes
