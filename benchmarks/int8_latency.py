"""int8 against fused float32 latency at 224x224: integer-only, on the float kernels, and float.

    python benchmarks/int8_latency.py --threads 1,2 --repeat 15

For each architecture: a random-weight model, quantized per channel on a few random images (the
latency does not depend on the weights), timed at batch 1 three ways, interleaved call by call so
that machine noise falls on all three alike: int8 integer-only (the default), int8 with
`integer_only = False` (layers of at least `EXACT_MIN_MACS` compute their integer sums on the
exact float32 paths of `compression/qkernels.py`), and the fused float model. Medians in ms, and
each int8 variant's ratio to float (above 1: slower than float). Checks first that both int8
variants give the same int8 logits.
"""
import argparse
import time

import numpy as np


def measure(arch, threads, repeat, seed=0):
    import npmobilenet
    from npmobilenet import config, quantize

    config.set_num_threads(threads)
    model = npmobilenet.build(arch, seed=seed).eval()
    images = np.random.default_rng(seed).uniform(-1, 1, (4, 224, 224, 3)).astype(np.float32)
    qmodel = quantize(model, images)
    fused = model.fuse(threads=threads)
    x = images[:1]
    xq = qmodel.quantize_input(x)

    def run(integer_only):
        qmodel.integer_only = integer_only
        return qmodel.run(xq)

    if not np.array_equal(run(True), run(False)):
        raise AssertionError(f"{arch}: the exact float32 paths changed the int8 result")
    engines = {"int8, integer-only": lambda: run(True), "int8, float kernels": lambda: run(False),
               "fused float32": lambda: fused(x)}
    times = {name: [] for name in engines}
    for fn in engines.values():       # warm-up (compilation, plans)
        fn()
    for _ in range(repeat):
        for name, fn in engines.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) * 1e3 for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", default=["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    print("| model | threads | int8 integer-only ms (vs float) | int8 on float kernels ms (vs float) "
          "| fused float32 ms |")
    print("|---|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        for arch in args.archs:
            r = measure(arch, threads, args.repeat)
            fl = r["fused float32"]
            a, b = r["int8, integer-only"], r["int8, float kernels"]
            print(f"| {arch} | {threads} | {a:.2f} ({a / fl:.2f}x) | {b:.2f} ({b / fl:.2f}x) | {fl:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
