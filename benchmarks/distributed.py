"""Images per second of `npmobilenet.distributed.predict` on a local Dask cluster of 1 and 2 worker
processes (one thread each), against single-process prediction (`Predictor.iter_predictions`, as
`npmobilenet predict` runs it) on the same images.

    python benchmarks/distributed.py                  # scaling: single process, 1 and 2 workers
    python benchmarks/distributed.py --environment    # a Dask worker against a plain process

The images: 2,000 JPEGs of 256x256 made once into --data (scikit-learn's 8x8 digits upsampled 32x,
tinted and with noise; random noise where scikit-learn is missing), read through the ImageNet
transform (resize 256, crop 224). The model: MobileNetV2 1.0 at 224x224 with random weights (seed
0): the real network's computation; its predictions are meaningless, its speed is not.
Every configuration is warmed first (model loaded, kernels compiled or loaded from the cache on
every worker): the times are steady-state, listing, reading, preprocessing, inference and (Dask)
writing the Parquet output included. Configurations are interleaved, `--repeat` rounds, median.

--environment runs the same classification loop, timed inside the process with its own resource
usage (user and system CPU seconds, minor page faults), in a plain Python process under several
environments and in a Dask worker started with Dask's default environment and with ours
(`npmobilenet.distributed.worker.worker_environment`, MALLOC_TRIM_THRESHOLD_ not set).
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# run as a script, this file's directory comes first on sys.path, and this file would shadow the
# `distributed` package it uses
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

DEFAULT_DATA = os.path.join(tempfile.gettempdir(), "npmobilenet-bench-distributed")
# the environment this script started with: a Dask nanny started here writes its pre-spawn
# variables (MALLOC_TRIM_THRESHOLD_, OMP_NUM_THREADS=1, ...) into os.environ, and every process
# started after it would inherit them
START_ENVIRONMENT = dict(os.environ)


def restore_environment():
    os.environ.clear()
    os.environ.update(START_ENVIRONMENT)


# -- the images and the model --------------------------------------------------------------------------
def make_data(directory, count, arch):
    """`count` 256x256 JPEGs in directory/images and a random-weight model directory/<arch>.npz."""
    from PIL import Image

    import npmobilenet

    images = os.path.join(directory, "images")
    os.makedirs(images, exist_ok=True)
    have = len(glob.glob(os.path.join(images, "*.jpg")))
    if have < count:
        rng = np.random.default_rng(0)
        try:
            from sklearn.datasets import load_digits

            digits = load_digits().images / 16.0
        except ImportError:
            digits = rng.uniform(0, 1, (64, 8, 8))
        for i in range(count):
            big = np.kron(digits[i % len(digits)], np.ones((32, 32)))
            tint = rng.uniform(0.3, 1.0, 3)
            rgb = big[..., None] * tint * 230 + rng.normal(0, 12, big.shape + (3,))
            Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(os.path.join(images, f"{i:05d}.jpg"), quality=90)
    weights = os.path.join(directory, f"{arch}.npz")
    if not os.path.exists(weights):
        npmobilenet.save(npmobilenet.build(arch, seed=0), weights)
    paths = sorted(glob.glob(os.path.join(images, "*.jpg")))[:count]
    return paths, weights


# -- the classification loop, timed from inside the process that runs it ---------------------------------
_PREDICTOR = {}


def classify_timed(paths, weights, warm_paths=64):
    """Classify `paths` with one Numba thread, batches of 32; returns the seconds, CPU seconds and
    minor page faults of this process over the timed part (after a warm-up on `warm_paths`)."""
    import resource

    from npmobilenet.io.predict import open_predictor

    if weights not in _PREDICTOR:
        _PREDICTOR[weights] = open_predictor(weights, threads=1)
        _PREDICTOR[weights].warm_up()
    predictor = _PREDICTOR[weights]
    list(predictor.iter_predictions(paths[:warm_paths], topk=1))
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    rows = list(predictor.iter_predictions(paths, topk=1))
    seconds, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"images": len(rows), "seconds": seconds, "images_per_second": len(rows) / seconds,
            "user_s": after.ru_utime - before.ru_utime, "system_s": after.ru_stime - before.ru_stime,
            "minor_faults_per_image": (after.ru_minflt - before.ru_minflt) / len(rows),
            "malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def in_plain_process(paths, weights, environment):
    """classify_timed in a fresh Python process with `environment` added to ours (None: removed)."""
    env = dict(START_ENVIRONMENT)
    for key, value in environment.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(paths, f)
    try:
        done = subprocess.run([sys.executable, __file__, "--classify-timed", f.name, weights], env=env,
                              capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise RuntimeError(f"the timed process failed ({environment}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_dask_worker(paths, weights, ours):
    """classify_timed in the one worker of a LocalCluster: Dask's default worker environment, or
    `ours` (start_local_cluster: MALLOC_TRIM_THRESHOLD_ not set, threads set)."""
    import logging

    from distributed import Client, LocalCluster

    from npmobilenet.distributed.cluster import start_local_cluster

    restore_environment()
    if ours:
        cluster = start_local_cluster(workers=1, threads_per_worker=1)
    else:
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
    try:
        with cluster, Client(cluster) as client:
            return client.submit(classify_timed, paths, weights, pure=False).result()
    finally:
        restore_environment()


ENVIRONMENTS = [
    ("plain process", "plain", {"MALLOC_TRIM_THRESHOLD_": None}),
    ("plain, MALLOC_TRIM_THRESHOLD_=65536 (Dask's)", "plain", {"MALLOC_TRIM_THRESHOLD_": "65536"}),
    ("plain, OMP/OPENBLAS/MKL_NUM_THREADS=1 (Dask's)", "plain",
     {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}),
    ("plain, MALLOC_ARENA_MAX=1", "plain", {"MALLOC_TRIM_THRESHOLD_": None, "MALLOC_ARENA_MAX": "1"}),
    ("plain, OMP_WAIT_POLICY=active (GOMP spin)", "plain", {"MALLOC_TRIM_THRESHOLD_": None, "OMP_WAIT_POLICY": "active"}),
    ("Dask worker, Dask's environment", "dask", False),
    ("Dask worker, ours (no MALLOC_TRIM_THRESHOLD_)", "dask", True),
]


def environment_study(paths, weights, repeat):
    results = {name: [] for name, _, _ in ENVIRONMENTS}
    for _ in range(repeat):
        for name, kind, setting in ENVIRONMENTS:
            result = in_plain_process(paths, weights, setting) if kind == "plain" else in_dask_worker(paths, weights, setting)
            results[name].append(result)
            print(f"  {name}: {result['images_per_second']:.1f} images/s", file=sys.stderr, flush=True)
    print(f"\n{len(paths)} images, one thread, median of {repeat}:\n")
    print("| process | images/s | user s | system s | minor faults / image | MALLOC_TRIM_THRESHOLD_, OMP_NUM_THREADS seen |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("images_per_second", "user_s", "system_s",
                                                                  "minor_faults_per_image")}
        print(f"| {name} | {med['images_per_second']:.1f} | {med['user_s']:.2f} | {med['system_s']:.2f} | "
              f"{med['minor_faults_per_image']:.0f} | {runs[0]['malloc_trim_threshold']}, {runs[0]['omp_num_threads']} |")
    return results


# -- scaling ---------------------------------------------------------------------------------------------------
def single_process(paths, weights, threads):
    """Images/s of one process classifying `paths` as `npmobilenet predict` does (warm)."""
    from npmobilenet.io.predict import open_predictor

    predictor = open_predictor(weights, threads=threads)
    predictor.warm_up()
    list(predictor.iter_predictions(paths[:32], topk=1))
    t0 = time.perf_counter()
    count = sum(1 for _ in predictor.iter_predictions(paths, topk=1))
    return count / (time.perf_counter() - t0)


def dask_run(client, paths, weights, out):
    import npmobilenet.distributed as npd

    summary = npd.predict(paths, weights, client, out=out, topk=1, batch_size=32, partition_size=100)
    os.unlink(out)
    return summary["images_per_second"]


def scaling(paths, weights, repeat):
    from distributed import Client

    from npmobilenet.distributed.cluster import start_local_cluster

    rates = {"single process, 1 thread": [], "single process, 2 threads": [], "Dask, 1 worker": [], "Dask, 2 workers": []}
    out = os.path.join(tempfile.mkdtemp(), "results.parquet")
    for _ in range(repeat):
        rates["single process, 1 thread"].append(single_process(paths, weights, 1))
        rates["single process, 2 threads"].append(single_process(paths, weights, 2))
        for workers in (1, 2):
            restore_environment()
            with start_local_cluster(workers=workers) as cluster, Client(cluster) as client:
                dask_run(client, paths, weights, out)            # warm: model on every worker, page cache
                name = f"Dask, {workers} worker" + ("s" if workers > 1 else "")
                rates[name].append(dask_run(client, paths, weights, out))
        print("  " + ", ".join(f"{k}: {v[-1]:.1f}" for k, v in rates.items()), file=sys.stderr, flush=True)
    base = statistics.median(rates["single process, 1 thread"])
    one = statistics.median(rates["Dask, 1 worker"])
    print(f"\n{len(paths)} images, median of {repeat} (images/s; ratio to the single process on 1 thread):\n")
    print("| run | images/s | vs single process | vs 1 worker |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {rate / one:.2f}x |")
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"where the images and model are made (default {DEFAULT_DATA})")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--environment", action="store_true", help="a Dask worker against a plain process")
    parser.add_argument("--classify-timed", nargs=2, metavar=("PATHS_JSON", "WEIGHTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.classify_timed:
        with open(args.classify_timed[0]) as f:
            print(json.dumps(classify_timed(json.load(f), args.classify_timed[1])))
        return 0
    paths, weights = make_data(args.data, args.images, args.arch)
    print(f"{args.arch} 1.0 random weights, {len(paths)} JPEGs 256x256 -> 224; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    if args.environment:
        environment_study(paths, weights, args.repeat)
    else:
        scaling(paths, weights, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
