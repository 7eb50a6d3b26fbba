"""Persistent threads that help the calling thread run an op table (fused inference at batch 1).

Why not Numba's parallel region (OpenMP): its parallel build of the op table loop compiled every
tile once more (about 19 of the 51 s of a cold start), and its thread pool is libgomp's, shared
with PyTorch in the same process, whose idle workers then competed with ours (after PyTorch or
ONNX Runtime calls, npmobilenet's second thread often did nothing: V2 took 9.5 ms on two threads,
8.9 on one). Here the helpers are ordinary threads; each runs the same compiled function as the
caller (`program._take_tiles`, which releases the GIL), for its own worker number.

The hand-off: the caller stores the job (what to run) in Python, sets an event, and bumps a
generation counter from inside its compiled call (`program._lead`); a helper that finished a job
less than `SPIN_CYCLES` ago is still spinning on that counter (`_wait_for_run`, compiled, without
the GIL) and joins within microseconds; one that went to sleep is woken by the event. A helper
that joins late, or not at all (another process holding the core), only takes fewer tiles: the
caller takes every tile nobody else has taken, so the result never depends on the helpers.

One caller at a time: `lock` is taken without blocking; a second, concurrent caller (another
model, another Python thread) runs its table alone.
"""
import os
import threading

import numba
import numpy as np

from npmobilenet.config import njit_serial
from npmobilenet.inference.atomics import atomic_load, cpu_relax, cycle_counter

GENERATION = 0          # control[GENERATION]: bumped once per run the helpers may join

# Cycles a helper spins after a run before it sleeps: about 0.5 ms at 2-4 GHz, longer than the
# gap between back-to-back calls (copying the input, the governor, Python: 20-50 us), short enough
# that an idle helper soon stops taking a core from other work.
SPIN_CYCLES = 1_500_000


@njit_serial
def _wait_for_run(control, seen, cycles):
    """The generation once it differs from `seen`, or `seen` after about `cycles` cycles.
    (Where the cycle counter reads 0, the loop's count bounds the wait instead.)"""
    start = cycle_counter()
    for spin in range(cycles // 8 + 1):
        generation = atomic_load(control, GENERATION)
        if generation != seen:
            return generation
        if cycle_counter() - start > cycles:
            break
        cpu_relax()
    return seen


class TileWorkers:
    """`count` helper threads (worker numbers 1..count) beside the caller (worker 0)."""

    def __init__(self, count, spin_cycles=SPIN_CYCLES):
        self.count = int(count)
        self.spin_cycles = int(spin_cycles)
        self.control = np.zeros(8, np.int64)      # a cache line of its own
        self.lock = threading.Lock()
        self._job = None
        self._wake = threading.Event()
        self._threads = []
        self._start_lock = threading.Lock()

    def publish(self, workers, take):
        """Offer the next run to helpers 1..workers-1: each calls `take(worker)`. The run starts
        when the caller bumps control[GENERATION] (inside its compiled call, after this)."""
        if not self._threads:
            self._start()
        self._job = (int(workers), take)
        self._wake.set()

    def retire(self):
        """The run is over: drop the job (a helper arriving now takes nothing anyway), so that
        the helpers keep no plan's arrays alive."""
        self._job = None

    def _start(self):
        with self._start_lock:
            if self._threads:
                return
            seen = int(self.control[GENERATION])
            for worker in range(1, self.count + 1):
                thread = threading.Thread(target=self._loop, args=(worker, seen), daemon=True,
                                          name=f"npmobilenet-tiles-{worker}")
                thread.start()
                self._threads.append(thread)

    def _loop(self, worker, seen):
        while True:
            generation = _wait_for_run(self.control, seen, self.spin_cycles)
            if generation == seen:               # idle for a while: sleep until the next publish
                self._wake.wait()
                self._wake.clear()
                continue
            seen = generation
            job = self._job                      # stored before the generation was bumped
            if job is not None and worker < job[0]:
                job[1](worker)
            job = None                           # hold no plan's arrays while idle


_workers = []


def tile_workers():
    """The process's helpers: NUMBA_NUM_THREADS - 1 threads (started on first use), or None."""
    if not _workers:
        count = numba.config.NUMBA_NUM_THREADS - 1
        _workers.append(TileWorkers(count) if count > 0 else None)
    return _workers[0]


def _forget_after_fork():
    # a forked child has none of the parent's threads: it makes its own on first use
    _workers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
