"""Time the convolution kernels at the shapes of MobileNetV2's layers (224x224 input).

Every op is first checked against `npmobilenet.ops.reference` at batch 1, then timed: forward and
backward (dx and dw together), the median of repeated calls after a warm-up. GMAC/s comes from
the analytic count (output elements x taps x input channels per group; backward counts twice:
dx and dw). Where PyTorch imports, the same shapes run through torch.nn.functional.conv2d
(groups=C for depthwise) and aten.convolution_backward on the same number of threads, in NCHW
and channels_last; the faster layout is shown. A second table compares a depthwise-separable
pair (3x3 depthwise + pointwise) with the standard 3x3 convolution it replaces, measured against
the analytic ratio 1/Cout + 1/(KH*KW) (MobileNet V1 paper, Eq. (5)).

    python benchmarks/kernels.py --quick                 # under a minute
    python benchmarks/kernels.py --threads 2 --batch 1,32 --markdown
"""
import argparse
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset of layers, few repeats (under a minute)")
    parser.add_argument("--threads", type=int, default=None, help="threads for Numba, BLAS and torch (default: all)")
    parser.add_argument("--batch", default=None, help="comma-separated batch sizes (default 1,32; --quick: 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (median reported)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column even if torch imports")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:
    # BLAS reads its thread count when it loads, so this must precede the NumPy import.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from npmobilenet import config, ops  # noqa: E402
from npmobilenet.models.tables import V2_BLOCKS, V2_HEAD, V2_STEM  # noqa: E402
from npmobilenet.ops import reference  # noqa: E402


# -- the layers of MobileNetV2 at 224x224 -------------------------------------------------------------
def v2_layers():
    """(op, H, W, Cin, Cout, kernel, stride) of every distinct conv in MobileNetV2 (V2 paper, Table 2)."""
    layers = [("conv", 224, 224, 3, V2_STEM, 3, 2)]  # stem: 3x3 conv, stride 2
    size, channels = 112, V2_STEM
    for t, c, n, s in V2_BLOCKS:  # t expansion, c output channels, n repeats, s first stride
        for repeat in range(n):
            stride = s if repeat == 0 else 1
            hidden = channels * t
            if t != 1:
                layers.append(("pointwise", size, size, channels, hidden, 1, 1))  # expand
            layers.append(("depthwise", size, size, hidden, hidden, 3, stride))
            size = (size - 1) // stride + 1
            layers.append(("pointwise", size, size, hidden, c, 1, 1))  # project (linear bottleneck)
            channels = c
    layers.append(("pointwise", size, size, channels, V2_HEAD, 1, 1))  # head
    counts = {}
    for layer in layers:
        counts[layer] = counts.get(layer, 0) + 1
    return counts  # distinct layer -> how many times V2 uses it (dicts keep order)


QUICK = [
    ("conv", 224, 224, 3, 32, 3, 2),
    ("depthwise", 112, 112, 32, 32, 3, 1),
    ("depthwise", 112, 112, 96, 96, 3, 2),
    ("depthwise", 56, 56, 144, 144, 3, 1),
    ("depthwise", 14, 14, 576, 576, 3, 1),
    ("pointwise", 112, 112, 16, 96, 1, 1),
    ("pointwise", 56, 56, 144, 24, 1, 1),
    ("pointwise", 7, 7, 320, 1280, 1, 1),
]

# Depthwise-separable pair vs standard 3x3 conv, same input and output: (H, Cin, Cout, stride),
# MobileNet V1's separable layers (V1 paper, Table 1).
SEPARABLE = [(112, 32, 64, 1), (56, 128, 128, 1), (28, 256, 256, 1), (14, 512, 512, 1), (14, 512, 1024, 2)]
SEPARABLE_QUICK = [(56, 128, 128, 1), (14, 512, 512, 1)]


def pad_for(kernel):
    return kernel // 2


def out_size(size, kernel, stride):
    return (size + 2 * pad_for(kernel) - kernel) // stride + 1


def macs(op, n, h, w, cin, cout, kernel, stride):
    """Analytic cost: output elements x taps x input channels per group."""
    ho, wo = out_size(h, kernel, stride), out_size(w, kernel, stride)
    per_group = 1 if op == "depthwise" else cin
    return n * ho * wo * cout * kernel * kernel * per_group


