"""Inference benchmark report: `npmobilenet bench --json` results as a Markdown table and plots.

    npmobilenet bench --threads 1 --per-layer --json bench-t1.json
    npmobilenet bench --threads 2 --per-layer --json bench-t2.json
    npmobilenet bench --threads 2 --background-load --json bench-t2-load.json
    python benchmarks/inference.py bench-t1.json bench-t2.json bench-t2-load.json \
        --markdown inference.md --plot inference.png

The table has one row per (model, batch, threads, load): npmobilenet's latency (ms per image),
throughput, achieved GMAC/s, and each peer's time with the ratio npmobilenet/peer (below 1:
npmobilenet is faster) and its lowest and highest over the bench's rounds. With per-layer
profiles in the JSON and matplotlib installed, the plot shows for each profile (left) every fused layer's time against its MACs, coloured by kind
(points above the diagonal of the pointwise layers are the ones that do not get the machine's
arithmetic rate: the depthwise layers), and (right) the roofline: achieved GMAC/s against
arithmetic intensity (MACs per byte moved) under the machine's measured SGEMM peak and copy
bandwidth. Layers left of the ridge point are memory-bound.

`--matmul ARCH` times every pointwise layer of ARCH (batch 1, 224) both ways, OpenBLAS SGEMM
called from the kernel and the Numba matrix product, one thread: the measurement behind the
rule the kernels follow (SGEMM wherever it is found).

`--check-targets` also prints the performance issue's targets as met / missed with the margin
(`check_targets`: against ONNX Runtime, batch-1 latency at most 1.0x on one and two threads,
batch 32 at most 0.9x on two, a background load's slowdown no worse than its own; the cold
start), each ratio with its spread over the bench's rounds.
"""
import argparse
import json
import os
import sys

KIND_COLOURS = {"conv": "tab:purple", "depthwise": "tab:red", "pointwise": "tab:blue", "squeeze-excite": "tab:orange",
                "linear": "tab:green", "global-avg-pool": "tab:gray"}
PEERS = ("torch eager", "torch channels-last", "onnxruntime")


def load(paths):
    runs = []
    for path in paths:
        with open(path) as f:
            payload = json.load(f)
        payload["path"] = path
        runs.append(payload)
    return runs


