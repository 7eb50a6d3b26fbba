"""The int8 pointwise kernel with AVX-512 VNNI against the portable int8 kernel and float32, at the
pointwise layers of MobileNetV2 at 224x224, batch 1, one thread.

    python benchmarks/int8_pointwise.py [--repeat 50]

For each layer x (P, Cin) @ w (Cin, Cout): random int8 tensors and requantization, checked first
(VNNI == portable == `ops.reference_int8`, bit for bit), then timed, the median of `--repeat`
calls after warm-up: `qkernels.pointwise_int8` with NPMOBILENET_NO_VNNI=1 (portable) and without
(VNNI; the weight packed once, by the first call), the float32 tile fused inference runs
(SGEMM then bias and ReLU6: `ops.pointwise.POINTWISE_FORWARD`, serial) and np.matmul in float32.
GMAC/s from P * Cin * Cout; `vnni/float` above 1 means int8 is faster than the fused float tile.
"""
import argparse
import os
import sys

# BLAS reads its thread count when it loads, so this must precede the NumPy import.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from npmobilenet import config  # noqa: E402
from npmobilenet.compression import qkernels, vnni  # noqa: E402
from npmobilenet.compression.qops import quantize_multipliers  # noqa: E402
from npmobilenet.inference.tiling import pointwise_tiles  # noqa: E402
from npmobilenet.ops import reference_int8  # noqa: E402
from npmobilenet.ops.blas import sgemm_address, single_threaded_blas  # noqa: E402
from npmobilenet.ops.epilogue import NO_ROWS, RELU6  # noqa: E402
from npmobilenet.ops.pointwise import POINTWISE_FORWARD  # noqa: E402

from applications import median_ms  # noqa: E402  (benchmarks/ is on the path of a script run from it)

# (pixels, Cin, Cout) of MobileNetV2 1.0 at 224x224 (V2 paper, Table 2): an expansion (t = 6) and
# a projection of each stage, and the head's 1x1 convolution
V2_POINTWISE = [
    (112 * 112, 32, 16),
    (56 * 56, 24, 144),
    (56 * 56, 144, 24),
    (28 * 28, 32, 192),
    (14 * 14, 64, 384),
    (14 * 14, 384, 64),
    (14 * 14, 576, 96),
    (7 * 7, 960, 160),
    (7 * 7, 320, 1280),
]


def int8_call(x, zx, w, requant, portable):
    def call():
        os.environ["NPMOBILENET_NO_VNNI"] = "1" if portable else "0"
        return qkernels.pointwise_int8(x, zx, w, *requant)
    return call


def layer_case(rows, cin, cout, rng):
    x = rng.integers(-128, 128, (rows, cin)).astype(np.int8)
    w = rng.integers(-127, 128, (cin, cout)).astype(np.int8)
    bias = rng.integers(-20000, 20000, cout).astype(np.int32)
    multiplier, shift = quantize_multipliers(rng.uniform(0.5, 2, cout) / (cin * 127))
    requant = (bias, multiplier, shift, -128, -128, 127)  # ReLU6 as a clamp at the low end
    return x, -3, w, requant


def measure(repeat, seed=0):
    config.set_num_threads(1)
    rng = np.random.default_rng(seed)
    sgemm = sgemm_address()
    results = []
    for rows, cin, cout in V2_POINTWISE:
        x, zx, w, requant = layer_case(rows, cin, cout, rng)
        expected = reference_int8.pointwise(x, zx, w, *requant)
        portable, fast = int8_call(x, zx, w, requant, True), int8_call(x, zx, w, requant, False)
        if not (np.array_equal(portable(), expected) and np.array_equal(fast(), expected)):
            raise AssertionError(f"({rows}, {cin} -> {cout}): an int8 kernel differs from the reference")
        xf, wf = x.astype(np.float32), w.astype(np.float32)
        bf, yf = requant[0].astype(np.float32), np.empty((rows, cout), np.float32)
        tile_rows, tile_cols = pointwise_tiles(rows, cin, cout)
        float_args = (xf, wf, bf, RELU6, NO_ROWS, NO_ROWS, rows, tile_rows, tile_cols, sgemm, yf)

        def fused():
            POINTWISE_FORWARD[0](*float_args)

        with single_threaded_blas():
            seconds = dict(portable=median_ms(portable, repeat) / 1e3, vnni=median_ms(fast, repeat) / 1e3,
                           fused=median_ms(fused, repeat) / 1e3)
        seconds["matmul"] = median_ms(lambda: np.matmul(xf, wf), repeat) / 1e3
        results.append(((rows, cin, cout), seconds))
    os.environ.pop("NPMOBILENET_NO_VNNI")
    return results


def report(results):
    print(f"{'P, Cin -> Cout':>22} {'MMAC':>6} | GMAC/s: {'int8':>6} {'VNNI':>6} {'fused f32':>9} "
          f"{'matmul':>6} | {'vnni/int8':>9} {'vnni/float':>10}")
    totals = dict(portable=0.0, vnni=0.0, fused=0.0, matmul=0.0)
    all_macs = 0
    for (rows, cin, cout), seconds in results:
        macs = rows * cin * cout
        all_macs += macs
        for k in totals:
            totals[k] += seconds[k]
        rate = {k: macs / s / 1e9 for k, s in seconds.items()}
        print(f"{f'{rows}, {cin} -> {cout}':>22} {macs / 1e6:6.1f} | {'':8}{rate['portable']:6.1f} {rate['vnni']:6.1f} "
              f"{rate['fused']:9.1f} {rate['matmul']:6.1f} | {seconds['portable'] / seconds['vnni']:9.2f} "
              f"{seconds['fused'] / seconds['vnni']:10.2f}")
    rate = {k: all_macs / s / 1e9 for k, s in totals.items()}
    print(f"{'all (sum of medians)':>22} {all_macs / 1e6:6.1f} | {'':8}{rate['portable']:6.1f} {rate['vnni']:6.1f} "
          f"{rate['fused']:9.1f} {rate['matmul']:6.1f} | {totals['portable'] / totals['vnni']:9.2f} "
          f"{totals['fused'] / totals['vnni']:10.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per kernel and layer (median)")
    args = parser.parse_args(argv)
    if not vnni.has_vnni():
        sys.exit("this CPU has no AVX-512 VNNI: nothing to compare")
    report(measure(args.repeat))


if __name__ == "__main__":
    main()