# -- our kernels ------------------------------------------------------------------------------------
def make_ours(op, n, h, w, cin, cout, kernel, stride, rng):
    x = rng.standard_normal((n, h, w, cin), dtype=np.float32)
    geometry = dict(stride=stride, padding=pad_for(kernel))
    if op == "conv":
        weight = rng.standard_normal((kernel, kernel, cin, cout), dtype=np.float32) * 0.1
        fwd = lambda: ops.conv2d(x, weight, **geometry)  # noqa: E731
        bwd = lambda dy: ops.conv2d_backward(dy, x, weight, **geometry)  # noqa: E731
        ref = (lambda: reference.conv2d(x, weight, **geometry), lambda dy: reference.conv2d_backward(dy, x, weight, **geometry))
    elif op == "depthwise":
        weight = rng.standard_normal((kernel, kernel, cin), dtype=np.float32) * 0.3
        fwd = lambda: ops.depthwise_conv2d(x, weight, **geometry)  # noqa: E731
        bwd = lambda dy: ops.depthwise_conv2d_backward(dy, x, weight, **geometry)  # noqa: E731
        ref = (lambda: reference.depthwise_conv2d(x, weight, **geometry),
               lambda dy: reference.depthwise_conv2d_backward(dy, x, weight, **geometry))
    else:
        weight = rng.standard_normal((cin, cout), dtype=np.float32) * 0.1
        fwd = lambda: ops.pointwise_conv2d(x, weight)  # noqa: E731
        bwd = lambda dy: ops.pointwise_conv2d_backward(dy, x, weight)  # noqa: E731
        ref = (lambda: reference.pointwise_conv2d(x, weight), lambda dy: reference.pointwise_conv2d_backward(dy, x, weight))
    return fwd, bwd, ref


def verify(layer, rng):
    """Our forward and backward at batch 1 against the reference; raise on a mismatch."""
    op, h, w, cin, cout, kernel, stride = layer
    fwd, bwd, (ref_fwd, ref_bwd) = make_ours(op, 1, h, w, cin, cout, kernel, stride, rng)
    y = fwd()
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    for name, got, want in zip(("y", "dx", "dw"), (y,) + tuple(bwd(dy)), (ref_fwd(),) + tuple(ref_bwd(dy))):
        scale = max(1.0, float(np.abs(want).max()))
        err = float(np.abs(got - want).max()) / scale
        if not err < 1e-4:
            raise AssertionError(f"{layer}: {name} differs from the reference (relative max error {err:.2e})")


def timed(call, repeats):
    call()  # warm-up (and compilation, if the cache is cold)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


# -- PyTorch ------------------------------------------------------------------------------------------
def load_torch(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def time_torch(torch, op, n, h, w, cin, cout, kernel, stride, repeats, backward=True):
    """(forward ms, backward ms, layout) for the faster of NCHW and channels_last."""
    groups = cin if op == "depthwise" else 1
    weight = torch.randn(cout, cin // groups, kernel, kernel)
    best = None
    for layout in ("NCHW", "channels_last"):
        x = torch.randn(n, cin, h, w)
        wt = weight
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
            wt = weight.contiguous(memory_format=torch.channels_last)
        pad = pad_for(kernel)
        with torch.no_grad():
            y = torch.nn.functional.conv2d(x, wt, stride=stride, padding=pad, groups=groups)
            dy = torch.randn_like(y)
            forward = timed(lambda: torch.nn.functional.conv2d(x, wt, stride=stride, padding=pad, groups=groups), repeats)
            gradients = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
                dy, x, wt, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], groups, [True, True, False]
            )
            back = timed(gradients, repeats) if backward else 0.0
        if best is None or forward + back < best[0] + best[1]:
            best = (forward, back, layout)
    return best


