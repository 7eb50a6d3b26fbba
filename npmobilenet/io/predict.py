"""Classify image files with a model (the `npmobilenet predict` command).

Images go through `images.Preprocess` (ImageNet's resize 256 / crop 224 / mean-std by default),
are batched, and run through the model in eval mode. A 1000-class model is labelled with the
ImageNet category names (npmobilenet/data/imagenet_classes.txt, torchvision's list); other class
counts print as class indices unless --labels names them.
"""
from importlib import resources

import numpy as np

from npmobilenet.io.images import Preprocess, load_batch


def imagenet_classes():
    """The 1000 ImageNet-1k category names, index order (as torchvision's weights metadata lists them)."""
    text = resources.files("npmobilenet").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    names = text.splitlines()
    if len(names) != 1000:
        raise RuntimeError(f"npmobilenet/data/imagenet_classes.txt has {len(names)} lines, expected 1000")
    return names


def softmax(logits):
    """Row-wise softmax, stable: (N, K) -> (N, K)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z.astype(np.float64))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def top_k(scores, k):
    """Indices (N, k) of the k largest per row, largest first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def classify(model, paths, topk=5, preprocess=Preprocess(), labels=None, batch_size=32, notes=None):
    """Classify image files: a list of {"image", "top": [{"index", "label", "probability"}]}.

    model: in eval mode (this sets it); paths: image files; labels: class names (default: ImageNet's
    for 1000 classes, else None). `notes`, if a list, receives (path, note) for converted images.
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}")
    num_classes = model.config["num_classes"]
    if labels is None and num_classes == 1000:
        labels = imagenet_classes()
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for a model with {num_classes} classes")
    model.eval()
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        logits = model(load_batch(chunk, preprocess, notes))
        probabilities = softmax(logits)
        # rank by logits: probabilities rounded to float32 can tie where the logits do not
        for path, p, best in zip(chunk, probabilities, top_k(logits, topk)):
            results.append({"image": str(path), "top": [
                {"index": int(i), "label": labels[i] if labels is not None else f"class {i}",
                 "probability": float(p[i])} for i in best]})
    return results
