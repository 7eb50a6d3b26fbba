"""`npmobilenet eval CHECKPOINT --data ...`: top-1/top-5 accuracy, loss and confusion matrix of a
float or int8 checkpoint on the data it was trained for (`npmobilenet.training.evaluate`)."""
import sys


def add_arguments(parser):
    parser.add_argument("checkpoint", help="checkpoint .npz written by `npmobilenet train` or `demo`")
    parser.add_argument(
        "--data", required=True,
        help="'digits' (its held-out test split), 'cifar10:DIR' (the test batch), or an image folder: DIR/val/ or "
        "DIR/test/ if present, else the split of DIR/<class>/ that `train` held out",
    )
    parser.add_argument("--resolution", type=int, default=None, help="resize images to this size (default: as trained)")
    parser.add_argument("--batch-size", type=int, default=256)


def run(args):
    from npmobilenet.compression.qmodel import QuantizedModel
    from npmobilenet.io.checkpoint import load_with_meta
    from npmobilenet.training.augment import preprocessing
    from npmobilenet.training.data import as_dataset, datasets_from_spec
    from npmobilenet.training.evaluation import evaluate, format_confusion

    model, meta = load_with_meta(args.checkpoint)
    config, kind = model.config, "int8" if isinstance(model, QuantizedModel) else "float32"
    resolution = args.resolution or meta.get("resolution")
    same_data = meta.get("data") == args.data
    # the split `train` held out when this is the data it trained on; otherwise all of a folder
    everything, data = datasets_from_spec(
        args.data, resolution, val_fraction=meta.get("val_fraction", 0.1) if same_data else 0.0,
        split_seed=meta.get("split_seed", 0),
    )
    data = data if data is not None else everything
    transform = preprocessing(resolution, meta.get("mean"), meta.get("std"))
    result = evaluate(model, data, args.batch_size, transform)
    c = config
    print(f"{args.checkpoint}: {kind} {c['arch']} width {c['width']}, {c['num_classes']} classes; {result['count']} images")
    print(f"top-1 accuracy {100 * result['top1']:.2f}%")
    print(f"top-5 accuracy {100 * result['top5']:.2f}%")
    print(f"loss {result['loss']:.4f}")
    print(format_confusion(result["confusion"], as_dataset(data).classes))
    sys.stdout.flush()
    return 0
