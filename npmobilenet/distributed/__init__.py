"""Batch prediction and evaluation on a Dask cluster (the optional extra `npmobilenet[dask]`).

    predict(paths, weights, client=None, out=None, ...)  -> DataFrame, or a summary after writing
                                                            `out` (.parquet or .csv) partition by
                                                            partition
    evaluate(folder, weights, client=None, ...)          -> top-1/top-5 over a labelled folder

Paths (files, directories walked recursively, globs: `npmobilenet.io.predict.iter_image_paths`)
are listed lazily and cut into partitions of `partition_size` paths; each partition is one Dask
task, run by the same `Predictor` single-process prediction uses (`worker.classify_partition`), so
the rows are the ones `open_predictor(...).predict_files(paths)` gives. Each worker process loads
the model once and warms it (`plugin.ModelPlugin`). The cluster: `client` (a
`distributed.Client`), else `scheduler` (the address of a running one), else a `LocalCluster` of
`workers` processes started for the call and closed after it (`cluster.py`).

Importing this package needs no Dask; calling its functions does (ImportError naming the install).
"""
import os
import time

from npmobilenet.distributed.cluster import dask_client, require_dask
from npmobilenet.distributed.results import PartStore, columns_to_frame, rows_to_columns
from npmobilenet.distributed.stream import Progress, partitions_of, run_partitions
from npmobilenet.distributed.worker import ModelSpec, worker_probe

__all__ = ["predict", "evaluate"]


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _read_labels(labels):
    """Class names as a tuple (a list given, or a file read here, on the client: the workers need
    not see it), or None."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        with open(os.fspath(labels), encoding="utf-8") as f:
            return tuple(line.rstrip("\n") for line in f if line.strip())
    return tuple(str(label) for label in labels)


def model_spec(weights, *, arch=None, width=None, tf=False, resize=None, crop=None, mean=None, std=None,
               interpolation=None, labels=None, threads=None):
    """The `ModelSpec` every worker opens: open_predictor's arguments, opened here on the client
    first (a clear error before any worker starts: a missing file, a wrong --arch, labels that do
    not fit). A file's path is made absolute: workers find it on shared storage, at the same path."""
    if weights is None:
        raise ValueError("weights must be a weights file or a registry name, got None")
    weights = os.fspath(weights)
    if os.path.exists(weights):
        weights = os.path.abspath(weights)
    spec = ModelSpec(weights, arch, width, bool(tf), resize, crop, tuple(mean) if mean is not None else None,
                     tuple(std) if std is not None else None, interpolation, _read_labels(labels), threads)
    spec.open(threads=1, fuse=False)
    return spec


def _settings(spec, partition_size):
    return {"weights": spec.weights, "model": repr(spec), "partition_size": partition_size}


def _register_model(client, spec):
    """Load and warm the model on every worker (and on workers that join later); seconds taken."""
    from npmobilenet.distributed.plugin import ModelPlugin

    plugin = ModelPlugin(spec)
    t0 = time.perf_counter()
    try:
        client.register_plugin(plugin)
    except BaseException:
        client.unregister_worker_plugin(plugin.name)   # else workers joining later would fail too
        raise
    return time.perf_counter() - t0


def predict(paths, weights, client=None, *, out=None, topk=1, batch_size=32, partition_size=256, resume=False,
            scheduler=None, workers=None, threads_per_worker=1, progress=False, **model_options):
    """Classify every image of `paths` on a Dask cluster.

    paths: a path, directory, glob or an iterable of them (listed lazily). weights: a weights
    file every worker can read, or a registry name. model_options: open_predictor's `arch`,
    `width`, `tf`, `resize`, `crop`, `mean`, `std`, `interpolation`, `labels`, `threads`.
    topk: classes per image (columns label, class_index, probability; then label_2, ... ).
    batch_size: images per forward pass on a worker; partition_size: images per task.
    out: None, to return a pandas DataFrame (all rows in memory); or a .parquet / .csv path, written
    partition by partition (memory stays flat) and `resume=True` to skip partitions a stopped run
    wrote. progress: True for a progress bar, or a callable(images_done, partitions_done).

    Returns the DataFrame (its `attrs["run"]` the summary below), or, with `out`, the summary:
    {"out", "images", "errors", "partitions", "skipped_partitions", "seconds", "images_per_second",
    "workers", "threads", "warm_up_seconds", "workers_without_numba_cache"}. Rows keep the listing's order. An unreadable image is
    a row with `error` set; a worker dying mid-run costs its partitions a re-run elsewhere.
    """
    require_dask()
    topk = _positive_int(topk, "topk")
    batch_size = _positive_int(batch_size, "batch_size")
    partition_size = _positive_int(partition_size, "partition_size")
    if resume and out is None:
        raise ValueError("resume=True needs out= (the file whose parts a stopped run left)")
    from npmobilenet.io.predict import iter_image_paths

    spec = model_spec(weights, **model_options)
    store = None
    if out is not None:
        from npmobilenet.io.files import check_output
        from npmobilenet.distributed.results import output_format

        output_format(out)
        inputs = [paths] if isinstance(paths, (str, os.PathLike)) else []
        check_output(out, [weights, *inputs], "out")
        store = PartStore(out, topk, _settings(spec, partition_size), resume)

    frames, errors = {}, [0]

    def handle(index, part_paths, rows):
        columns = rows_to_columns(rows, topk)
        errors[0] += sum(error is not None for error in columns["error"])
        if store is not None:
            store.write(index, part_paths, columns)
        else:
            frames[index] = columns

    def pending(listing):
        for index, part_paths in listing:
            if store is None or not store.done(index, part_paths):
                yield index, part_paths

    with dask_client(client, scheduler, workers, threads_per_worker) as active:
        warm_s = _register_model(active, spec)
        probes = active.run(worker_probe)
        bar = Progress(progress)
        try:
            run = run_partitions(active, spec, pending(partitions_of(iter_image_paths(paths), partition_size)),
                                 topk, batch_size, handle, bar)
        finally:
            bar.close()
        nthreads = active.nthreads()
    summary = {"out": out, "images": run["images"], "errors": errors[0], "partitions": run["partitions"],
               "skipped_partitions": store.skipped if store is not None else 0, "seconds": run["seconds"],
               "images_per_second": run["images"] / run["seconds"] if run["seconds"] > 0 else 0.0,
               "workers": len(nthreads), "threads": sum(nthreads.values()), "warm_up_seconds": warm_s,
               "workers_without_numba_cache": sum(p["numba_cache_dir"] is None for p in probes.values())}
    if store is not None:
        if not store.names:
            raise ValueError(f"no images found in {paths!r}")
        store.finish()
        return summary
    if not frames:
        raise ValueError(f"no images found in {paths!r}")
    columns = {name: [v for index in sorted(frames) for v in frames[index][name]] for name in next(iter(frames.values()))}
    frame = columns_to_frame(columns, topk)
    frame.attrs["run"] = summary
    return frame


