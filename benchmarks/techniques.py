"""The forward techniques of each convolution kind, side by side on MobileNet layer shapes.

Each kind is written more than once: training's forward (`npmobilenet.ops`) and fused inference's
tile (`npmobilenet.inference.kernels`) use different techniques. This times the kernels alone
(no argument checking), on every distinct layer shape of the given models, median of calls
interleaved round-robin (a change of load on a shared machine reaches every technique alike),
with GMAC/s in brackets and the sum over the models' layers.

    python benchmarks/techniques.py depthwise --batch 1,32 --float64
    python benchmarks/techniques.py conv --archs mobilenet_v2,mobilenet_v3_large,mobilenet_v4_conv_small,mobilenet_v4_conv_medium,mobilenet_v4_conv_large
    python benchmarks/techniques.py pointwise --archs mobilenet_v2 --width 0.35 --resolution 32 --batch 64

depthwise: training's kernel (runs of pixels against a tiled weight, row pairs) against fused
inference's (a row per tile, a channel loop per pixel). conv: training's im2col + np.matmul
against fused inference's direct 3x3 RGB path and its general tap-by-tap path. pointwise:
np.matmul against the fused tiles (SGEMM called from Numba).
"""
import argparse
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("depthwise", "conv", "pointwise"))
    parser.add_argument("--archs", default="mobilenet_v2,mobilenet_v3_large,mobilenet_v4_conv_small")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--float64", action="store_true", help="also time the training forward in float64")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numba  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import npmobilenet  # noqa: E402
from npmobilenet import config, ops  # noqa: E402
from npmobilenet.graph import lower  # noqa: E402
from npmobilenet.inference import kernels  # noqa: E402
from npmobilenet.inference.blas import sgemm_address, single_threaded_blas  # noqa: E402
from npmobilenet.ops.geometry import output_size  # noqa: E402

VARIANT = {"depthwise": "depthwise", "conv": "standard", "pointwise": "pointwise"}


def layer_shapes(kind, archs, width, resolution):
    """{(H, W, Cin, weight shape, stride, (pt, pb, pl, pr)): [layer names]} of `kind` in `archs`."""
    found = {}
    for arch in archs:
        graph = lower(npmobilenet.build(arch, width=width))
        shapes = graph.shapes((1, resolution, resolution, 3))
        for op in graph.ops:
            if op.kind == "conv" and op.variant == VARIANT[kind]:
                _, h, w, c = shapes[op.inputs[0]]
                key = (h, w, c, tuple(op.weight.shape), tuple(op.stride), tuple(op.padding_at(h, w)))
                found.setdefault(key, []).append(f"{arch}/{op.name}")
    return found


@numba.njit(cache=False, nogil=True, fastmath=set(config.FASTMATH))
def _general_conv(x, w, bias, sh, sw, pt, pl, y):
    # the fused engine's general path (`_conv_pixel`) for every pixel, one row after another
    for r in range(y.shape[0] * y.shape[1]):
        n = r // y.shape[1]
        oh = r - n * y.shape[1]
        for ow in range(y.shape[2]):
            kernels._conv_pixel(x, w, bias, y, n, oh, ow, oh * sh - pt, ow * sw - pl)