def markdown_table(runs):
    header = ("| model | batch | threads | load | npmobilenet ms/image | images/s | GMAC/s | "
              + " | ".join(f"{p} ms/image (npm/peer)" for p in PEERS) + " |")
    lines = [header, "|" + "---|" * (7 + len(PEERS))]
    for run in runs:
        load_text = "spinning process" if run.get("background_load") else f"avg {run.get('load_average', float('nan')):.1f}"
        for result in run["results"]:
            rows = {row["engine"]: row for row in result["rows"]}
            ours = rows["npmobilenet"]
            cells = [result["arch"], str(result["batch"]), str(result["threads"]), load_text,
                     f"{ours['ms_per_image']:.2f}", f"{ours['images_per_s']:.0f}", f"{ours['gmacs']:.1f}"]
            for peer in PEERS:
                row = rows.get(peer)
                spread = f"; {row['ratio_low']:.2f}-{row['ratio_high']:.2f}" if row and "ratio_low" in row else ""
                cells.append(f"{row['ms_per_image']:.2f} ({row['ratio']:.2f}{spread})" if row else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# the performance issue's targets: npmobilenet's latency over ONNX Runtime's at most this (per image)
LATENCY_TARGETS = {(1, 1): 1.0, (1, 2): 1.0, (32, 2): 0.9}      # (batch, threads): limit
COLD_START_S, WARM_START_S = 15.0, 1.0


def _rounds_met(row, limit):
    """'k of n rounds' in which the round's ratio was at most `limit` (rows from before the
    per-round ratios: empty)."""
    rounds = row.get("ratio_rounds")
    if not rounds:
        return ""
    return f", {sum(r <= limit for r in rounds)} of {len(rounds)} rounds within it"


def _times(x):
    """A ratio to two decimals, or three where two would round it to 1.00."""
    return f"{x:.3f}x" if 0.995 <= x < 1.005 else f"{x:.2f}x"


def _spread(row):
    return f" ({row['ratio_low']:.2f}-{row['ratio_high']:.2f} over the rounds)" if "ratio_low" in row else ""


def check_targets(runs):
    """The performance issue's targets, met or missed, from `npmobilenet bench --json` runs with
    ONNX Runtime: batch-1 latency at most 1.0x ONNX Runtime's on one and two threads, batch 32 at
    most 0.9x its time per image on two threads, under a spinning process a slowdown (against the
    same model's two-thread run without it) no worse than ONNX Runtime's, and the cold start
    (`--cold-start`) at most 15 s, 1 s warm. Each ratio with its spread over the bench's rounds and
    how many rounds met it; a last line counts the ratio targets met."""
    lines, met, checked = [], 0, 0
    unloaded = {(result["arch"], result["batch"], result["threads"]): result
                for run in runs if not run.get("background_load") for result in run["results"]}
    for run in runs:
        for result in run["results"]:
            rows = {row["engine"]: row for row in result["rows"]}
            peer = rows.get("onnxruntime")
            if peer is None:
                continue
            key = (result["batch"], result["threads"])
            tag = f"{result['arch']} batch {result['batch']}, {result['threads']} thread(s)"
            if run.get("background_load"):
                base = unloaded.get((result["arch"],) + key)
                base_rows = {row["engine"]: row for row in base["rows"]} if base else {}
                if "onnxruntime" not in base_rows:
                    lines.append(f"{tag}, background load: no run without it to compare (give both JSON files)")
                    continue
                ours = rows["npmobilenet"]["ms"] / base_rows["npmobilenet"]["ms"]
                theirs = peer["ms"] / base_rows["onnxruntime"]["ms"]
                ok = ours <= theirs
                lines.append(f"{tag}, background load: npmobilenet {_times(ours)} its time without it, ONNX Runtime "
                             f"{_times(theirs)} (target: no worse): " + ("met" if ok else f"MISSED by {_times(ours / theirs)}"))
            elif key in LATENCY_TARGETS:
                limit = LATENCY_TARGETS[key]
                ratio = peer["ratio"]
                ok = ratio <= limit
                lines.append(f"{tag}: {_times(ratio)} ONNX Runtime's time{_spread(peer)} (target <= {limit}): "
                             + ("met" if ok else f"MISSED by {_times(ratio / limit)}") + _rounds_met(peer, limit))
            else:
                continue
            met, checked = met + ok, checked + 1
    for run in runs:
        cold = run.get("cold_start")
        if cold:
            lines.append(f"cold start: {cold['cold'][0]:.2f} s with an empty Numba cache (target <= {COLD_START_S:g} s): "
                         + ("met" if cold["cold"][0] <= COLD_START_S else "MISSED")
                         + f"; {cold['warm'][0]:.2f} s warm (target <= {WARM_START_S:g} s): "
                         + ("met" if cold["warm"][0] <= WARM_START_S else "MISSED"))
    lines.append(f"{met} of {checked} ratio targets met")
    return "\n".join(lines)


def _kind(layer):
    kind = layer["kind"].split(",")[0].split(" (")[0].split(" +")[0]
    return "depthwise" if kind.startswith("depthwise") else kind


def plot(runs, path):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from npmobilenet.inference.bench import compute_ceiling

    profiles = [p for run in runs for p in run.get("profiles", [])]
    if not profiles:
        print("no per-layer profiles in the JSON (run npmobilenet bench --per-layer): no plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(len(profiles), 2, figsize=(12, 4.5 * len(profiles)), squeeze=False)
    for (ax_time, ax_roof), profile in zip(axes, profiles):
        title = (f"{profile['arch']}, batch {profile['batch']}"
                 + (f" (chunk of {profile['images']})" if profile.get("images", profile["batch"]) < profile["batch"] else "")
                 + f", {profile['threads']} thread(s)")
        for kind, colour in KIND_COLOURS.items():
            layers = [layer for layer in profile["layers"] if _kind(layer) == kind and layer["macs"] > 0]
            if not layers:
                continue
            macs = np.array([layer["macs"] for layer in layers]) / 1e6
            ms = np.array([layer["ms"] for layer in layers])
            ax_time.scatter(macs, ms, c=colour, label=kind, s=18)
            ax_roof.scatter([layer["intensity"] for layer in layers], [layer["gmacs"] for layer in layers],
                            c=colour, label=kind, s=18)
        ax_time.set(xscale="log", yscale="log", xlabel="MMAC per layer", ylabel="ms per layer", title=title)
        ax_time.legend(fontsize=8)
        peaks = profile.get("machine")
        if peaks:
            x = np.logspace(-1.5, 2.5, 100)
            ceiling = compute_ceiling(peaks)
            ax_roof.plot(x, np.minimum(ceiling, peaks["bandwidth_gbs"] * x), "k--", lw=1,
                         label=f"roofline: {ceiling:.0f} GMAC/s product peak, {peaks['bandwidth_gbs']:.0f} GB/s")
        ax_roof.set(xscale="log", yscale="log", xlabel="MACs per byte moved", ylabel="achieved GMAC/s",
                    title="roofline (" + title + ")")
        ax_roof.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return True


def compare_matmul(arch, resolution=224, repeat=20):
    """Markdown table: each pointwise layer's time with SGEMM and with the Numba matrix product."""
    import time

    import numba
    import numpy as np

    import npmobilenet
    from npmobilenet.inference import kernels
    from npmobilenet.ops.blas import find_blas, numba_gemm_address, sgemm_address

    blas = find_blas()
    if blas is None:
        return "no OpenBLAS found: only the Numba matrix product is available"
    fused = npmobilenet.build(arch).eval().fuse(threads=1)
    x = np.zeros((1, resolution, resolution, 3), np.float32)
    fused(x)
    plan = fused.plan(x.shape)
    lines = ["| layer | rows x K x N | SGEMM us | Numba us | SGEMM GMAC/s | Numba GMAC/s |", "|---|---|---|---|---|---|"]
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with blas.single_threaded():
            for layer, (kernel, args) in zip(fused.layers, plan.calls):
                if layer.kind != "pointwise":
                    continue
                rows, k = args[0].shape
                n = args[1].shape[1]
                best = {}
                for name, address in (("sgemm", sgemm_address()), ("numba", numba_gemm_address(np.float32))):
                    call = args[:-2] + (address, args[-1])
                    gate = args[5]
                    if gate.shape[0]:                      # the gate scales x in place: keep it at 1
                        gate[...] = 1
                    kernels.POINTWISE[0](*call)
                    times = []
                    for _ in range(repeat):
                        start = time.perf_counter()
                        kernels.POINTWISE[0](*call)
                        times.append(time.perf_counter() - start)
                    best[name] = min(times)
                macs = rows * k * n
                lines.append(f"| {layer.name} | {rows} x {k} x {n} | {best['sgemm'] * 1e6:.0f} | {best['numba'] * 1e6:.0f} | "
                             f"{macs / best['sgemm'] / 1e9:.1f} | {macs / best['numba'] / 1e9:.1f} |")
    finally:
        numba.set_num_threads(previous)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", nargs="*", help="results of `npmobilenet bench --json PATH`")
    parser.add_argument("--matmul", metavar="ARCH", help="time each pointwise layer of ARCH with SGEMM and with Numba")
    parser.add_argument("--markdown", help="write the Markdown table here (default: print it)")
    parser.add_argument("--plot", help="write the per-layer and roofline plot here (PNG; needs matplotlib)")
    parser.add_argument("--check-targets", action="store_true", help="print the issue's targets as met / missed")
    args = parser.parse_args(argv)
    if args.matmul:
        print(compare_matmul(args.matmul))
    if not args.json:
        return 0
    runs = load(args.json)
    table = markdown_table(runs)
    cold = [run for run in runs if run.get("cold_start")]
    if cold:
        c, arch = cold[0]["cold_start"], cold[0]["results"][0]["arch"] if cold[0]["results"] else "the model"
        table += (f"\n\nCold start ({arch}, batch 1, 224, fresh process): first call {c['cold'][0]:.2f} s with an "
                  f"empty Numba cache, {c['warm'][0]:.2f} s with a warm one.")
    if args.markdown:
        tmp = args.markdown + ".tmp"
        with open(tmp, "w") as f:
            f.write(table + "\n")
        os.replace(tmp, args.markdown)
    else:
        print(table)
    if args.check_targets:
        print()
        print(check_targets(runs))
    if args.plot:
        plot(runs, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
