"""Evaluation: loss, top-1/top-5 accuracy and the confusion matrix of a model on a dataset (the
`npmobilenet eval` command prints them)."""
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
