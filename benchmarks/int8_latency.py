"""int8 against fused float32 latency at 224x224: integer-only, on the float kernels, and float.

    python benchmarks/int8_latency.py --threads 1,2 --batch 1,32 --repeat 15
    python benchmarks/int8_latency.py --tiling [ARCH ...]

For each architecture: a random-weight model, quantized per channel on a few random images (the
latency does not depend on the weights), timed at each batch size three ways, in rounds of blocks
of about three calls (each block opens with a pause of 0.25 s and two untimed calls, so that the previous
engine's idle threads, spinning or asleep, do not fall on the next one's timings, as
`npmobilenet bench` does): int8 integer-only (the default), int8 with
`integer_only = False` (without VNNI, layers of at least `EXACT_MIN_MACS` compute their integer
sums on the exact float32 paths of `compression/qexact.py`; with it, the same kernels as
integer-only), and the fused float model. Medians in ms, and
each int8 variant's ratio to float (above 1: slower than float). Checks first that both int8
variants give the same int8 logits.

`--scaling` times only the int8 model (integer-only, its op table) on 1 and on 2 threads, in
alternating blocks, and prints the speed-up of the second thread.

`--tiling` times, on one thread, the int8 table tiled for one thread (what a process configured for
one thread runs) against the same model's table tiled for two (`qprogram._tiling`), three plans of
each (their arenas lie apart: a plan's placement moved its time by a few percent), in alternating
blocks.
`--onnxruntime` also times ONNX Runtime, same threads, same loop, on the float model exported by
`export_onnx` and on the int8 model exported in QDQ form (which ONNX Runtime runs on its own
integer kernels, QLinearConv and QGemm): the peer's view of int8 against float on this machine.
"""
import argparse

import numpy as np

from npmobilenet.inference.bench import blocked_times


