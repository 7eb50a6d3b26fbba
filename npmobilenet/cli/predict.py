"""`npmobilenet predict IMAGES_OR_DIRS (--model NAME | --weights FILE) [--topk K] [--json | --csv OUT]
[--threads N] [--draw DIR] [--min-score S]`: classify images, or segment them / detect objects in
them with LR-ASPP / SSDLite weights (`npmobilenet.io.predict`).

    npmobilenet predict cat.jpg photos/ 'shots/**/*.png' --model mobilenet_v2.IMAGENET1K_V1
    npmobilenet predict digits/ --weights digits.npz --csv predictions.csv
    npmobilenet predict street.jpg --model lraspp_mobilenet_v3_large.COCO_WITH_VOC_LABELS_V1 --draw out/
    npmobilenet predict street.jpg --model ssdlite320_mobilenet_v3_large.COCO_V1 --draw out/ --json

Segmentation prints each image's classes by pixel share and, with --draw DIR, writes
DIR/NAME.mask.png (the mask over the image); detection prints the boxes scoring at least
--min-score (in the image's pixels) and writes DIR/NAME.boxes.png and DIR/NAME.boxes.json.

Directories are walked and globs expanded; images stream through the fused model in batches.
An npmobilenet checkpoint's stored resolution, mean, std and class names are used, a registry
name's own preprocessing; the flags override them. Kernel compilation happens once, announced,
before the timed inference.
"""
import csv
import json
import os
import sys
import threading
import time

from npmobilenet.cli.options import add_threads_argument, add_weights_arguments
from npmobilenet.io.images import INTERPOLATIONS

CSV_FIELDS = ("path", "rank", "index", "label", "probability", "error")


def add_arguments(parser):
    parser.add_argument("images", nargs="+", metavar="IMAGES_OR_DIRS",
                        help="image files, directories (walked recursively) or globs ('photos/**/*.jpg')")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="NAME", help="registry weights, e.g. mobilenet_v2.IMAGENET1K_V1 "
                        "(`npmobilenet download --list`)")
    source.add_argument("--weights", metavar="FILE",
                        help="npmobilenet .npz (float or int8), or torchvision/timm .pth/.safetensors (or a registry name)")
    add_weights_arguments(parser)
    parser.add_argument("--topk", type=int, default=None, help="classes to show per image (default 5; classifiers)")
    parser.add_argument("--draw", metavar="DIR", default=None,
                        help="segmentation/detection: write each image's mask or boxes drawn over it (PNG; "
                        "detection also the boxes as JSON) to DIR")
    parser.add_argument("--min-score", type=float, default=None,
                        help="detection: the lowest score of a box reported and drawn (default 0.5)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")
    out.add_argument("--csv", metavar="OUT", help="write CSV rows (path, rank, index, label, probability, error) to OUT")
    parser.add_argument("--labels", default=None, metavar="FILE", help="class names, one per line (default: the weights')")
    parser.add_argument("--resize", type=int, default=None, help="shorter side after resizing (default: the weights')")
    parser.add_argument("--crop", type=int, default=None, help="centre crop size (default: the weights')")
    parser.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"))
    parser.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"))
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default=None)
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    add_threads_argument(parser)
    parser.add_argument("--engine", choices=("local", "dask"), default="local",
                        help="local (default), or dask: a Dask cluster (`npmobilenet.distributed`)")
    try:
        from npmobilenet.cli import distributed
    except ModuleNotFoundError as exc:
        if exc.name != "npmobilenet.cli.distributed":
            raise
    else:
        distributed.add_arguments(parser)


