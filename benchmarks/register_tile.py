"""The fused model with the register tiles against the same model without them.

    python benchmarks/register_tile.py [--threads 1] [--batch 1] [--rounds 30] [--depthwise [--kernel 3]] [ARCH ...]

Pointwise layers and the standard convolutions run the register tile (`ops/register_tile.py`:
AVX-512's 8 x 32 block, or AVX2's 6 x 16) where the CPU has one; NPMOBILENET_NO_AVX512=1 keeps
OpenBLAS's SGEMM plus the epilogue pass. With `--depthwise`, only the depthwise layers differ: `ops/depthwise_avx512.py`'s
register tile against `ops/depthwise.py`'s loop tile (`FusedDepthwise(packed=False)`), with
`--kernel 3` or `--kernel 5` only the layers of that kernel size. Both fused
models are built in one process and timed in alternating blocks of 3 calls, the order swapped
every round; medians per image, the ratio register tile / other, and the largest difference of
their outputs.
"""
import argparse
import os
import time

import numpy as np

DEFAULT = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v4_conv_small"]


def fused(model, register_tile, depthwise_only=False, kernel=None):
    if depthwise_only:
        from unittest import mock

        from npmobilenet.inference import compile as lowering
        from npmobilenet.inference.layers import FusedDepthwise

        if register_tile:
            return model.fuse()
        def loop_tile(name, inputs, outputs, weight, *args, **kwargs):
            # `kernel`: only those layers on the loop tile, the others as fuse() chooses
            packed = None if kernel is not None and weight.shape[0] != kernel else False
            return FusedDepthwise(name, inputs, outputs, weight, *args, packed=packed, **kwargs)

        with mock.patch.object(lowering, "FusedDepthwise", loop_tile):
            return model.fuse()
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
    parser.add_argument("--depthwise", action="store_true",
                        help="compare the depthwise register tile against the loop tile, all else the same")
    parser.add_argument("--kernel", type=int, choices=(3, 5),
                        help="with --depthwise: only the layers of this kernel size differ")
    args = parser.parse_args(argv)

    import npmobilenet
    from npmobilenet.ops import register_tile

    if not register_tile.available():
        raise SystemExit("this CPU has neither AVX-512 nor AVX2 with FMA: the fused model uses OpenBLAS's tiles only")
    x = np.random.default_rng(0).standard_normal((args.batch, 224, 224, 3)).astype(np.float32)
    print(f"batch {args.batch}, {args.threads} thread(s), 224x224, ms per image (median of {args.rounds} blocks)")
    sizes = f"{args.kernel}x{args.kernel}" if args.kernel else "3x3 and 5x5"
    other = f"{sizes} depthwise loop tile" if args.depthwise else "OpenBLAS tiles"
    print(f"| model | register tile | {other} | ratio | max difference |")
    print("|---|---|---|---|---|")
    for arch in args.arch:
        model = npmobilenet.build(arch, seed=0).eval()
        engines = {"register": fused(model, True, args.depthwise),
                   "other": fused(model, False, args.depthwise, args.kernel)}
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
        difference = float(np.abs(outputs["register"] - outputs["other"]).max())
        print(f"| {arch} | {a:.2f} | {b:.2f} | {a / b:.3f} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
