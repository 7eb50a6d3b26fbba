"""Threads for fused inference: how many, and when to fall back to one.

`numba_threads(n)` runs parallel kernels on n threads and restores the setting; the
`ThreadGovernor` times batch-1 calls and picks one thread while two are slower (another process
holding a core); `worker_pool()` holds the threads that run chunks of a batch.
"""
import contextlib
import time

import numba
import numpy as np


def check_threads(threads):
    """`threads` as an int in [1, NUMBA_NUM_THREADS], or None; else a clear error."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= limit:
        raise ValueError(f"threads must be between 1 and {limit} (NUMBA_NUM_THREADS), got {threads}")
    return int(threads)


@contextlib.contextmanager
def numba_threads(threads):
    """Run parallel kernels on `threads` threads (None: leave Numba's setting), restoring after."""
    if threads is None:
        yield
        return
    previous = numba.get_num_threads()
    if previous != threads:
        numba.set_num_threads(threads)
    try:
        yield
    finally:
        if previous != threads:
            numba.set_num_threads(previous)


class ThreadGovernor:
    """Chooses, call by call, between running the parallel layers on `threads` threads or on one.

    On a shared machine the threads running a network wait for each other at every layer; when
    another process holds a core, one of them may be descheduled for a whole scheduler tick, and
    a network of ~50 layers becomes many times slower than one thread (measured 100 ms against 25
    ms for MobileNetV2 at batch 1 with the load average near 6). So the governor times calls:
    it keeps the last three call times with `threads` threads and with one, runs the count whose
    fastest is faster, and now and then probes the other. On one thread it probes `threads` every
    `probe_interval` calls, doubling up to `max_interval` while the probe confirms the choice, back
    to the start when it does not. On `threads` threads it needs no probe to see them slow down
    (their own calls show it, and it falls back once their fastest of three is slower than one
    thread's), so it probes one thread only every `max_interval` calls, to refresh that estimate:
    each such probe idles the helpers, and the two-thread calls after it wait for them to wake
    (the README has `benchmarks/threads.py`'s governed and pinned models before and after).

    The fastest of three, not their median: what the governor must see is a core held by another
    process, which slows every two-thread call, not a call that a hiccup slowed (a helper
    descheduled while it holds a tile: 11-14 ms calls of V2 among 4.5-5 ms ones). With the median,
    two such calls among the first three (13.6 and 14.4 ms, then 5.0, in one trace of
    `benchmarks/int8_latency.py`'s blocks) sent V2 to one thread until a probe brought it back.

    Nor the first 10 ms of calls on several threads after the helpers idled (calls on one thread,
    or a pause longer than their spin): those calls stay slow while the helpers' cores wake up
    (V3-Small on two threads, `benchmarks/threads.py`' blocks: three to five calls of 2.4-2.6 ms,
    or 5-11 ms, after calls on one thread, where it takes 1.1 ms, 1.9 on one thread). Counted,
    three of them sent the model to one thread, where each two-call probe met the same slow
    start and kept it there: 40% of its calls on one thread over three launches, 1.02 and 1.07x
    in the two where two threads pinned gave 1.65 and 1.68x.

    The first call after a (re)start is not counted: it pays for allocating the plan's buffers.
    Then each count is measured three times, alternately, before the first choice: single early
    samples were noisy (the helper threads start, caches are cold), and the governor then often
    kept one thread for hundreds of calls on a quiet machine (`npmobilenet bench` timed V2 on "2
    threads" at its 1-thread time, 9.2 ms). A probe is two calls, of which the faster counts: the
    first of them may wake helpers that slept while one thread ran.
    Thread counts change only *which threads* compute a tile, never how: outputs are bitwise
    identical whichever is chosen.
    """

    WARM_SAMPLES = 3        # samples of each count before the first choice
    PROBE_CALLS = 2         # calls per probe (the faster counts)
    SETTLE = 0.010          # seconds of several-thread calls not counted after the helpers idled
    IDLE_GAP = 0.0005       # a pause after which the helpers sleep (they spin ~0.5 ms: workers.py)

    def __init__(self, probe_interval=8, max_interval=256):
        self.first_interval, self.max_interval = probe_interval, max_interval
        self.reset()

    def reset(self):
        self.samples = {}           # thread count -> the last few seconds per call
        self.interval = self.first_interval
        self.since_probe = 0
        self._skip = 1              # the first call allocates the plan: do not count it
        self._probe = None          # (best, probed count, its times so far) while probing
        self._warming = True        # until both counts have WARM_SAMPLES samples
        self._settling = 0.0        # seconds of several-thread calls still to leave uncounted
        self._last = None           # (count, end time) of the last call

    @property
    def estimate(self):
        """thread count -> the fastest of its recent samples (seconds per call)."""
        return {n: min(v) for n, v in self.samples.items() if v}

    def choose(self, threads):
        if threads <= 1:
            return 1
        if self._warming:                           # measure both, alternately, first
            counts = [len(self.samples.get(n, ())) for n in (threads, 1)]
            if min(counts) < self.WARM_SAMPLES:
                return threads if counts[0] <= counts[1] else 1
            self._warming = False
        if self._probe is not None:
            return self._probe[1]
        estimate = self.estimate
        best = threads if estimate[threads] <= estimate[1] else 1
        self.since_probe += 1
        if self.since_probe >= (self.interval if best == 1 else self.max_interval):
            self.since_probe = 0
            other = 1 if best == threads else threads
            self._probe = (best, other, [])
            return other
        return best

    def record(self, n, seconds, now=None):
        """The call just made ran on `n` threads for `seconds` and ended at `now` (perf_counter)."""
        now = time.perf_counter() if now is None else now
        idled = self._last is not None and (self._last[0] == 1 or now - seconds - self._last[1] > self.IDLE_GAP)
        self._last = (n, now)
        if self._skip:
            self._skip -= 1
            return
        if n > 1 and idled:
            self._settling = self.SETTLE
        if n > 1 and self._settling > 0:
            self._settling -= seconds       # the helpers are still waking: not the count's speed
            return
        if self._probe is not None and self._probe[1] == n:
            best, probed, times = self._probe
            times.append(seconds)
            if len(times) < self.PROBE_CALLS:
                return
            self._probe = None
            won = min(times) < self.estimate[best]
            # its old samples are stale (the load may have changed): the probe replaces them
            self.samples[probed] = [min(times)]
            if best == 1:       # probing `threads` from one thread: back off while one stays best
                self.interval = self.first_interval if won else min(self.max_interval, 2 * self.interval)
            else:               # from `threads`: should they lose later, probe them back soon
                self.interval = self.first_interval
            return
        samples = self.samples.setdefault(n, [])
        samples.append(seconds)
        del samples[:-3]


_pool = []


def worker_pool():
    """Threads that run chunks of a batch beside the calling thread (created on first use)."""
    if not _pool:
        from concurrent.futures import ThreadPoolExecutor

        _pool.append(ThreadPoolExecutor(max_workers=max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                        thread_name_prefix="npmobilenet-inference"))
    return _pool[0]