def _announce_if_slow(seconds=0.5):
    """A timer that says kernels are compiling if the warm-up takes longer than `seconds` (with a
    warm Numba cache it does not, and nothing is said)."""
    timer = threading.Timer(seconds, lambda: print("compiling kernels (first run only)...", file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    return timer


def format_rows(row, width=None):
    """An image's result as aligned lines: rank, probability, label, class index."""
    if row["error"] is not None:
        return [f"{row['path']}: error: {row['error']}"]
    names = [t["label"] if t["label"] is not None else f"class {t['index']}" for t in row["top"]]
    width = width or max((len(n) for n in names), default=0)
    lines = [row["path"]]
    for t, name in zip(row["top"], names):
        lines.append(f"  {t['rank']:>2}  {100 * t['probability']:6.2f}%  {name:<{width}}  {t['index']:>5}")
    return lines


def run(args):
    if args.engine == "dask":
        from npmobilenet.cli import distributed

        if args.draw is not None or args.min_score is not None:
            raise ValueError("--draw and --min-score belong to the local engine (segmentation and detection weights)")
        args.topk = 5 if args.topk is None else args.topk

        return distributed.run(args)
    # the Dask engine's flags (cli/distributed.py) mean nothing to the local engine: refuse, not ignore
    given = [flag for flag, default in (("--scheduler", None), ("--workers", None), ("--out", None),
                                        ("--resume", False), ("--threads-per-worker", 1), ("--partition-size", 256))
             if getattr(args, flag[2:].replace("-", "_"), default) != default]
    if given:
        raise ValueError(f"{', '.join(given)} belong(s) to --engine dask; without it, "
                         "predict prints its results (or writes --csv OUT)")
    from npmobilenet.io.predict import iter_image_paths, open_predictor
    from npmobilenet.io.sources import describe

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.topk is not None and args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    if args.min_score is not None and not 0 <= args.min_score <= 1:
        raise ValueError(f"--min-score must be in [0, 1], got {args.min_score}")
    if args.draw is not None and not os.path.isdir(args.draw):
        raise FileNotFoundError(f"--draw {args.draw}: not a directory")
    weights = args.model or args.weights
    if args.csv:
        from npmobilenet.io.files import check_output

        check_output(args.csv, [weights, *args.images], "--csv")
    t0 = time.perf_counter()
    predictor = open_predictor(weights, arch=args.arch, width=args.width, tf=args.tf, resize=args.resize,
                               crop=args.crop, mean=args.mean, std=args.std, interpolation=args.interpolation,
                               labels=args.labels, threads=args.threads, batch_size=args.batch_size,
                               min_score=args.min_score)
    load_s = time.perf_counter() - t0
    if getattr(predictor, "task", "classification") != "classification":
        return _run_dense(args, predictor, weights, load_s)
    if args.draw is not None:
        raise ValueError("--draw applies to segmentation and detection weights (LR-ASPP, SSDLite), not a classifier")
    args.topk = 5 if args.topk is None else args.topk
    warm_s, rows, images, failed, predict_s = _stream(
        args, lambda notes: predictor.iter_predictions(iter_image_paths(args.images), args.topk, notes=notes),
        predictor, keep=bool(args.json or args.csv), format_row=format_rows)
    config = predictor.model.config
    timing = {"load_weights_s": round(load_s, 4), "warm_up_s": round(warm_s, 4), "predict_s": round(predict_s, 4),
              "images": images, "failed": failed}
    p = predictor.preprocess
    preprocess = {"resize": p.resize, "crop": p.crop, "interpolation": p.interpolation,
                  "mean": list(p.mean), "std": list(p.std)}
    if args.json:
        print(json.dumps({"weights": weights, "arch": config["arch"], "width": config["width"],
                          "num_classes": config["num_classes"], "preprocess": preprocess,
                          "results": rows, "time": timing}, indent=1))
    elif args.csv:
        from npmobilenet.io.files import atomic_write

        def write(f):   # the whole file at the end, atomically: a failed run leaves no half-written CSV
            import io

            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            writer = csv.DictWriter(text, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for row in rows:
                if row["error"] is not None:
                    writer.writerow({"path": row["path"], "error": row["error"]})
                for t in row["top"]:
                    writer.writerow({"path": row["path"], "rank": t["rank"], "index": t["index"],
                                     "label": "" if t["label"] is None else t["label"],
                                     "probability": repr(t["probability"]), "error": ""})
            text.flush()
            text.detach()

        atomic_write(args.csv, write)
        print(f"wrote {args.csv}: {images - failed} image(s), top {args.topk}", file=sys.stderr)
    if not args.json:
        print(f"{describe(predictor.model, predictor.meta)}: {images - failed} image(s) in {predict_s:.3f} s "
              f"({preprocess['resize']}/{preprocess['crop']} {preprocess['interpolation']}; weights loaded in "
              f"{load_s:.3f} s, kernels ready in {warm_s:.3f} s)" + (f"; {failed} failed" if failed else ""),
              file=sys.stderr if args.csv else sys.stdout)
    return 1 if failed else 0


def format_dense_row(row):
    """A segmented or detected image's result as lines."""
    if row["error"] is not None:
        return [f"{row['path']}: error: {row['error']}"]

    def name(item):
        return item["label"] if item["label"] is not None else f"class {item['index']}"

    if "classes" in row:
        lines = [f"{row['path']}: " + ", ".join(f"{name(c)} {100 * c['fraction']:.1f}%" for c in row["classes"])]
    else:
        lines = [f"{row['path']}: {len(row['detections'])} box(es)"]
        lines += [f"  {d['score']:.3f}  {name(d):<16} [{', '.join(f'{v:.1f}' for v in d['xyxy'])}]"
                  for d in row["detections"]]
    if row["drawn"] is not None:
        lines.append(f"  drawn: {row['drawn']}" + (f", boxes: {row['boxes_json']}" if row.get("boxes_json") else ""))
    return lines


def _stream(args, predictions, predictor, keep, format_row):
    """Warm the kernels (announced when slow, not timed as inference), then stream `predictions(notes)`:
    notes and per-image errors to stderr, rows kept (`keep`, for --json/--csv) or printed as they
    come. Returns (warm-up s, kept rows, images, failed, predict s)."""
    timer = _announce_if_slow()
    try:
        warm_s = predictor.warm_up()
    finally:
        timer.cancel()
    notes, rows, failed, images = [], [], 0, 0
    t1 = time.perf_counter()
    for row in predictions(notes):
        for path, note in notes:
            print(f"npmobilenet predict: {path}: {note}", file=sys.stderr)
        notes.clear()
        images += 1
        if row["error"] is not None:
            failed += 1
            print(f"npmobilenet predict: {row['path']}: {row['error']}", file=sys.stderr)
        if keep:
            rows.append(row)
        elif row["error"] is None:
            print("\n".join(format_row(row)), flush=True)
    predict_s = time.perf_counter() - t1
    if images == 0:
        raise ValueError(f"no images found in {' '.join(args.images)}")
    return warm_s, rows, images, failed, predict_s


def _run_dense(args, predictor, weights, load_s):
    """predict with LR-ASPP or SSDLite weights: a mask or boxes per image (`io.predict.DensePredictor`)."""
    from npmobilenet.io.predict import iter_image_paths
    from npmobilenet.io.sources import describe

    task = predictor.task
    given = [flag for flag, value in (("--csv", args.csv), ("--topk", args.topk)) if value is not None]
    if task == "segmentation" and args.min_score is not None:
        given.append("--min-score")
    if given:
        raise ValueError(f"{', '.join(given)} do(es) not apply to {task}: it prints each image's "
                         + ("classes" if task == "segmentation" else "boxes") + " (or --json), and --draw DIR draws them")
    warm_s, rows, images, failed, predict_s = _stream(
        args, lambda notes: predictor.iter_predictions(iter_image_paths(args.images), args.draw, notes),
        predictor, keep=bool(args.json), format_row=format_dense_row)
    config = predictor.model.config
    timing = {"load_weights_s": round(load_s, 4), "warm_up_s": round(warm_s, 4), "predict_s": round(predict_s, 4),
              "images": images, "failed": failed}
    if args.json:
        print(json.dumps({"weights": weights, "arch": config["arch"], "task": task, "width": config["width"],
                          "num_classes": config["num_classes"], "min_score": predictor.min_score if task == "detection"
                          else None, "results": rows, "time": timing}, indent=1))
    else:
        print(f"{describe(predictor.model, predictor.meta)}: {task}, {images - failed} image(s) in {predict_s:.3f} s "
              f"(weights loaded in {load_s:.3f} s, kernels ready in {warm_s:.3f} s)"
              + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0
