"""Evaluation: loss, top-1/top-5 accuracy and the confusion matrix of a model on a dataset.

Also the `npmobilenet eval CHECKPOINT --data ...` command.
"""
import sys

import numpy as np

from npmobilenet.training.data import BatchLoader, as_dataset
from npmobilenet.training.loss import softmax_cross_entropy_forward


def predict_logits(model, images, batch_size=256, transform=None):
    """Logits `(N, K)` of `images` in eval mode (the model's mode is restored afterwards)."""
    loader = BatchLoader((images, np.zeros(len(images), dtype=np.int64)), batch_size, transform=transform)
    was_training = model.training
    model.eval()
    try:
        return np.concatenate([model(x) for x, _ in loader.batches(0)])
    finally:
        model.train(was_training)


def evaluate(model, data, batch_size=256, transform=None, label_smoothing=0.0):
    """Evaluate `model` (in eval mode; its mode is restored) on `data`.

    data: an ArrayDataset or `(images (N, H, W, C), labels (N,))`; transform: `t(x, rng)` applied
    to each batch (e.g. the normalisation used in training; never random here).
    Returns a dict: `loss` (mean cross-entropy, with `label_smoothing`), `top1`, `top5`
    (fractions in [0, 1]; top5 is top-min(5, K)), `confusion` (K x K int64, rows the true class,
    columns the predicted one), `count`.
    """
    dataset = as_dataset(data)
    loader = BatchLoader(dataset, batch_size, transform=transform)
    num_classes = dataset.num_classes
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    loss_sum, top5_hits, count = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        for x, y in loader.batches(0):
            logits = model(x)
            if logits.shape[1] != num_classes:
                raise ValueError(f"the model has {logits.shape[1]} outputs but the data has {num_classes} classes")
            loss, _ = softmax_cross_entropy_forward(logits, y, label_smoothing)
            loss_sum += loss * len(y)
            k = min(5, num_classes)
            topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
            top5_hits += int((topk == y[:, None]).any(axis=1).sum())
            np.add.at(confusion, (y, logits.argmax(axis=1)), 1)
            count += len(y)
    finally:
        model.train(was_training)
    return {
        "loss": loss_sum / count,
        "top1": float(np.trace(confusion) / count),
        "top5": top5_hits / count,
        "confusion": confusion,
        "count": count,
    }


def format_confusion(confusion, classes, max_classes=20):
    """The confusion matrix as text (rows: true class, columns: predicted), or a note if too large."""
    k = confusion.shape[0]
    if k > max_classes:
        return f"(confusion matrix not shown: {k} classes > {max_classes})"
    names = [str(c)[:8] for c in classes]
    width = max(max(len(n) for n in names), len(str(int(confusion.max()))), 3)
    lines = ["true \\ predicted", " " * width + " " + " ".join(n.rjust(width) for n in names)]
    for name, row in zip(names, confusion):
        lines.append(name.rjust(width) + " " + " ".join(str(int(v)).rjust(width) for v in row))
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------
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
    from npmobilenet.training.checkpoint import load_checkpoint
    from npmobilenet.training.data import datasets_from_spec
    from npmobilenet.training.augment import preprocessing

    from npmobilenet.compression import qformat

    if qformat.is_quantized(args.checkpoint):
        model = qformat.load_quantized(args.checkpoint)
        meta, config = model.info.get("meta", {}), model.config
        kind = "int8"
    else:
        ckpt = load_checkpoint(args.checkpoint)
        model, meta, config = ckpt.model, ckpt.meta, ckpt.config
        kind = "float32"
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
