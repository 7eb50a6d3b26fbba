"""`npmobilenet predict PATHS... (--model NAME | --weights FILE) --engine dask [--scheduler ADDRESS |
--workers N] --out results.parquet|results.csv`: the predict command on a Dask cluster
(`npmobilenet.distributed.predict`). cli/predict.py adds these flags and calls `run` for
`--engine dask`; the model, preprocessing, --topk, --batch-size and --threads flags are predict's.

    npmobilenet predict photos/ --weights model.npz --engine dask --workers 2 --out results.parquet
    npmobilenet predict '/data/**/*.jpg' --model mobilenet_v2.IMAGENET1K_V1 --engine dask \\
        --scheduler tcp://head:8786 --out /data/results.parquet --resume
"""
import json
import sys


def add_arguments(parser):
    group = parser.add_argument_group("with --engine dask (npmobilenet[dask])")
    group.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="join a running Dask cluster (tcp://host:8786); default: start a local one")
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="worker processes of the local cluster (default: one per core)")
    group.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                       help="Dask threads per local worker process (default 1)")
    group.add_argument("--out", metavar="FILE", default=None,
                       help="results.parquet or results.csv, written partition by partition (required)")
    group.add_argument("--resume", action="store_true",
                       help="skip the partitions a stopped run with the same --out already wrote")
    group.add_argument("--partition-size", type=int, default=256, metavar="P",
                       help="images per Dask task (default 256)")


def _check(args):
    if args.out is None:
        raise ValueError("--out results.parquet (or results.csv) is required with --engine dask")
    if getattr(args, "csv", None):
        raise ValueError("--csv belongs to the local engine; with --engine dask write --out results.csv")
    if args.scheduler is not None and args.workers is not None:
        raise ValueError("--scheduler joins a running cluster and --workers starts a local one: give one")
    for flag in ("workers", "threads_per_worker", "partition_size", "batch_size", "topk"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")


def run(args):
    from npmobilenet.distributed import predict

    _check(args)
    try:
        from distributed import KilledWorker
    except ImportError:
        KilledWorker = None
    try:
        summary = predict(
            args.images, args.model or args.weights, out=args.out, topk=args.topk, batch_size=args.batch_size,
            partition_size=args.partition_size, resume=args.resume, scheduler=args.scheduler,
            workers=args.workers, threads_per_worker=args.threads_per_worker, progress=sys.stderr.isatty(),
            arch=args.arch, width=args.width, tf=args.tf, resize=args.resize, crop=args.crop, mean=args.mean,
            std=args.std, interpolation=args.interpolation, labels=args.labels, threads=args.threads)
    except Exception as exc:
        if KilledWorker is not None and isinstance(exc, KilledWorker):   # one line, as every error
            raise ChildProcessError(f"workers kept dying on one partition ({exc}); rerun with --resume "
                                    "to continue") from None
        raise
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=1))
    else:
        skipped = summary["skipped_partitions"]
        print(f"{summary['images']} image(s) in {summary['seconds']:.2f} s: {summary['images_per_second']:.1f} "
              f"images/s on {summary['workers']} worker(s), {summary['threads']} thread(s)"
              + (f"; {summary['errors']} unreadable (rows with an error)" if summary["errors"] else "")
              + (f"; {skipped} partition(s) from the earlier run" if skipped else "")
              + f"; results in {summary['out']}")
    missing = summary.get("workers_without_numba_cache", 0)
    if missing:
        print(f"npmobilenet predict: note: {missing} worker(s) have no NUMBA_CACHE_DIR; each compiles the kernels "
              "into Numba's default cache: start `dask worker` with NUMBA_CACHE_DIR on a node-local disk",
              file=sys.stderr)
    return 0
