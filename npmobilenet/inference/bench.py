"""Inference latency and throughput, beside PyTorch and ONNX Runtime (the `npmobilenet bench` command).

For each architecture and batch size it times `model.fuse()` (random weights, float32), and,
where they are installed, torchvision's model of the same architecture (timm's for V4) in PyTorch eager mode
(NCHW and channels-last) and the same npmobilenet model exported to ONNX
(`npmobilenet.io.onnx_export`) in ONNX Runtime: all in this process, with the same thread count
(`torch.set_num_threads`, ONNX Runtime's `intra_op_num_threads`). Engines are timed in blocks
of about three calls (after a pause and warm-up calls), in rounds, so that a change of load on a
shared machine reaches all of them alike (see `blocked_times`); the figure is the median. GMAC/s is the analytic
multiply-accumulate count of the architecture (`npmobilenet.analysis.summary`) over the time.
The ratio column is npmobilenet's time over the peer's (below 1: npmobilenet is faster), and in
brackets the lowest and highest of that ratio over the rounds (each round's medians): how far the
machine's changes of speed move it.

`--per-layer` times each fused layer on its own, beside its MACs and the bytes it must move
(inputs and weights read, outputs written), so compute-bound and memory-bound layers show.
`--background-load` runs a spinning process (one core busy) during the measurements.
`--cold-start` times the first call in fresh processes with an empty, then a warm Numba cache.
"""
import contextlib
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from npmobilenet.extras import available

# the PyTorch peers: torchvision's models (it has no V1), and timm's for V4 (torchvision has none)
PEER_ARCHS = {"mobilenet_v2": "mobilenet_v2", "mobilenet_v3_large": "mobilenet_v3_large",
              "mobilenet_v3_small": "mobilenet_v3_small"}
TIMM_PEER_ARCHS = {"mobilenet_v4_conv_small": "mobilenetv4_conv_small", "mobilenet_v4_conv_medium": "mobilenetv4_conv_medium",
                   "mobilenet_v4_conv_large": "mobilenetv4_conv_large"}
# the applications: torchvision's models (random weights), timed up to what the exported ONNX
# graph computes (LR-ASPP: the logits; SSDLite: backbone and heads, without the transform and
# the post-processing)
APPLICATION_PEERS = {"lraspp_mobilenet_v3_large": ("segmentation", "lraspp_mobilenet_v3_large"),
                     "ssdlite320_mobilenet_v3_large": ("detection", "ssdlite320_mobilenet_v3_large")}


def default_resolution(arch):
    """The input size `arch` is benchmarked at by default: 224, torchvision's 520 for LR-ASPP and
    320 for SSDLite320."""
    from npmobilenet.applications import DEFAULT_RESOLUTION

    return DEFAULT_RESOLUTION.get(arch, 224)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def background_load(enabled=True):
    """A child process spinning on one core for the duration (killed by its pid afterwards)."""
    if not enabled:
        yield None
        return
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # let it get scheduled
        yield child
    finally:
        child.kill()
        child.wait()


