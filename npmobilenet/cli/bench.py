"""`npmobilenet bench [ARCH|CHECKPOINT ...] [--batch 1,32] [--resolution R] [--threads N] [--repeat K]
[--per-layer] [--background-load] [--no-peers] [--cold-start] [--json [PATH]]`: fused inference
timed beside PyTorch and ONNX Runtime (`npmobilenet.inference.bench`).

`--json` means what it means in every command, one JSON document on stdout (the tables then go to
stderr, as progress); `--json PATH` writes that document to PATH instead and keeps the tables on
stdout."""
import json
import os
import sys
import tempfile

from npmobilenet.extras import available


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--batch must be comma-separated positive ints, e.g. 1,32; got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--batch must be comma-separated positive ints, e.g. 1,32; got {text!r}")
    return values


def add_arguments(parser):
    from npmobilenet.applications import APPLICATIONS
    from npmobilenet.models import ARCHS

    parser.add_argument("archs", nargs="*", metavar="ARCH", help=f"architectures (default: V2, V3-Large, V3-Small); any of {', '.join(ARCHS + APPLICATIONS)}; or checkpoint files "
                        "(float, pruned, factorised, int8: an int8 model is timed beside the fused float model)")
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes (default 1,32)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="input height and width (default 224; LR-ASPP 520 and SSDLite 320, torchvision's)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: NUMBA_NUM_THREADS)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per engine (default 20; median reported)")
    parser.add_argument("--per-layer", action="store_true", help="also time each fused layer, with its MACs and bytes")
    parser.add_argument("--background-load", action="store_true", help="measure while a spinning process holds one core")
    parser.add_argument("--no-peers", action="store_true", help="time npmobilenet only (no PyTorch / ONNX Runtime)")
    parser.add_argument("--int8", action="store_true",
                        help="also the classifiers quantized to int8 (integer-only), beside their fused float model")
    parser.add_argument("--cold-start", action="store_true", help="also time the first call with an empty and a warm Numba cache")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="print the results as JSON on stdout (the tables go to stderr); "
                             "with PATH, write the JSON to that file instead")


def run(args):
    import numba

    from npmobilenet.applications import APPLICATIONS
    from npmobilenet.inference import bench
    from npmobilenet.models import ARCHS

    known = ARCHS + APPLICATIONS

    archs = list(args.archs)
    json_path = args.json
    if json_path not in (None, "-") and (json_path in known or (os.path.isfile(json_path) and not json_path.endswith(".json"))):
        # `bench --json mobilenet_v2`: argparse gave the model to --json's optional PATH
        archs, json_path = [json_path] + archs, "-"
    archs = archs or ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]
    checkpoints = [a for a in archs if a not in known and os.path.isfile(a)]
    unknown = [a for a in archs if a not in known and a not in checkpoints]
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; known: {', '.join(known)}, or a checkpoint file")
    archs = [a for a in archs if a in known]
    batches = _int_list(args.batch)
    if args.resolution is not None and args.resolution < 32:
        raise ValueError(f"--resolution must be at least 32, got {args.resolution}")

    def resolution(arch):
        return args.resolution if args.resolution is not None else bench.default_resolution(arch)
    if args.repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
    threads = args.threads if args.threads is not None else numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"--threads must be between 1 and {numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS), got {threads}")
    if json_path not in (None, "-"):
        from npmobilenet.io.files import check_output

        check_output(json_path, inputs=checkpoints, name="--json")
    # the tables are progress when the JSON document is what stdout carries
    text = sys.stderr if json_path == "-" else sys.stdout
    peers = not args.no_peers
    # PyTorch's libgomp and Numba's OpenMP layer are one library in one process (same soname):
    # whichever loads first reads the OpenMP environment for both. npmobilenet.config set it when
    # it was imported (a short spin; settings already in the environment are kept), before the
    # peers are imported below, so every engine runs under the same, stated settings.
    if peers:
        for module in ("torch", "torchvision", "timm", "onnxruntime"):
            if available(module):
                __import__(module)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    # architectures by name run with random weights; checkpoints with their own (an int8 one beside
    # the fused float model of its architecture)
    weights = ", ".join(filter(None, ["random weights" if archs else "", "checkpoints' own weights" if checkpoints else ""]))
    sizes = sorted({resolution(a) for a in archs + checkpoints})
    print(f"npmobilenet bench: {threads} thread(s), {', '.join(f'{r}x{r}' for r in sizes)}, float32, {weights}, "
          f"median of {args.repeat} in {bench.default_rounds(args.repeat)} rounds; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}; load average before: {load:.2f}"
          + ("; WITH BACKGROUND LOAD (one spinning process)" if args.background_load else ""), file=text)
    if peers:
        missing = [m for m in ("torch", "torchvision", "onnxruntime") if not available(m)]
        if missing:
            print(f"(not installed, skipped: {', '.join(missing)})", file=text)
    results, profiles = [], []
    with tempfile.TemporaryDirectory(prefix="npmobilenet-bench-") as workdir, bench.background_load(args.background_load):
        for arch in archs + checkpoints:
            for batch in batches:
                if arch in checkpoints:
                    result = bench.bench_checkpoint(arch, batch, resolution(arch), threads, args.repeat)
                else:
                    result = bench.bench_model(arch, batch, resolution(arch), threads, args.repeat, peers, workdir,
                                               int8=args.int8 and arch in ARCHS)
                results.append(result)
                print(bench.format_results([result]).split("\n", 2)[2] if len(results) > 1 else bench.format_results([result]), file=text, flush=True)
        if args.per_layer:
            peaks = {1: bench.machine_peaks(1)}
            for arch in archs:
                for batch in batches:
                    profile = bench.per_layer_profile(arch, batch, resolution(arch), threads, args.repeat)
                    # a chunk runs on one thread; a whole batch's large layers on all of them
                    layer_threads = 1 if profile["images"] < batch else threads
                    if layer_threads not in peaks:
                        peaks[layer_threads] = bench.machine_peaks(layer_threads)
                    profile["machine"] = peaks[layer_threads]
                    profiles.append(profile)
                    print(file=text)
                    print(bench.format_profile(profile, profile["machine"]), file=text, flush=True)
    cold = None
    if args.cold_start:
        cold = bench.cold_start(archs[0])
        print(f"\ncold start ({archs[0]}, batch 1, 224, fresh processes): first call "
              f"{cold['cold'][0]:.2f} s with an empty Numba cache, {cold['warm'][0]:.2f} s with a warm one "
              f"(second call {cold['warm'][1] * 1e3:.1f} ms; import to first result {cold['cold'][2]:.2f} s / "
              f"{cold['warm'][2]:.2f} s; CPU with the compile helper {cold['cold'][3]:.2f} s / {cold['warm'][3]:.2f} s)", file=text)
    if json_path is not None:
        payload = {"results": results, "profiles": profiles, "cold_start": cold, "threads": threads,
                   "background_load": args.background_load, "load_average": load,
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}
        document = json.dumps(payload, indent=1)
        if json_path == "-":
            print(document, flush=True)
        else:
            from npmobilenet.io.files import atomic_write

            atomic_write(json_path, lambda f: f.write(document.encode()))
    return 0