def techniques(kind, n, key, rng, threads, float64):
    """{name: call} for one layer shape."""
    h, w, c, wshape, (sh, sw), (pt, pb, pl, pr) = key
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    weight = (rng.standard_normal(wshape) * 0.1).astype(np.float32)
    cout = wshape[-1]
    bias = np.zeros(cout, np.float32)
    padding = ((pt, pb), (pl, pr))
    kh, kw = wshape[:2] if kind != "pointwise" else (1, 1)
    ho, wo = output_size(h, kh, sh, pt, pb, 1), output_size(w, kw, sw, pl, pr, 1)
    macs = n * ho * wo * cout * kh * kw * (1 if kind == "depthwise" else c)
    par = threads > 1 and macs >= config.PARALLEL_MIN_MACS
    pick = lambda pair: pair[1] if par else pair[0]  # noqa: E731
    y = np.empty((n, ho, wo, cout), np.float32)
    calls = {}
    if kind == "depthwise":
        from npmobilenet.ops import depthwise as dwmod
        tp = dwmod._tile_pixels(c, sw)
        wt = dwmod._tiled(weight, tp)
        tk = pick((dwmod._depthwise_forward_serial, dwmod._depthwise_forward_parallel))
        calls["training kernel f32"] = lambda: tk(x, weight, wt, y, sh, sw, pt, pl, 1, 1, tp)
        if float64:
            x64, w64 = x.astype(np.float64), weight.astype(np.float64)
            wt64, y64 = wt.astype(np.float64), y.astype(np.float64)
            calls["training kernel f64"] = lambda: tk(x64, w64, wt64, y64, sh, sw, pt, pl, 1, 1, tp)
        kernel = pick(kernels.DEPTHWISE)
        calls["fused tile f32"] = lambda: kernel(x, weight, bias, kernels.IDENTITY, sh, sw, pt, pl, y, kernels._EMPTY_SUMS)
    elif kind == "conv":
        calls["im2col+matmul (ops) f32"] = lambda: ops.conv2d(x, weight, stride=(sh, sw), padding=padding)
        if float64:
            x64, w64 = x.astype(np.float64), weight.astype(np.float64)
            calls["im2col+matmul (ops) f64"] = lambda: ops.conv2d(x64, w64, stride=(sh, sw), padding=padding)
        kernel = pick(kernels.CONV2D)
        if wshape[:3] == (3, 3, 3):
            calls["fused: direct 3x3 RGB"] = lambda: kernel(x, weight, bias, kernels.IDENTITY, sh, sw, pt, pl, y)
        calls["fused: general (_conv_pixel)"] = lambda: _general_conv(x, weight, bias, sh, sw, pt, pl, y)
    else:
        w2 = weight.reshape(c, cout)
        calls["np.matmul (ops) f32"] = lambda: ops.pointwise_conv2d(x, w2)
        if float64:
            x64, w64 = x.astype(np.float64), w2.astype(np.float64)
            calls["np.matmul (ops) f64"] = lambda: ops.pointwise_conv2d(x64, w64)
        kernel = pick(kernels.POINTWISE)
        rows = n * h * w
        tr, tc = kernels.pointwise_tiles(rows, c, cout)
        x2, y2, address = x.reshape(rows, c), y.reshape(rows, cout), sgemm_address()

        def fused():
            with single_threaded_blas():     # SGEMM called from several threads: OpenBLAS on one
                kernel(x2, w2, bias, kernels.IDENTITY, kernels._EMPTY_ROWS, kernels._EMPTY_ROWS, h * w, tr, tc,
                       address, y2)
        calls["fused tile (SGEMM) f32"] = fused
    return calls, macs


def interleaved(calls, repeats):
    """Median ms of each call, timed round-robin (one call of each per round) after two warm-ups."""
    for call in calls.values():
        call()
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def main(args):
    config.set_num_threads(args.threads)
    archs = args.archs.split(",")
    found = layer_shapes(args.kind, archs, args.width, args.resolution)
    rng = np.random.default_rng(0)
    print(f"{args.kind}: {', '.join(archs)} width {args.width} at {args.resolution}, {args.threads} thread(s), "
          f"median of {args.repeats} interleaved calls (ms); load average {os.getloadavg()[0]:.2f}")
    for n in [int(b) for b in args.batch.split(",")]:
        totals, names = {}, None
        rows = []
        for key, users in found.items():
            calls, macs = techniques(args.kind, n, key, rng, args.threads, args.float64)
            ms = interleaved(calls, args.repeats)
            names = names or []
            names += [name for name in ms if name not in names]
            h, w, c, wshape, stride, pads = key
            label = f"{n}x{h}x{w}x{c} k{wshape[0]}x{wshape[1]}->{wshape[-1]} s{stride[0]} p{pads}"
            rows.append((label, len(users), macs, ms))
            for name, t in ms.items():
                totals[name] = totals.get(name, 0.0) + len(users) * t
        header = "| layer | uses | MMAC | " + " | ".join(names) + " |"
        print(f"\nbatch {n}\n" + header + "\n|" + "---|" * (3 + len(names)))
        for label, uses, macs, ms in rows:
            cells = " | ".join(f"{ms[name]:.3f} ({macs / ms[name] / 1e6:.0f})" if name in ms else "-" for name in names)
            print(f"| {label} | {uses} | {macs / 1e6:.1f} | {cells} |")
        print("| sum (x uses) | | | " + " | ".join(f"{totals[name]:.3f}" for name in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