def default_rounds(repeat):
    """Rounds of `blocked_times` for `repeat` timed calls per engine: blocks of about three calls
    (at least three rounds, at most one a call), so that a slow stretch of a shared machine, which
    can be shorter than a block of ten calls, falls on every engine alike (the README has runs of
    `bench` both ways)."""
    return max(1, min(repeat, max(3, repeat // 3)))


def round_counts(repeat, rounds=None):
    """Timed calls per engine in each round of `blocked_times` (`default_rounds` where None)."""
    rounds = default_rounds(repeat) if rounds is None else rounds
    return [repeat // rounds + (1 if r < repeat % rounds else 0) for r in range(rounds)]


def round_ratios(base, other, repeat, rounds=None):
    """Per round of `blocked_times`, the median of `base`'s times over the median of `other`'s
    (the two engines' lists as it returns them): the spread of a ratio over the rounds, which a
    shared machine's changes of speed widen."""
    ratios, start = [], 0
    for count in round_counts(repeat, rounds):
        ratios.append(float(np.median(base[start:start + count]) / np.median(other[start:start + count])))
        start += count
    return ratios


def timing_rows(engines, times, macs, batch, repeat):
    """One row per engine of `blocked_times`' result: its median (ms, per image, images/s,
    GMAC/s), its fastest call, and `ratio`, the first engine's median time over its own, with
    `ratio_low`, `ratio_high`: the lowest and highest of that ratio over the rounds (`round_ratios`)."""
    base_name = engines[0][0]
    base = float(np.median(times[base_name]))
    rows = []
    for name, _ in engines:
        median = float(np.median(times[name]))
        per_round = round_ratios(times[base_name], times[name], repeat)
        rows.append({"engine": name, "ms": median * 1e3, "ms_per_image": median * 1e3 / batch,
                     "images_per_s": batch / median, "gmacs": macs / median / 1e9, "ratio": base / median,
                     "ratio_low": min(per_round), "ratio_high": max(per_round), "ratio_rounds": per_round,
                     "min_ms": float(np.min(times[name])) * 1e3})
    return rows


def blocked_times(engines, repeat, rounds=None, warmup=2, pause=0.25):
    """Time each `(name, fn)` of `engines` `repeat` times in all. The runs are split into `rounds`
    rounds (`default_rounds` where None); in each round every engine in turn gets a pause,
    `warmup` untimed calls and its share of timed calls. Blocks (not one call of each in turn)
    because an engine's idle thread pool keeps spinning for a while after its last call
    (PyTorch's OpenMP, ONNX Runtime's pool) and would slow whichever engine ran next; rounds, so
    that a change of load on a shared machine reaches every engine alike. Returns {name: [seconds, ...]}."""
    times = {name: [] for name, _ in engines}
    for count in round_counts(repeat, rounds):
        for name, fn in engines:
            time.sleep(pause)
            for _ in range(warmup):
                fn()
            for _ in range(count):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def analytic_macs(arch, resolution, batch=1):
    """MACs of `arch` (width 1.0, 1000 classes) for one batch, by the analysis formulas."""
    import npmobilenet
    from npmobilenet.analysis.summary import summarize

    return summarize(npmobilenet.build(arch), resolution, batch).macs


def _best_seconds(run, seconds):
    """The fastest of calls of `run` repeated for about `seconds` (after one untimed call)."""
    run()
    best, spent = np.inf, 0.0
    while spent < seconds:
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best


def machine_peaks(threads=1, seconds=0.3):
    """The roofline: measured matrix-product GMAC/s (a 1024^3 product on `threads` threads, in
    128-row tiles) and copy bandwidth GB/s (bytes read + written, a 64 MB array, numpy, one thread).

    `sgemm_gmacs`: OpenBLAS's SGEMM called in-kernel; `matmul_gmacs`: the product fused inference's
    pointwise layers run (`ops.register_tile` where `register_tile.enabled()`, else the same SGEMM), named by `matmul`; `compute_gmacs`, the roofline's ceiling, the faster of the two."""
    from npmobilenet.inference import kernels
    from npmobilenet.inference.threads import numba_threads
    from npmobilenet.ops import pointwise, register_tile
    from npmobilenet.ops.blas import sgemm_address, single_threaded_blas
    from npmobilenet.ops.epilogue import IDENTITY, NO_ROWS

    n = 1024
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    c = np.empty_like(a)
    bias = np.zeros(n, np.float32)
    tiles = (n, 128, n)        # rows per image (unused: no gate), rows and columns per tile
    with single_threaded_blas(), numba_threads(threads):
        sgemm = n ** 3 / _best_seconds(lambda: kernels.POINTWISE[1](
            a, a, bias, IDENTITY, NO_ROWS, NO_ROWS, *tiles, sgemm_address(), c), seconds) / 1e9
        matmul, name = sgemm, "OpenBLAS SGEMM"
        if register_tile.enabled():
            packed = register_tile.packed_weight(a).reshape(-1)
            matmul = n ** 3 / _best_seconds(lambda: pointwise.POINTWISE_PACKED_FORWARD[1](
                a, packed, bias, IDENTITY, NO_ROWS, NO_ROWS, *tiles, c, register_tile.span_address()), seconds) / 1e9
            name = "register tile"
    src = np.ones(16 * 1024 * 1024, np.float32)    # 64 MB: twice the last-level cache
    dst = np.zeros_like(src)                        # touched: no page faults in the timing
    bandwidth = 2 * src.nbytes / _best_seconds(lambda: np.copyto(dst, src), seconds) / 1e9
    return {"sgemm_gmacs": sgemm, "matmul_gmacs": matmul, "matmul": name, "compute_gmacs": max(sgemm, matmul),
            "bandwidth_gbs": bandwidth, "threads": threads}


def compute_ceiling(peaks):
    """The roofline's compute ceiling in GMAC/s (`compute_gmacs`; SGEMM's in results written
    before the register tile)."""
    return peaks.get("compute_gmacs", peaks["sgemm_gmacs"])


# ---------------------------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------------------------
def _npmobilenet_engine(model, x, threads):
    fused = model.fuse(threads=threads)
    return fused, (lambda: fused(x))


def _torch_model(arch):
    """The PyTorch peer of `arch` (random weights), or None where its library is not installed."""
    if arch in APPLICATION_PEERS and available("torch") and available("torchvision"):
        import torchvision

        package, name = APPLICATION_PEERS[arch]
        return getattr(getattr(torchvision.models, package), name)(weights=None, weights_backbone=None)
    if arch in PEER_ARCHS and available("torch") and available("torchvision"):
        import torchvision

        return getattr(torchvision.models, PEER_ARCHS[arch])(weights=None)
    if arch in TIMM_PEER_ARCHS and available("torch") and available("timm"):
        import timm

        return timm.create_model(TIMM_PEER_ARCHS[arch], pretrained=False)
    return None


def _torch_engines(arch, x_nhwc, threads):
    """[(name, fn)] for torchvision's (timm's for V4) model in eager NCHW and channels-last, or []
    without torch."""
    if _torch_model(arch) is None:
        return []
    import torch

    torch.set_num_threads(threads)
    model = _torch_model(arch).eval()
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    model_cl = _torch_model(arch).eval().to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def forward(net, images):
        if APPLICATION_PEERS.get(arch, ("",))[0] == "detection":      # SSD: backbone and heads only
            return net.head(list(net.backbone(images).values()))
        return net(images)

    def eager():
        with torch.inference_mode():
            forward(model, x)

    def channels_last():
        with torch.inference_mode():
            forward(model_cl, x_cl)

    return [("torch eager", eager), ("torch channels-last", channels_last)]


def _onnxruntime_engine(model, x_nhwc, threads, workdir):
    """[(name, fn)] for ONNX Runtime on the exported model, and its outputs (NCHW maps where the
    graph gives maps), or ([], None)."""
    if not (available("onnx") and available("onnxruntime")):
        return [], None
    import onnxruntime as ort

    from npmobilenet.io.onnx_export import export_onnx

    path = os.path.join(workdir, f"{model.config['arch']}.onnx")
    export_onnx(model, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"input": np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))}
    outputs = session.run(None, feed)
    return [("onnxruntime", lambda: session.run(None, feed))], outputs


def _relative_difference(model, ours, theirs):
    """The largest difference between our outputs and ONNX Runtime's (NCHW), relative to the
    largest of theirs: a classifier's logits, LR-ASPP's map, SSDLite's concatenated heads."""
    if isinstance(ours, tuple):                       # SSDLite: its head maps, concatenated outside the graph
        theirs = model.head_outputs([m.transpose(0, 2, 3, 1) for m in theirs])
    else:
        ours, theirs = (ours,), (theirs[0] if theirs[0].ndim == 2 else theirs[0].transpose(0, 2, 3, 1),)
    return max(float(np.abs(a - b).max() / max(1e-12, np.abs(b).max())) for a, b in zip(ours, theirs))


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------
def _int8_engine(model, x, resolution, threads, seed):
    """("npmobilenet int8", fn): the model quantized per channel (calibrated on 4 random images of
    its resolution: latency does not depend on the ranges), integer-only, on `threads` threads."""
    from npmobilenet.compression import quantize
    from npmobilenet.inference.threads import numba_threads

    images = np.random.default_rng(seed + 1).standard_normal((4, resolution, resolution, 3)).astype(np.float32)
    qmodel = quantize(model, images)

    def run():
        with numba_threads(threads):
            return qmodel(x)

    return "npmobilenet int8", run


def bench_model(arch, batch, resolution, threads, repeat, peers=True, workdir=None, seed=0, int8=False):
    """Time one architecture at one batch size. Returns a dict of results (see `format_results`).
    `int8`: also the model quantized to int8 (integer-only), its ratio float/int8 (above 1: faster)."""
    import npmobilenet

    model = npmobilenet.build(arch, seed=seed).eval()
    x = np.random.default_rng(seed).standard_normal((batch, resolution, resolution, 3)).astype(np.float32)
    fused, run_fused = _npmobilenet_engine(model, x, threads)
    engines = [("npmobilenet", run_fused)]
    if int8:
        engines.append(_int8_engine(model, x, resolution, threads, seed))
    check = None
    if peers:
        engines += _torch_engines(arch, x, threads)
        ort_engines, ort_outputs = _onnxruntime_engine(model, x, threads, workdir)
        engines += ort_engines
        if ort_outputs is not None:
            check = _relative_difference(model, fused(x), ort_outputs)
    times = blocked_times(engines, repeat)
    macs = analytic_macs(arch, resolution, batch)
    rows = timing_rows(engines, times, macs, batch, repeat)
    return {"arch": arch, "batch": batch, "resolution": resolution, "threads": threads, "repeat": repeat,
            "macs": macs, "rows": rows, "onnx_relative_difference": check,
            "planned_peak_bytes": fused.activation_bytes}


def bench_checkpoint(path, batch, resolution, threads, repeat, seed=0):
    """Time the model in a checkpoint (float, pruned, factorised or int8) at one batch size.

    An int8 model is timed beside the fused float model of the same architecture (random weights:
    latency does not depend on their values), the comparison the compression report needs. A
    model whose graph has an op the fused kernels do not compute runs unfused, in eval mode.
    """
    import npmobilenet
    from npmobilenet.analysis.summary import summarize
    from npmobilenet.io.checkpoint import load

    model = load(path)
    x = np.random.default_rng(seed).standard_normal((batch, resolution, resolution, 3)).astype(np.float32)
    name = os.path.basename(path)
    if hasattr(model, "modules"):       # a float MobileNet
        macs = summarize(model, resolution, batch).macs
        try:
            _, run = _npmobilenet_engine(model.eval(), x, threads)
            engines = [("npmobilenet", run)]
        except NotImplementedError:
            engines = [("npmobilenet (unfused)", lambda: model(x))]
    else:                               # an int8 QuantizedModel
        macs = model.macs(x.shape)
        float_twin = npmobilenet.build(**{k: v for k, v in model.config.items() if k != "factorized"}).eval()
        _, run_float = _npmobilenet_engine(float_twin, x, threads)
        engines = [("npmobilenet int8", lambda: model(x)), ("npmobilenet fused fp32", run_float)]
    times = blocked_times(engines, repeat)
    rows = timing_rows(engines, times, macs, batch, repeat)
    return {"arch": name, "batch": batch, "resolution": resolution, "threads": threads, "repeat": repeat,
            "macs": macs, "rows": rows, "onnx_relative_difference": None, "planned_peak_bytes": None}


def per_layer_profile(arch, batch, resolution, threads, repeat, seed=0):
    """Median time of each fused layer run alone (its ops of the program, tiled across `threads`
    threads as in the whole network), with its MACs and bytes moved, for the plan the model
    runs: the whole batch, or one chunk of it when the batch runs in chunks (then `images` <
    `batch`, each chunk runs on one thread, and the figures are per chunk; a classifier, which
    then runs once over the whole batch on every thread, counts its time times images / batch)."""
    import npmobilenet
    from npmobilenet.ops.blas import single_threaded_blas
    from npmobilenet.inference.threads import numba_threads
    from npmobilenet.inference.plan import MemoryPlan
    from npmobilenet.inference.program import TILES

    model = npmobilenet.build(arch, seed=seed).eval()
    fused = model.fuse(threads=threads)
    fused = getattr(fused, "network", fused)       # SSDLite: the network its heads' maps come from
    images = fused.chunk_images(batch, resolution, resolution)
    x = np.random.default_rng(seed).standard_normal((images, resolution, resolution, 3)).astype(np.float32)
    # (plan, threads it runs on, share of it per chunk, its layers' costs) for each plan timed
    if images < batch:
        plan = fused._worker_plan(0, x.shape)       # what each worker runs
        np.copyto(plan.input, x)
        parts = [(plan, 1, 1.0, MemoryPlan.costs(fused.chunk_layers, x.shape, fused.chunk_outputs))]
        if fused.classifier_layers:                 # the classifier over the batch (weights read once), per chunk its share
            features = np.random.default_rng(seed).standard_normal((batch, fused.classifier_layers[0].in_features))
            classifier = fused.classifier_plan(features.shape)
            np.copyto(classifier.input, features)
            parts.append((classifier, threads, images / batch, MemoryPlan.costs(
                fused.classifier_layers, features.shape, fused.outputs, fused.chunk_outputs[0])))
    else:
        fused(x)
        parts = [(fused.plan(x.shape), threads, 1.0, fused.layer_costs(resolution, images))]
    layers = []
    with single_threaded_blas(), numba_threads(threads):
        for plan, run_threads, share, costs in parts:
            ops = [plan.layer_ops[name] for name, *_ in costs]
            times = np.zeros((len(ops), repeat))
            plan.program.run(run_threads)      # warm-up
            for r in range(repeat):
                for i, layer_ops in enumerate(ops):
                    start = time.perf_counter()
                    plan.program.run(run_threads, layer_ops)
                    times[i, r] = time.perf_counter() - start
            tiles = plan.program.ops[:, TILES]
            for (name, description, macs, nbytes), seconds, (k0, k1) in zip(costs, np.median(times, axis=1), ops):
                seconds, macs, nbytes = seconds * share, macs * share, nbytes * share
                layers.append({"name": name, "kind": description, "macs": macs, "bytes": nbytes, "ms": seconds * 1e3,
                               "gmacs": macs / seconds / 1e9, "gbs": nbytes / seconds / 1e9,
                               "intensity": macs / nbytes, "tiles": int(tiles[k0:k1].max())})
    total = sum(layer["ms"] for layer in layers) / 1e3
    for layer in layers:
        layer["share"] = layer["ms"] / 1e3 / total
    return {"arch": arch, "batch": batch, "images": images, "resolution": resolution, "threads": threads,
            "layers": layers, "total_ms": total * 1e3}


_COLD_START_SCRIPT = r"""
import resource, time, sys
start = time.perf_counter()
import numpy as np, npmobilenet
model = npmobilenet.build(sys.argv[1]).eval()
fused = model.fuse()
x = np.zeros((1, 224, 224, 3), np.float32)
t0 = time.perf_counter()
fused(x)
t1 = time.perf_counter()
fused(x)
t2 = time.perf_counter()
helper = resource.getrusage(resource.RUSAGE_CHILDREN)     # the compile helper (ops/compile_ahead.py)
print(t1 - t0, t2 - t1, t1 - start, time.process_time() + helper.ru_utime + helper.ru_stime)
"""


def cold_start(arch="mobilenet_v2"):
    """First-call seconds in fresh processes: an empty Numba cache, then the cache it left.

    Returns {"cold": (first call, second call, import..first call end, the CPU seconds of the
    process and its compile helper at the end), "warm": (...)}: on a busy machine the CPU seconds
    measure the compilation better than the wall time.
    """
    results = {}
    with tempfile.TemporaryDirectory(prefix="npmobilenet-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", _COLD_START_SCRIPT, arch], env=env, capture_output=True,
                                 text=True, check=True)
            results[label] = tuple(float(v) for v in out.stdout.split()[-4:])
    return results


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def format_results(results):
    lines = []
    header = (f"{'model':29s} {'batch':>5s} {'engine':22s} {'ms':>9s} {'ms/img':>8s} {'img/s':>8s} {'GMAC/s':>7s} "
              f"{'npm/peer (rounds)':>19s}")
    lines.append(header)
    lines.append("-" * len(header))
    for result in results:
        for row in result["rows"]:
            ratio = "" if row is result["rows"][0] else f"{row['ratio']:.2f}"
            if ratio and "ratio_low" in row:
                ratio += f" ({row['ratio_low']:.2f}-{row['ratio_high']:.2f})"
            lines.append(f"{result['arch']:29s} {result['batch']:5d} {row['engine']:22s} {row['ms']:9.2f} "
                         f"{row['ms_per_image']:8.2f} {row['images_per_s']:8.1f} {row['gmacs']:7.1f} {ratio:>19s}")
        if result.get("onnx_relative_difference") is not None:
            lines.append(f"{'':36s}(npmobilenet vs ONNX Runtime outputs: max relative difference "
                         f"{result['onnx_relative_difference']:.1e}; planned activation memory "
                         f"{result['planned_peak_bytes'] / 2**20:.1f} MiB)")
    return "\n".join(lines)


def format_profile(profile, peaks=None):
    chunk = (f" (per chunk of {profile['images']} images, each chunk run by one thread)"
             if profile["images"] < profile["batch"] else "")
    lines = [f"{profile['arch']} batch {profile['batch']} at {profile['resolution']}, {profile['threads']} thread(s){chunk}: "
             f"sum of layers {profile['total_ms']:.2f} ms"]
    if peaks:
        ridge = compute_ceiling(peaks) / peaks["bandwidth_gbs"]
        product = (f", {peaks['matmul']} {peaks['matmul_gmacs']:.0f} GMAC/s"
                   if peaks.get("matmul", "OpenBLAS SGEMM") != "OpenBLAS SGEMM" else "")
        lines.append(f"machine: SGEMM {peaks['sgemm_gmacs']:.0f} GMAC/s{product} on {peaks['threads']} thread(s), "
                     f"copy bandwidth {peaks['bandwidth_gbs']:.0f} GB/s; "
                     f"ridge point {ridge:.1f} MAC/byte (below it a layer is memory-bound)")
    header = (f"{'layer':22s} {'kind':34s} {'MMAC':>7s} {'MB':>6s} {'MAC/B':>6s} {'ms':>7s} {'share':>6s} "
              f"{'GMAC/s':>7s} {'GB/s':>6s} {'tiles':>5s}")
    lines += [header, "-" * len(header)]
    for layer in profile["layers"]:
        lines.append(f"{layer['name']:22s} {layer['kind'][:34]:34s} {layer['macs'] / 1e6:7.2f} {layer['bytes'] / 1e6:6.2f} "
                     f"{layer['intensity']:6.1f} {layer['ms']:7.3f} {layer['share'] * 100:5.1f}% {layer['gmacs']:7.1f} "
                     f"{layer['gbs']:6.1f} {layer['tiles']:5d}")
    kinds = {}
    for layer in profile["layers"]:
        kind = layer["kind"].split(",")[0].split(" (")[0].split(" +")[0]
        kind = "depthwise" if kind.startswith("depthwise") else kind
        kind = "expansion + depthwise" if " + depthwise" in layer["kind"] else kind     # `FusedExpansion`
        k = kinds.setdefault(kind, [0.0, 0, 0])
        k[0] += layer["ms"]
        k[1] += layer["macs"]
        k[2] += layer["bytes"]
    lines.append("by kind" + (" (roofline: the share of what the kind's MAC/byte allows, min(product peak, "
                              "MAC/byte x bandwidth); without MACs, of the bandwidth)" if peaks else "") + ":")
    for kind, (ms, macs, nbytes) in kinds.items():
        roofline = ""
        if peaks and ms:
            fraction = roofline_fraction(macs, nbytes, ms / 1e3, peaks)
            roofline = f"  roofline {fraction * 100:5.1f}%"
        lines.append(f"  {kind:18s} {ms:7.2f} ms ({ms / profile['total_ms'] * 100:4.1f}%) {macs / 1e6:8.1f} MMAC "
                     f"{macs / ms / 1e6 if ms else 0:6.1f} GMAC/s {nbytes / ms / 1e6 if ms else 0:6.1f} GB/s{roofline}")
    return "\n".join(lines)


def roofline_fraction(macs, nbytes, seconds, peaks):
    """Achieved speed over the roofline's bound for work of `macs` MACs moving `nbytes` bytes:
    min(product peak (`compute_ceiling`), MAC/byte x bandwidth) in MAC/s; for work without MACs
    (pooling, resizing), bytes per second over the bandwidth."""
    bandwidth = peaks["bandwidth_gbs"] * 1e9
    if macs == 0:
        return nbytes / seconds / bandwidth
    attainable = min(compute_ceiling(peaks) * 1e9, macs / nbytes * bandwidth)
    return macs / seconds / attainable