def _labelled_images(folder, classes):
    """(path, class index) of every image under folder/<class>/, class directories in sorted
    order; a class's index is its position in `classes` when given, else in the sorted names."""
    from npmobilenet.io.predict import iter_image_paths

    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise ValueError(f"{folder} has no class directories (expected {folder}/<class>/<image>)")
    order = list(classes) if classes is not None else names
    index_of = {name: i for i, name in enumerate(order)}
    missing = [name for name in names if name not in index_of]
    if missing:
        raise ValueError(f"class directories {missing[:5]} of {folder} are not in classes")

    def listing():
        for name in names:
            for path in iter_image_paths(os.path.join(folder, name)):
                yield path, index_of[name]

    return order, listing()


def evaluate(folder, weights, client=None, *, classes=None, batch_size=32, partition_size=256,
             scheduler=None, workers=None, threads_per_worker=1, progress=False, **model_options):
    """Top-1 and top-5 accuracy of `weights` over the labelled image folder `folder/<class>/...`,
    on a Dask cluster (cluster and model arguments as `predict`).

    classes: the class directory names in the model's class order (default: the directories'
    names sorted, as `npmobilenet train` numbers an image folder). Returns {"count" (images
    scored), "errors" (unreadable images, not scored), "top1", "top5", "per_class": {name:
    {"count", "top1", "top5"}}, "seconds", "images_per_second", "workers", "warm_up_seconds"}.
    """
    require_dask()
    batch_size = _positive_int(batch_size, "batch_size")
    partition_size = _positive_int(partition_size, "partition_size")
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder {folder} is not a directory")
    order, labelled = _labelled_images(folder, classes)
    spec = model_spec(weights, **model_options)
    truth = {}              # partition index -> class indices of its images (in flight only)
    counts = {name: {"count": 0, "top1": 0, "top5": 0} for name in order}
    errors = [0]

    def partitions():
        for index, items in partitions_of(labelled, partition_size):
            truth[index] = [label for _, label in items]
            yield index, [path for path, _ in items]

    def handle(index, paths, rows):
        for row, label in zip(rows, truth.pop(index)):
            if row["error"] is not None:
                errors[0] += 1
                continue
            predicted = [entry["index"] for entry in row["top"]]
            tally = counts[order[label]]
            tally["count"] += 1
            tally["top1"] += int(predicted[:1] == [label])
            tally["top5"] += int(label in predicted[:5])

    with dask_client(client, scheduler, workers, threads_per_worker) as active:
        warm_s = _register_model(active, spec)
        bar = Progress(progress)
        try:
            run = run_partitions(active, spec, partitions(), 5, batch_size, handle, bar)
        finally:
            bar.close()
        workers_used = len(active.nthreads())
    count = sum(c["count"] for c in counts.values())
    if count == 0:
        raise ValueError(f"no readable images under {folder}/<class>/ ({errors[0]} unreadable)")
    per_class = {name: {"count": c["count"], "top1": c["top1"] / c["count"] if c["count"] else None,
                        "top5": c["top5"] / c["count"] if c["count"] else None}
                 for name, c in counts.items() if c["count"] or classes is None}
    return {"count": count, "errors": errors[0],
            "top1": sum(c["top1"] for c in counts.values()) / count,
            "top5": sum(c["top5"] for c in counts.values()) / count,
            "per_class": per_class, "seconds": run["seconds"],
            "images_per_second": run["images"] / run["seconds"] if run["seconds"] > 0 else 0.0,
            "workers": workers_used, "warm_up_seconds": warm_s}
