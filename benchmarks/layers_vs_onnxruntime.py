"""Layer by layer beside ONNX Runtime: where a model's gap to the peer is.

    python benchmarks/layers_vs_onnxruntime.py [ARCH] [--threads 1] [--repeat 30] [--in-model]

npmobilenet's side is `npmobilenet bench --per-layer`'s profile (each fused layer run alone
through the op table, median of `--repeat`), or with `--in-model` each layer's time inside whole
runs of the table on one thread (`Program.trace_records`: the sum of its tiles' cycle counts,
median over `--repeat` runs), where, as in ONNX Runtime's profile, a layer reads what the layers
before it left in the caches and its weights from wherever the last run left them (at batch 1 the
classifier's from memory); ONNX Runtime's is its own profiler
(`enable_profiling`) on the graph `export_onnx` writes, `--repeat` runs after 5 untimed ones,
the median of each node's kernel time. Both at batch 1, 224x224, random weights, one process.
Nodes and layers are matched by name (ONNX Runtime names a fused node after its last op, e.g.
`blocks.3.act.relu`, or its own prefix, e.g. `fused classifier.0`): the table lists each of our
layers with the ONNX Runtime nodes whose names contain it (an expansion run with its depthwise
convolution, `blocks.1.conv_pw+conv_dw`, with both's), and the totals per kind.
Run it with the Python that has ONNX Runtime; on a shared machine, run it alone.
"""
import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np


def onnxruntime_node_times(model, threads, repeat):
    """({node name: median kernel ms} from ONNX Runtime's profiler, median ms of a whole run)."""
    import onnxruntime as ort

    from npmobilenet.io.onnx_export import export_onnx

    workdir = tempfile.mkdtemp()
    path = export_onnx(model, os.path.join(workdir, "model.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(workdir, "profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    runs = []
    for _ in range(5 + repeat):
        start = time.perf_counter()
        session.run(None, {"input": x})
        runs.append(time.perf_counter() - start)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    durations = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            durations[event["name"][:-len("_kernel_time")]].append(event["dur"])
    return ({name: float(np.median(d[5:] or d)) / 1e3 for name, d in durations.items()},
            float(np.median(runs[5:])) * 1e3)


def in_model_profile(arch, repeat):
    """`per_layer_profile`'s layers, each timed inside whole traced runs of the op table on one
    thread: the median over `repeat` runs of the sum of its tiles' times."""
    import npmobilenet
    from npmobilenet.inference.atomics import cycle_rate
    from npmobilenet.inference.program import traced_op_ms

    rate = cycle_rate()
    fused = npmobilenet.build(arch, seed=0).eval().fuse(threads=1)
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    fused(x)
    plan = fused.plan(x.shape)
    per_op = np.zeros((repeat, len(plan.program.ops)))
    for r in range(repeat + 3):
        plan.input[...] = x
        records = plan.program.trace_records(1)
        if r >= 3:                                    # three runs to warm up
            per_op[r - 3] = traced_op_ms(records, len(plan.program.ops), rate)
    per_op = np.median(per_op, axis=0)
    calls = []
    for _ in range(repeat):
        start = time.perf_counter()
        fused(x)
        calls.append(time.perf_counter() - start)
    layers = []
    for name, description, macs, _ in fused.layer_costs(224, 1):
        k0, k1 = plan.layer_ops[name]
        ms = float(per_op[k0:k1].sum())
        layers.append({"name": name, "kind": description, "ms": ms, "gmacs": macs / ms / 1e6 if ms > 0 else 0.0})
    return {"layers": layers, "total_ms": sum(layer["ms"] for layer in layers),
            "call_ms": float(np.median(calls)) * 1e3}


def _prefixes(layer):
    """The node-name prefixes of one of our layers: 'blocks.1.conv_pw.', and for an expansion run
    with its depthwise convolution ('blocks.1.conv_pw+conv_dw', `layers.FusedExpansion`) both's."""
    block, _, last = layer.rpartition(".")
    return [f"{block}.{part}." if block else f"{part}." for part in last.split("+")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", nargs="?", default="mobilenet_v4_conv_small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--in-model", action="store_true",
                        help="time our layers inside whole runs (one thread) rather than each alone")
    args = parser.parse_args(argv)
    if args.in_model and args.threads != 1:
        parser.error("--in-model times one thread's runs: use --threads 1")

    import npmobilenet
    from npmobilenet.inference.bench import per_layer_profile

    profile = (in_model_profile(args.arch, args.repeat) if args.in_model
               else per_layer_profile(args.arch, 1, 224, args.threads, args.repeat))
    nodes, session_ms = onnxruntime_node_times(npmobilenet.build(args.arch, seed=0).eval(), args.threads, args.repeat)
    where = "inside whole runs" if args.in_model else "alone"
    print(f"{args.arch}, batch 1, 224x224, {args.threads} thread(s): npmobilenet's layers {where} "
          f"{profile['total_ms']:.2f} ms, ONNX Runtime's nodes {sum(nodes.values()):.2f} ms")
    if args.in_model:       # what the runs took whole: the rest is outside the layers
        print(f"whole calls: npmobilenet {profile['call_ms']:.2f} ms, ONNX Runtime (profiling on) {session_ms:.2f} ms")
    print("| layer | kind | npmobilenet ms | GMAC/s | ONNX Runtime ms | ratio |\n|---|---|---|---|---|---|")
    kinds = collections.defaultdict(lambda: [0.0, 0.0])
    for layer in profile["layers"]:
        theirs = sum(ms for name, ms in nodes.items()
                     if any((name.split(" ")[-1] + ".").startswith(prefix) for prefix in _prefixes(layer["name"])))
        kinds[layer["kind"]][0] += layer["ms"]
        kinds[layer["kind"]][1] += theirs
        ratio = f"{layer['ms'] / theirs:.2f}" if theirs > 0 else "-"
        print(f"| {layer['name']} | {layer['kind']} | {layer['ms']:.3f} | {layer['gmacs']:.1f} | {theirs:.3f} | {ratio} |")
    print("\n| kind | npmobilenet ms | ONNX Runtime ms (matched nodes) |\n|---|---|---|")
    for kind, (ours, theirs) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        print(f"| {kind} | {ours:.3f} | {theirs:.3f} |")


if __name__ == "__main__":
    main()
