"""Two threads against one at batch 1, over several fresh processes (launches).

    python benchmarks/threads.py                          # V2, V3-Large, V3-Small; 10 launches
    python benchmarks/threads.py --peers                  # each npmobilenet block right after
                                                          # ONNX Runtime and PyTorch calls (2 threads)
    python benchmarks/threads.py --launches 3 --archs mobilenet_v3_small --json out.json
    python benchmarks/threads.py --trace                  # also where the time goes inside the table

Each launch is a new Python process: it builds each model (random weights), fuses it three
times (`fuse(threads=1)`; `fuse(threads=2)`, the governor left on, as a user gets it; and 2
threads pinned, `set_threads(2, adaptive=False)`) and times blocks of calls of each in turn, in
rounds (the median of each is the launch's figure). With
`--peers` (run it with the Python that has torch and onnxruntime), every block of npmobilenet
calls comes right after a block of ONNX Runtime and PyTorch channels-last calls on 2 threads, with
no pause between them: the case where another runtime's thread pool is still awake. Prints, per
model, each launch's 1-thread and 2-thread medians and the speed-up, then the speed-ups' spread
(min, median, max) over the launches, and how often the governor ran the 2-thread model on one.
With `--trace`, each launch also runs the pinned model's op table traced (`Program.trace_records`:
each tile's worker, op, index and cycle counts) on 1 and 2 threads, and the summary splits a run's time: the
span from the first tile taken to the last finished, the workers' time waiting at op boundaries
(a tile whose op must wait for the ops before it) and computing (the sum over tiles), and how long
after the caller the helper took its first tile. Computing time that grows from 1 to 2 threads is
the cores slowing each other (shared caches, memory, the host); waiting is the table's own cost.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ARCHS = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]


def _trace(fused, x, threads, runs, rate):
    """Medians over `runs` traced runs: span, waiting and computing (worker-ms), the helper's
    delay (ms) and share of the tiles."""
    from npmobilenet.inference.program import ENDED, STARTED, TAKEN, WORKER

    plan = fused.plan(x.shape)
    rows = []
    for _ in range(runs):
        plan.input[...] = x
        r = plan.program.trace_records(threads)
        helper = r[:, WORKER] > 0
        delay = (r[helper, TAKEN].min() - r[~helper, TAKEN].min()) / rate if helper.any() else np.nan
        rows.append(((r[:, ENDED].max() - r[:, TAKEN].min()) / rate, (r[:, STARTED] - r[:, TAKEN]).sum() / rate,
                     (r[:, ENDED] - r[:, STARTED]).sum() / rate, delay, helper.mean()))
    span, wait, busy, delay, share = (_median(column) for column in np.array(rows, float).T)
    return {"span_ms": span * 1e3, "wait_ms": wait * 1e3, "busy_ms": busy * 1e3, "helper_delay_ms": delay * 1e3,
            "helper_share": share}


def _median(values):
    """The median of the values that are numbers (nan where none is: one thread has no helper)."""
    values = np.array(values, float)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else float("nan")


def _child(archs, repeat, rounds, peers, trace):
    import npmobilenet
    from npmobilenet.inference import bench
    from npmobilenet.inference.atomics import cycle_rate

    rate = cycle_rate() if trace else None

    results = {}
    with tempfile.TemporaryDirectory(prefix="npmobilenet-threads-") as workdir:
        for arch in archs:
            model = npmobilenet.build(arch, seed=0).eval()
            x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
            one, two = model.fuse(threads=1), model.fuse(threads=2)
            pinned = model.fuse().set_threads(2, adaptive=False)      # no fallback to one thread
            if not (np.array_equal(one(x), two(x)) and np.array_equal(one(x), pinned(x))):
                raise SystemExit(f"{arch}: 1 and 2 threads gave different logits")
            peer_calls = []
            if peers:
                peer_calls += [fn for _, fn in bench._onnxruntime_engine(model, x, 2, workdir)[0]]
                peer_calls += [fn for name, fn in bench._torch_engines(arch, x, 2) if name == "torch channels-last"]
                if not peer_calls:
                    raise SystemExit("--peers needs onnxruntime or torch (run with the peer Python)")
            times = {1: [], 2: [], "pinned": []}
            used = []
            per_round = max(1, repeat // rounds)
            for _ in range(rounds):
                for threads, fused in ((1, one), (2, two), ("pinned", pinned)):
                    if peer_calls:
                        for fn in peer_calls:       # the peers' pools are awake when we start
                            for _ in range(5):
                                fn()
                    else:
                        time.sleep(0.1)
                    for _ in range(2):
                        fused(x)
                    for _ in range(per_round):
                        start = time.perf_counter()
                        fused(x)
                        times[threads].append(time.perf_counter() - start)
                        if threads == 2:
                            used.append(fused.last_threads)
            results[arch] = {"t1_ms": float(np.median(times[1]) * 1e3), "t2_ms": float(np.median(times[2]) * 1e3),
                             "t2_pinned_ms": float(np.median(times["pinned"]) * 1e3),
                             "t2_on_one_thread": float(np.mean(np.array(used) == 1))}
            if trace:
                traced = {1: [], 2: []}
                for _ in range(rounds):         # alternating, as the timed blocks
                    for threads in (1, 2):
                        traced[threads].append(_trace(pinned, x, threads, per_round, rate))
                results[arch]["trace"] = {threads: {key: _median([t[key] for t in runs]) for key in runs[0]}
                                          for threads, runs in traced.items()}
    print(json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--launches", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=60, help="timed calls per thread count and launch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", action="store_true", help="time right after ONNX Runtime / PyTorch calls")
    parser.add_argument("--trace", action="store_true", help="also trace the op table (waiting against computing)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.archs, args.repeat, args.rounds, args.peers, args.trace)
        return
    launches = []
    for launch in range(args.launches):
        command = [sys.executable, os.path.abspath(__file__), "--child", "--archs", *args.archs,
                   "--repeat", str(args.repeat), "--rounds", str(args.rounds)] + (["--peers"] if args.peers else [])
        command += ["--trace"] if args.trace else []
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        launches.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"launch {launch + 1}: " + "; ".join(
            f"{arch} {r['t1_ms']:.2f} / {r['t2_ms']:.2f} ms = {r['t1_ms'] / r['t2_ms']:.2f}x "
            f"(pinned {r['t2_pinned_ms']:.2f} ms = {r['t1_ms'] / r['t2_pinned_ms']:.2f}x)"
            for arch, r in launches[-1].items()), flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{len(launches)} launches{' after ONNX Runtime/PyTorch calls' if args.peers else ''}; "
          f"load average after: {load:.2f}")
    print(f"{'model':20s} {'2 threads':10s} {'1 thread ms':>12s} {'2 threads ms':>13s} {'speed-up min':>13s} "
          f"{'median':>7s} {'max':>6s} {'calls run on 1':>15s}")
    summary = {}
    for arch in args.archs:
        t1 = np.array([r[arch]["t1_ms"] for r in launches])
        summary[arch] = {"t1_ms": t1.tolist()}
        for label, key in (("governed", "t2_ms"), ("pinned", "t2_pinned_ms")):
            t2 = np.array([r[arch][key] for r in launches])
            speedup = t1 / t2
            fallback = np.mean([r[arch]["t2_on_one_thread"] for r in launches]) if label == "governed" else 0.0
            summary[arch][label] = {"t2_ms": t2.tolist(), "speedup": speedup.tolist(), "on_one_thread": fallback}
            print(f"{arch:20s} {label:10s} {np.median(t1):12.2f} {np.median(t2):13.2f} {speedup.min():13.2f} "
                  f"{np.median(speedup):7.2f} {speedup.max():6.2f} {fallback * 100:14.1f}%")
    if args.trace:
        print("\ninside the op table, pinned model, medians over the launches (worker-ms: summed over the workers):")
        print(f"{'model':20s} {'threads':>7s} {'span ms':>8s} {'waiting':>8s} {'computing':>10s} "
              f"{'span speed-up':>14s} {'computing 2t/1t':>16s} {'helper delay ms':>16s} {'helper tiles':>13s}")
        for arch in args.archs:
            traces = [r[arch]["trace"] for r in launches]
            med = {threads: {key: _median([t[str(threads)][key] for t in traces]) for key in traces[0][str(threads)]}
                   for threads in (1, 2)}
            summary[arch]["trace"] = med
            for threads in (1, 2):
                m = med[threads]
                extra = (f"{med[1]['span_ms'] / m['span_ms']:14.2f} {m['busy_ms'] / med[1]['busy_ms']:16.2f} "
                         f"{m['helper_delay_ms']:16.3f} {m['helper_share'] * 100:12.1f}%") if threads == 2 else ""
                print(f"{arch:20s} {threads:7d} {m['span_ms']:8.2f} {m['wait_ms']:8.2f} {m['busy_ms']:10.2f} {extra}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"peers": args.peers, "launches": launches, "summary": summary}, out, indent=1)


if __name__ == "__main__":
    main()