def _onnxruntime_engines(model, qmodel, x, threads, workdir):
    import os

    import onnxruntime as ort

    from npmobilenet.io.onnx_export import export_onnx

    engines = {}
    for name, m in (("onnxruntime float32", model), ("onnxruntime int8 (QDQ)", qmodel)):
        path = export_onnx(m, os.path.join(workdir, name.split()[1] + ".onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
        engines[name] = (lambda s, f: lambda: s.run(["logits"], f))(session, feed)
    return engines


def measure(arch, threads, repeat, seed=0, onnxruntime=False, batch=1):
    import npmobilenet
    from npmobilenet import config, quantize

    config.set_num_threads(threads)
    model = npmobilenet.build(arch, seed=seed).eval()
    images = np.random.default_rng(seed).uniform(-1, 1, (max(4, batch), 224, 224, 3)).astype(np.float32)
    qmodel = quantize(model, images[:4])
    fused = model.fuse(threads=threads)
    x = images[:batch]
    xq = qmodel.quantize_input(x)

    def run(integer_only):
        qmodel.integer_only = integer_only
        return qmodel.run(xq)

    if not np.array_equal(run(True), run(False)):
        raise AssertionError(f"{arch}: the exact float32 paths changed the int8 result")
    engines = {"int8, integer-only": lambda: run(True), "int8, float kernels": lambda: run(False),
               "fused float32": lambda: fused(x)}
    if onnxruntime:
        import tempfile

        workdir = tempfile.mkdtemp()
        engines.update(_onnxruntime_engines(model, qmodel, x, threads, workdir))
    for fn in engines.values():       # warm-up (compilation, plans)
        fn()
    times = blocked_times(list(engines.items()), repeat)
    return {name: float(np.median(t)) * 1e3 for name, t in times.items()}


def scaling(arch, batch, repeat, rounds=5, seed=0):
    """(1-thread ms, 2-thread ms) of the int8 integer-only model alone, in alternating blocks."""
    import npmobilenet
    from npmobilenet import quantize

    model = npmobilenet.build(arch, seed=seed).eval()
    images = np.random.default_rng(seed).uniform(-1, 1, (max(4, batch), 224, 224, 3)).astype(np.float32)
    qmodel = quantize(model, images[:4])
    xq = qmodel.quantize_input(images[:batch])
    plan = qmodel.plan(xq.shape)
    plan.run(xq, 2)
    times = blocked_times([(threads, lambda threads=threads: plan.run(xq, threads)) for threads in (1, 2)], repeat,
                          rounds=rounds, warmup=1)
    return tuple(float(np.median(times[t])) * 1e3 for t in (1, 2))


def tiling(arch, batch, repeat, plans=3, seed=0):
    """{tiling: [ms of each plan]} on one thread: tables tiled for 1 and for 2 workers."""
    import npmobilenet
    from npmobilenet import config, quantize
    from npmobilenet.compression.qplan import Int8Plan

    model = npmobilenet.build(arch, seed=seed).eval()
    images = np.random.default_rng(seed).uniform(-1, 1, (max(4, batch), 224, 224, 3)).astype(np.float32)
    qmodel = quantize(model, images[:4])
    xq = qmodel.quantize_input(images[:batch])
    threads, built = config.get_num_threads(), []
    try:
        for i in range(plans):
            for workers in (1, 2):
                config.set_num_threads(workers)       # the plan's table is tiled for the configured count
                built.append((f"{workers} {i}", Int8Plan(qmodel, xq.shape)))
    finally:
        config.set_num_threads(threads)
    results = {plan.run(xq, 1).tobytes() for _, plan in built}
    if len(results) != 1:
        raise AssertionError(f"{arch}: the tilings gave different int8 logits")
    times = blocked_times([(name, lambda plan=plan: plan.run(xq, 1)) for name, plan in built], repeat * 2 * plans,
                          rounds=8, warmup=1)
    return {workers: [float(np.median(times[f"{workers} {i}"])) * 1e3 for i in range(plans)] for workers in (1, 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", default=["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--onnxruntime", action="store_true", help="also ONNX Runtime on the float and QDQ exports")
    parser.add_argument("--tiling", action="store_true",
                        help="only the table tiled for one thread against the one tiled for two, on one thread")
    parser.add_argument("--scaling", action="store_true",
                        help="only the int8 model alone on 1 and 2 threads (its op table), in alternating blocks")
    args = parser.parse_args(argv)
    if args.tiling:
        print("| model | batch | tiled for 1 thread, ms per plan | tiled for 2, ms per plan | ratio of medians |")
        print("|---|---|---|---|---|")
        for batch in (int(b) for b in args.batch.split(",")):
            for arch in args.archs:
                r = tiling(arch, batch, args.repeat)
                one, two = (" ".join(f"{t:.2f}" for t in r[w]) for w in (1, 2))
                print(f"| {arch} | {batch} | {one} | {two} | {np.median(r[1]) / np.median(r[2]):.2f} |", flush=True)
        return
    if args.scaling:
        print("| model | batch | 1 thread ms | 2 threads ms | speed-up |\n|---|---|---|---|---|")
        for batch in (int(b) for b in args.batch.split(",")):
            for arch in args.archs:
                one, two = scaling(arch, batch, max(args.repeat, 50))
                print(f"| {arch} | {batch} | {one:.2f} | {two:.2f} | {one / two:.2f}x |", flush=True)
        return
    header = "| model | batch | threads | int8 integer-only ms (vs float) | int8 on float kernels ms (vs float) | fused float32 ms |"
    if args.onnxruntime:
        header += " ONNX Runtime float32 ms | ONNX Runtime int8 QDQ ms (vs its float) |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for batch, threads in ((int(b), int(t)) for b in args.batch.split(",") for t in args.threads.split(",")):
        for arch in args.archs:
            r = measure(arch, threads, args.repeat, onnxruntime=args.onnxruntime, batch=batch)
            fl = r["fused float32"]
            a, b = r["int8, integer-only"], r["int8, float kernels"]
            line = f"| {arch} | {batch} | {threads} | {a:.2f} ({a / fl:.2f}x) | {b:.2f} ({b / fl:.2f}x) | {fl:.2f} |"
            if args.onnxruntime:
                of, oq = r["onnxruntime float32"], r["onnxruntime int8 (QDQ)"]
                line += f" {of:.2f} | {oq:.2f} ({oq / of:.2f}x) |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
