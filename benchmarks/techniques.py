"""The forward techniques of each convolution kind, side by side on MobileNet layer shapes.

Each kind has one forward tile (`npmobilenet.ops`) that training, fused inference and the exact
int8 path share; this times it as each of them calls it (training: no epilogue, float32 and
float64; inference: bias and activation, float32), beside the techniques it is measured against:
whole-batch im2col + np.matmul for the standard convolution, np.matmul for the pointwise one (what
training keeps). Kernels alone (no argument checking), every distinct layer shape of the given
models, median of calls interleaved round-robin (a change of load on a shared machine reaches
every technique alike), GMAC/s in brackets, and the sum over the models' layers.

    python benchmarks/techniques.py depthwise --batch 1,32 --float64
    python benchmarks/techniques.py conv --archs mobilenet_v2,mobilenet_v3_large,mobilenet_v4_conv_small,mobilenet_v4_conv_medium,mobilenet_v4_conv_large
    python benchmarks/techniques.py pointwise --archs mobilenet_v2 --width 0.35 --resolution 32 --batch 64

The techniques the tiles replaced (fused inference's own depthwise tile and tap-by-tap standard
convolution, training's im2col forward) are timed by this script as of commit be44c49; the
ops/ docstrings quote those measurements.
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

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import npmobilenet  # noqa: E402
from npmobilenet import config  # noqa: E402
from npmobilenet.graph import lower  # noqa: E402
from npmobilenet.inference.tiling import pointwise_tiles  # noqa: E402
from npmobilenet.ops import conv, depthwise, pointwise  # noqa: E402
from npmobilenet.ops.blas import gemm_address, single_threaded_blas  # noqa: E402
from npmobilenet.ops.epilogue import IDENTITY, NO_ROWS, RELU6  # noqa: E402
from npmobilenet.ops.geometry import output_size  # noqa: E402
from npmobilenet.ops.pointwise import pointwise_conv2d  # noqa: E402

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


def techniques(kind, n, key, rng, threads, float64):
    """{name: call} for one layer shape, and its MACs."""
    h, w, c, wshape, (sh, sw), (pt, pb, pl, pr) = key
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    weight = (rng.standard_normal(wshape) * 0.1).astype(np.float32)
    cout = wshape[-1]
    bias = rng.standard_normal(cout).astype(np.float32)
    kh, kw = wshape[:2] if kind != "pointwise" else (1, 1)
    ho, wo = output_size(h, kh, sh, pt, pb, 1), output_size(w, kw, sw, pl, pr, 1)
    macs = n * ho * wo * cout * kh * kw * (1 if kind == "depthwise" else c)
    par = threads > 1 and macs >= config.PARALLEL_MIN_MACS
    pick = lambda pair: pair[1] if par else pair[0]  # noqa: E731
    workers = threads if par else 1
    y = np.empty((n, ho, wo, cout), np.float32)
    dtypes = (np.float32, np.float64) if float64 else (np.float32,)
    calls = {}

    def blas_guarded(call):
        def run():
            with single_threaded_blas():     # GEMM called from several threads: OpenBLAS on one
                call()
        return run

    if kind == "depthwise":
        kernel = pick(depthwise.DEPTHWISE_FORWARD)
        pixels = depthwise.tile_pixels(c, sw)
        for dtype in dtypes:
            xd, yd = x.astype(dtype), y.astype(dtype)
            wt = depthwise.tiled_weight(weight.astype(dtype), pixels)
            nb, ns = np.zeros(0, dtype), np.zeros((0, 1, 1), dtype)
            calls[f"tile, training {np.dtype(dtype).name}"] = (
                lambda xd=xd, yd=yd, wt=wt, nb=nb, ns=ns: kernel(xd, wt, kh, kw, nb, IDENTITY, ns, sh, sw, pt, pl, 1, 1, yd))
        wt, bt = depthwise.tiled_weight(weight, pixels), np.tile(bias, pixels)
        ns = np.zeros((0, 1, 1), np.float32)
        calls["tile + bias, relu6 float32"] = lambda: kernel(x, wt, kh, kw, bt, RELU6, ns, sh, sw, pt, pl, 1, 1, y)
    elif kind == "conv":
        kernel = pick(conv.CONV_FORWARD)
        tile = conv.tile_pixels(n * ho * wo, c, kh, kw)
        for dtype in dtypes:
            xd, wd, yd = x.astype(dtype), weight.astype(dtype), y.astype(dtype)
            cols = np.empty(conv.workspace_shape(workers, tile, kh, kw, c), dtype)
            nb, gemm = np.zeros(0, dtype), gemm_address(dtype)
            calls[f"tile, training {np.dtype(dtype).name}"] = blas_guarded(
                lambda xd=xd, wd=wd, yd=yd, cols=cols, nb=nb, gemm=gemm:
                kernel(xd, wd, nb, IDENTITY, sh, sw, pt, pl, 1, 1, cols, tile, gemm, yd))
        cols = np.empty(conv.workspace_shape(workers, tile, kh, kw, c), np.float32)
        calls["tile + bias, relu6 float32"] = blas_guarded(
            lambda: kernel(x, weight, bias, RELU6, sh, sw, pt, pl, 1, 1, cols, tile, gemm_address(np.float32), y))
        for dtype in dtypes:
            xd, wd = x.astype(dtype), weight.astype(dtype).reshape(-1, cout)
            calls[f"im2col + np.matmul {np.dtype(dtype).name}"] = (
                lambda xd=xd, wd=wd: np.matmul(conv._columns(xd, kh, kw, ho, wo, (sh, sw), (pt, pb, pl, pr), (1, 1)), wd))
    else:
        w2 = weight.reshape(c, cout)
        for dtype in dtypes:
            xd, wd = x.astype(dtype), w2.astype(dtype)
            calls[f"np.matmul (training) {np.dtype(dtype).name}"] = lambda xd=xd, wd=wd: pointwise_conv2d(xd, wd)
        kernel = pick(pointwise.POINTWISE_FORWARD)
        rows = n * h * w
        tile_rows, tile_cols = pointwise_tiles(rows, c, cout)
        x2, y2, address = x.reshape(rows, c), y.reshape(rows, cout), gemm_address(np.float32)
        calls["tile + bias, relu6 float32"] = blas_guarded(
            lambda: kernel(x2, w2, bias, RELU6, NO_ROWS, NO_ROWS, h * w, tile_rows, tile_cols, address, y2))
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
            kernel = "1x1" if len(wshape) == 2 else f"{wshape[0]}x{wshape[1]}"
            label = f"{n}x{h}x{w}x{c} k{kernel}->{wshape[-1]} s{stride[0]} p{pads}"
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