# -- tables -----------------------------------------------------------------------------------------
def render(headers, rows, markdown):
    cells = [[str(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(wd) for h, wd in zip(headers, widths))]
    lines += ["  ".join(c.rjust(wd) for c, wd in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def describe(op, n, h, w, cin, cout, kernel, stride):
    name = {"conv": f"conv {kernel}x{kernel}", "depthwise": f"dw {kernel}x{kernel}", "pointwise": "pw 1x1"}[op]
    if stride != 1:
        name += f" s{stride}"
    ho, wo = out_size(h, kernel, stride), out_size(w, kernel, stride)
    return name, f"{n}x{h}x{w}x{cin} -> {ho}x{wo}x{cout}"


def main(args):
    threads = args.threads or config.get_num_threads()
    config.set_num_threads(threads)
    batches = [int(b) for b in (args.batch or ("1" if args.quick else "1,32")).split(",")]
    repeats = args.repeats or (3 if args.quick else 10)
    counts = {layer: 1 for layer in QUICK} if args.quick else v2_layers()
    layers = list(counts)
    torch = None if args.no_torch else load_torch(threads)
    rng = np.random.default_rng(0)

    started = time.perf_counter()
    for layer in layers:
        verify(layer, rng)
    print(f"verified {len(layers)} layer shapes against npmobilenet.ops.reference "
          f"({time.perf_counter() - started:.1f} s)")
    print(f"threads: {threads} (Numba, OpenBLAS{', torch' if torch else ''}); float32; median of {repeats} calls"
          + (f"; torch {torch.__version__}" if torch else "; torch not importable: no torch column"))

    headers = ["op", "shape (N x H x W x C)", "MMAC", "fwd ms", "fwd GMAC/s", "bwd ms", "bwd GMAC/s"]
    if torch:
        headers += ["torch fwd ms", "torch bwd ms", "torch layout", "fwd vs torch", "bwd vs torch"]
    rows = []
    for n in batches:
        totals = {}  # op -> [ours fwd, ours bwd, torch fwd, torch bwd], each layer times its count
        for layer in layers:
            op, h, w, cin, cout, kernel, stride = layer
            count = macs(op, n, h, w, cin, cout, kernel, stride)
            fwd, bwd, _ = make_ours(op, n, h, w, cin, cout, kernel, stride, rng)
            dy = rng.standard_normal(fwd().shape, dtype=np.float32)
            forward = timed(fwd, repeats)
            backward = timed(lambda: bwd(dy), repeats)
            name, shape = describe(op, n, h, w, cin, cout, kernel, stride)
            row = [name, shape, f"{count / 1e6:.1f}", f"{forward:.3f}", f"{count / forward / 1e6:.1f}",
                   f"{backward:.3f}", f"{2 * count / backward / 1e6:.1f}"]
            t_forward = t_backward = float("nan")
            if torch:
                t_forward, t_backward, layout = time_torch(torch, op, n, h, w, cin, cout, kernel, stride, repeats)
                row += [f"{t_forward:.3f}", f"{t_backward:.3f}", layout,
                        f"{forward / t_forward:.2f}x", f"{backward / t_backward:.2f}x"]
            rows.append(row)
            total = totals.setdefault(op, [0.0, 0.0, 0.0, 0.0, 0])
            for k, value in enumerate((forward, backward, t_forward, t_backward, count)):
                total[k] += counts[layer] * value
        # sums over the network: each distinct shape times the number of V2 layers with it
        for op, (forward, backward, t_forward, t_backward, count) in totals.items():
            label = "listed" if args.quick else f"all {sum(counts[l] for l in layers if l[0] == op)} V2"
            row = [f"sum: {label} {op}", f"batch {n}", f"{count / 1e6:.1f}", f"{forward:.3f}",
                   f"{count / forward / 1e6:.1f}", f"{backward:.3f}", f"{2 * count / backward / 1e6:.1f}"]
            if torch:
                row += [f"{t_forward:.3f}", f"{t_backward:.3f}", "", f"{forward / t_forward:.2f}x",
                        f"{backward / t_backward:.2f}x"]
            rows.append(row)
    print()
    print(render(headers, rows, args.markdown))

    # Depthwise-separable vs standard 3x3: V1 paper Eq. (5), cost ratio 1/Cout + 1/(KH*KW).
    headers = ["Cin -> Cout at H x W (stride)", "dw+pw ms", "3x3 conv ms", "measured ratio", "analytic ratio"]
    if torch:
        headers += ["torch measured ratio"]
    rows = []
    for n in batches:
        for h, cin, cout, stride in (SEPARABLE_QUICK if args.quick else SEPARABLE):
            if n * h * h * 9 * cin * 4 > 2**30:
                continue  # the standard conv's im2col matrix would pass 1 GiB
            dw_fwd, _, _ = make_ours("depthwise", n, h, h, cin, cin, 3, stride, rng)
            ho = out_size(h, 3, stride)
            pw_fwd, _, _ = make_ours("pointwise", n, ho, ho, cin, cout, 1, 1, rng)
            conv_fwd, _, _ = make_ours("conv", n, h, h, cin, cout, 3, stride, rng)
            separable = timed(dw_fwd, repeats) + timed(pw_fwd, repeats)
            standard = timed(conv_fwd, repeats)
            row = [f"{n}x {cin} -> {cout} at {h}x{h} (s{stride})", f"{separable:.3f}", f"{standard:.3f}",
                   f"{separable / standard:.3f}", f"{1 / cout + 1 / 9:.3f}"]
            if torch:
                t_dw = time_torch(torch, "depthwise", n, h, h, cin, cin, 3, stride, repeats, backward=False)[0]
                t_pw = time_torch(torch, "pointwise", n, ho, ho, cin, cout, 1, 1, repeats, backward=False)[0]
                t_conv = time_torch(torch, "conv", n, h, h, cin, cout, 3, stride, repeats, backward=False)[0]
                row += [f"{(t_dw + t_pw) / t_conv:.3f}"]
            rows.append(row)
    print()
    print(render(headers, rows, args.markdown))
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
