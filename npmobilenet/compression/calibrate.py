"""Activation ranges from sample images, and the 8-bit parameters that follow from a range.

An activation tensor is quantized asymmetrically, per tensor (Jacob et al., 2018, section 2.1):
a real range [lo, hi] (widened to contain 0, so that 0 is exact: zero padding and ReLU need it)
maps onto int8 [-128, 127] with

    scale = (hi - lo) / 255,     zero_point = round(-128 - lo / scale)

The range comes from running the float model on calibration images. Three methods:

- "minmax": the smallest and largest value seen (TFLite's converter). No value is ever clipped,
  so one outlier stretches the scale for every other value.
- "percentile": the `percentile`-th (default 99.99) and (100 - percentile)-th percentiles of
  every value seen: the rare outliers are clipped, the rest get a finer grid.
- "mse": the clipping range inside [min, max] that minimises the mean squared error between the
  values seen and their quantized-then-dequantized versions (clipping error plus rounding error),
  searched on a histogram (in the spirit of Banner et al., 2019, and the histogram calibrators of
  TensorRT and ONNX Runtime).

Percentile and MSE need a histogram, so they take two passes over the images: the first finds
each tensor's min and max, the second fills a histogram of `BINS` bins over that span.
"""
import numpy as np

QMIN, QMAX = -128, 127
BINS = 2048
METHODS = ("minmax", "percentile", "mse")


def qparams_from_range(lo, hi):
    """(scale, zero_point) mapping [lo, hi] (0 included) onto int8 [-128, 127]."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        # An all-zero tensor (e.g. a dead channel group): any scale represents it exactly.
        return 1.0 / 255.0, QMIN
    scale = (hi - lo) / (QMAX - QMIN)
    zero_point = int(np.clip(np.round(QMIN - lo / scale), QMIN, QMAX))
    return float(scale), zero_point


def fake_quantize(x, scale, zero_point):
    """x rounded to the int8 grid of (scale, zero_point) and mapped back to reals (clipping outside)."""
    q = np.clip(np.round(x / scale) + zero_point, QMIN, QMAX)
    return (q - zero_point) * scale


class Observer:
    """Running min/max of one tensor over calibration batches, then (pass 2) a histogram."""

    def __init__(self):
        self.lo, self.hi = np.inf, -np.inf
        self.counts = None
        self.edges = None

    def observe_range(self, x):
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def start_histogram(self):
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if hi - lo < 1e-12:
            hi = lo + 1e-12
        self.edges = np.linspace(lo, hi, BINS + 1)
        self.counts = np.zeros(BINS, np.int64)

    def observe_histogram(self, x):
        counts, _ = np.histogram(x, bins=self.edges)
        self.counts += counts

    # -- the range each method chooses ----------------------------------------------------------
    def minmax(self):
        return self.lo, self.hi

    def percentile(self, percentile):
        cdf = np.cumsum(self.counts) / max(self.counts.sum(), 1)
        upper = self.edges[1:][min(np.searchsorted(cdf, percentile / 100.0), BINS - 1)]
        lower = self.edges[:-1][min(np.searchsorted(cdf, 1.0 - percentile / 100.0), BINS - 1)]
        return min(lower, 0.0), max(upper, 0.0)

    def _error(self, lo, hi, centres, weights):
        scale, zero_point = qparams_from_range(lo, hi)
        return float(np.dot(weights, (centres - fake_quantize(centres, scale, zero_point)) ** 2))

    def mse(self, candidates=100, rounds=2):
        """The range [lo', hi'] inside [lo, hi] with least expected squared quantization error.

        Each end is shrunk on its own (a * lo, b * hi for a, b in (0, 1]), by coordinate descent:
        the upper end with the lower fixed, then the lower with the upper fixed, `rounds` times.
        Scaling both ends together would clip the dense side of a skewed tensor to spare its tail.
        """
        centres = (self.edges[:-1] + self.edges[1:]) / 2
        weights = self.counts / max(self.counts.sum(), 1)
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        fractions = np.linspace(1.0, 1.0 / candidates, candidates)  # widest first: ties keep the wider range
        best_lo, best_hi = lo, hi
        best_error = self._error(lo, hi, centres, weights)
        for _ in range(rounds):
            for side in ("hi", "lo"):
                for f in fractions:
                    trial = (best_lo, f * hi) if side == "hi" else (f * lo, best_hi)
                    error = self._error(*trial, centres, weights)
                    if error < best_error:
                        (best_lo, best_hi), best_error = trial, error
        return best_lo, best_hi


def check_method(method, percentile):
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(percentile, (int, float)) or not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be a number in (50, 100], got {percentile!r}")


def calibrate(run, images, tensors, method="minmax", percentile=99.99, batch_size=64, minmax_tensors=()):
    """{tensor name: (lo, hi)}: the range `method` chooses for each tensor of `tensors`.

    run(x) -> {name: float array} runs the float model on a batch and returns every tensor.
    `minmax_tensors` always use min/max (e.g. the input image, which is never clipped).
    """
    check_method(method, percentile)
    observers = {name: Observer() for name in tensors}
    batches = [images[i : i + batch_size] for i in range(0, images.shape[0], batch_size)]
    for x in batches:
        values = run(x)
        for name, obs in observers.items():
            obs.observe_range(values[name])
    if method != "minmax":
        for obs in observers.values():
            obs.start_histogram()
        for x in batches:
            values = run(x)
            for name, obs in observers.items():
                obs.observe_histogram(values[name])
    ranges = {}
    for name, obs in observers.items():
        if method == "minmax" or name in minmax_tensors:
            ranges[name] = obs.minmax()
        elif method == "percentile":
            ranges[name] = obs.percentile(percentile)
        else:
            ranges[name] = obs.mse()
    return ranges
