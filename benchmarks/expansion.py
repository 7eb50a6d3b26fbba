"""Expansion and depthwise convolution joined (`layers.FusedExpansion`) against the two apart.

    python benchmarks/expansion.py [ARCH ...] [--threads 1,2] [--batch 1] [--resolution 224] [--rounds 30] [--layers]

Both fused models are built from one graph in one process (`fused_layers(graph, expansions=...)`,
all else the same) and timed in alternating blocks of calls (5 at batch 1, 1 above), the order
swapped every round, with a pause between blocks: the medians per image, their ratio joined /
apart, and whether the outputs are the same bits. With `--layers`, also each joined layer's time
inside whole traced runs on one thread (`Program.trace_records`, the sum of its tiles' cycle
counts, median over the rounds) against its two layers' in the other model: where the expanded
map now stays in cache.
"""
import argparse
import time

import numpy as np

DEFAULT = ["mobilenet_v2", "mobilenet_v3_large"]


def models(arch, threads):
    """(apart, joined): the fused model of `arch` without and with joined expansions."""
    import npmobilenet
    from npmobilenet.graph import inference_graph
    from npmobilenet.inference.compile import FUSED_ACTIVATIONS, fused_layers
    from npmobilenet.inference.model import FusedMobileNet

    model = npmobilenet.build(arch, seed=0).eval()
    graph = inference_graph(model, FUSED_ACTIVATIONS)
    return [FusedMobileNet(fused_layers(graph, expansions=joined), model.config, threads, adaptive=False,
                           outputs=graph.outputs) for joined in (False, True)]


def _arrays(outputs):
    return outputs if isinstance(outputs, tuple) else (outputs,)


def whole_calls(engines, x, rounds):
    """Median ms per image of each engine, alternating blocks of calls."""
    calls = 5 if x.shape[0] == 1 else 1
    times = [[] for _ in engines]
    for r in range(rounds):
        order = range(len(engines)) if r % 2 == 0 else reversed(range(len(engines)))
        for k in order:
            start = time.perf_counter()
            for _ in range(calls):
                engines[k](x)
            times[k].append((time.perf_counter() - start) / calls / x.shape[0] * 1e3)
            time.sleep(0.02)
    return [float(np.median(t)) for t in times]


def layer_times(engines, x, rounds):
    """{joined layer: (its two layers' ms apart, its ms)} inside traced whole runs on one thread."""
    from npmobilenet.inference.atomics import cycle_rate
    from npmobilenet.inference.layers import FusedExpansion
    from npmobilenet.inference.program import traced_op_ms

    rate = cycle_rate()
    plans = [engine.plan(x.shape) for engine in engines]
    per_op = [np.zeros((rounds, len(plan.program.ops))) for plan in plans]
    for r in range(rounds + 3):                      # three runs to warm up
        for k, plan in enumerate(plans):
            np.copyto(plan.input, x)
            records = plan.program.trace_records(1)
            if r >= 3:
                per_op[k][r - 3] = traced_op_ms(records, len(plan.program.ops), rate)
    apart, joined = (np.median(ms, axis=0) for ms in per_op)
    result = {}
    for layer in engines[1].layers:
        if isinstance(layer, FusedExpansion):
            mine = joined[slice(*plans[1].layer_ops[layer.name])].sum()
            theirs = sum(apart[slice(*plans[0].layer_ops[name])].sum() for name in layer.parts)
            result[layer.name] = (float(theirs), float(mine))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", nargs="*", default=DEFAULT)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--layers", action="store_true", help="also each joined layer inside traced runs")
    args = parser.parse_args(argv)

    x = np.random.default_rng(0).standard_normal((args.batch, args.resolution, args.resolution, 3)).astype(np.float32)
    print(f"batch {args.batch}, {args.resolution}x{args.resolution}, ms per image (median of {args.rounds} blocks)")
    print("| model | threads | apart | joined | ratio | same bits |\n|---|---|---|---|---|---|")
    for arch in args.arch:
        for threads in (int(t) for t in args.threads.split(",")):
            engines = models(arch, threads)
            same = all(np.array_equal(a, b) for a, b in zip(*(_arrays(engine(x)) for engine in engines)))
            apart, joined = whole_calls(engines, x, args.rounds)
            print(f"| {arch} | {threads} | {apart:.2f} | {joined:.2f} | {joined / apart:.3f} | {same} |")
    if args.layers:
        print("\none thread, inside whole runs: | layer | its two layers apart ms | joined ms |")
        for arch in args.arch:
            for name, (apart, joined) in layer_times(models(arch, 1), x, args.rounds).items():
                print(f"| {arch} {name} | {apart:.3f} | {joined:.3f} |")


if __name__ == "__main__":
    main()
