"""`npmobilenet eval WEIGHTS --data ... [--arch A] [--width W] [--tf] [--threads N] [--json]`: top-1/top-5
accuracy, loss and confusion matrix of a float or int8 checkpoint on the data it was trained for
(`npmobilenet.training.evaluate`); also of a registry name or a torchvision/timm file
(`npmobilenet.io.sources.open_model`), read at its own crop and normalisation."""
import json
import sys

from npmobilenet.cli.options import add_json_argument, add_threads_argument, add_weights_arguments, threads_context


def add_arguments(parser):
    parser.add_argument("checkpoint", metavar="WEIGHTS",
                        help="checkpoint .npz written by `npmobilenet train` or `demo` (float or int8), a registry "
                        "name, or torchvision/timm weights")
    parser.add_argument(
        "--data", required=True,
        help="'digits' (its held-out test split), 'cifar10:DIR' (the test batch), or an image folder: DIR/val/ or "
        "DIR/test/ if present, else the split of DIR/<class>/ that `train` held out",
    )
    parser.add_argument("--resolution", type=int, default=None, help="resize images to this size (default: as trained)")
    parser.add_argument("--batch-size", type=int, default=256)
    add_weights_arguments(parser)
    add_threads_argument(parser)
    add_json_argument(parser, "the accuracy, loss and confusion matrix")


def run(args):
    from npmobilenet.compression.qmodel import QuantizedModel
    from npmobilenet.io.sources import open_model
    from npmobilenet.training.augment import preprocessing
    from npmobilenet.training.data import as_dataset, datasets_from_spec
    from npmobilenet.training.evaluation import evaluate, format_confusion

    from npmobilenet.ops.geometry import MIN_RESOLUTION

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.resolution is not None and args.resolution < MIN_RESOLUTION:
        raise ValueError(f"--resolution must be at least {MIN_RESOLUTION}, got {args.resolution}")
    model, meta = open_model(args.checkpoint, arch=args.arch, width=args.width, tf=args.tf)
    config, kind = model.config, "int8" if isinstance(model, QuantizedModel) else "float32"
    # registry weights: their crop and normalisation (checkpoints store resolution, mean and std)
    preprocess = meta.get("preprocess") if meta["kind"] == "registry" else None
    resolution = args.resolution or meta.get("resolution") or (preprocess or {}).get("crop")
    mean, std = (preprocess["mean"], preprocess["std"]) if preprocess else (meta.get("mean"), meta.get("std"))
    same_data = meta.get("data") == args.data
    # the split `train` held out when this is the data it trained on; otherwise all of a folder
    everything, data = datasets_from_spec(
        args.data, resolution, val_fraction=meta.get("val_fraction", 0.1) if same_data else 0.0,
        split_seed=meta.get("split_seed", 0),
    )
    data = data if data is not None else everything
    transform = preprocessing(resolution, mean, std)
    with threads_context(args.threads):
        result = evaluate(model, data, args.batch_size, transform)
    c = config
    if args.json:
        print(json.dumps({"weights": args.checkpoint, "kind": kind, "arch": c["arch"], "width": c["width"],
                          "num_classes": c["num_classes"], "data": args.data, "count": result["count"],
                          "top1": result["top1"], "top5": result["top5"], "loss": result["loss"],
                          "classes": list(as_dataset(data).classes), "confusion": result["confusion"].tolist()}))
        return 0
    print(f"{args.checkpoint}: {kind} {c['arch']} width {c['width']}, {c['num_classes']} classes; {result['count']} images")
    print(f"top-1 accuracy {100 * result['top1']:.2f}%")
    print(f"top-5 accuracy {100 * result['top5']:.2f}%")
    print(f"loss {result['loss']:.4f}")
    print(format_confusion(result["confusion"], as_dataset(data).classes))
    sys.stdout.flush()
    return 0
