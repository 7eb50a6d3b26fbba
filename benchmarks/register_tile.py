"""The fused model with the AVX-512 register tile against the same model on OpenBLAS's tiles.

    python benchmarks/register_tile.py [--threads 1] [--batch 1] [--rounds 30] [ARCH ...]

Pointwise layers and the gathered-block standard convolutions run `ops/matmul_avx512.py`'s
register tile where the CPU has AVX-512; NPMOBILENET_NO_AVX512=1 keeps OpenBLAS's SGEMM plus the
epilogue pass. Both fused models are built in one process (the variable is read when a model is
fused) and timed in alternating blocks of 3 calls, the order swapped every round; medians per
image, the ratio register tile / OpenBLAS, and the largest difference of their outputs.
"""
import argparse
import os
import time

import numpy as np

DEFAULT = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v4_conv_small"]


def fused(model, register_tile):
    previous = os.environ.get("NPMOBILENET_NO_AVX512")
    os.environ["NPMOBILENET_NO_AVX512"] = "0" if register_tile else "1"
    try:
        return model.fuse()
    finally:
        if previous is None:
            del os.environ["NPMOBILENET_NO_AVX512"]
        else:
            os.environ["NPMOBILENET_NO_AVX512"] = previous


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", nargs="*", default=DEFAULT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)

    import npmobilenet
    from npmobilenet.ops.vector16 import has_avx512

    if not has_avx512():
        raise SystemExit("this CPU has no AVX-512: the fused model uses OpenBLAS's tiles only")
    x = np.random.default_rng(0).standard_normal((args.batch, 224, 224, 3)).astype(np.float32)
    print(f"batch {args.batch}, {args.threads} thread(s), 224x224, ms per image (median of {args.rounds} blocks)")
    print("| model | register tile | OpenBLAS tiles | ratio | max difference |")
    print("|---|---|---|---|---|")
    for arch in args.arch:
        model = npmobilenet.build(arch, seed=0).eval()
        engines = {"register": fused(model, True), "openblas": fused(model, False)}
        times = {name: [] for name in engines}
        outputs = {}
        for name, engine in engines.items():
            engine.set_threads(args.threads, adaptive=False)
            outputs[name] = engine(x)              # compiles and warms up
        for r in range(args.rounds):
            for name in (list(engines) if r % 2 else list(engines)[::-1]):
                start = time.perf_counter()
                for _ in range(3):
                    engines[name](x)
                times[name].append((time.perf_counter() - start) / 3 / args.batch)
        a, b = (float(np.median(times[name])) * 1e3 for name in engines)
        difference = float(np.abs(outputs["register"] - outputs["openblas"]).max())
        print(f"| {arch} | {a:.2f} | {b:.2f} | {a / b:.3f} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
