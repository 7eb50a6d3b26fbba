"""int8 against fused float32 latency at 224x224: the integer loops, the exact float32 paths, float.

    python benchmarks/int8_latency.py --threads 1,2 --repeat 15

For each architecture: a random-weight model, quantized per channel on a few random images (the
latency does not depend on the weights), timed at batch 1 three ways, interleaved call by call so
that machine noise falls on all three alike: int8 with every layer on the integer loops
(`EXACT_MIN_MACS` set out of reach), int8 as shipped (layers of at least `EXACT_MIN_MACS` on the
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
    from npmobilenet.compression import quantize as quantize_module

    config.set_num_threads(threads)
    model = npmobilenet.build(arch, seed=seed).eval()
    images = np.random.default_rng(seed).uniform(-1, 1, (4, 224, 224, 3)).astype(np.float32)
    qmodel = quantize(model, images)
    fused = model.fuse(threads=threads)
    x = images[:1]
    shipped = quantize_module.EXACT_MIN_MACS
    xq = qmodel.quantize_input(x)

    def integer():
        quantize_module.EXACT_MIN_MACS = 1 << 62
        try:
            return qmodel.run(xq)
        finally:
            quantize_module.EXACT_MIN_MACS = shipped

    if not np.array_equal(integer(), qmodel.run(xq)):
        raise AssertionError(f"{arch}: the exact float32 paths changed the int8 result")
    engines = {"int8, integer loops": integer, "int8, exact float32 paths": lambda: qmodel.run(xq),
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
    print("| model | threads | int8, integer loops ms (vs float) | int8, exact float32 paths ms (vs float) "
          "| fused float32 ms |")
    print("|---|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        for arch in args.archs:
            r = measure(arch, threads, args.repeat)
            fl = r["fused float32"]
            print(f"| {arch} | {threads} | {r['int8, integer loops']:.2f} ({r['int8, integer loops'] / fl:.2f}x) | "
                  f"{r['int8, exact float32 paths']:.2f} ({r['int8, exact float32 paths'] / fl:.2f}x) | {fl:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
