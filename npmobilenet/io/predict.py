"""`npmobilenet predict IMAGE... --weights FILE`: classify images with any weights file npmobilenet reads.

    npmobilenet predict cat.jpg dog.png --weights mobilenet_v3_large-8738ca79.pth --topk 5
    npmobilenet predict *.jpg --weights model.npz --json

Images go through `images.Preprocess` (ImageNet's resize 256 / crop 224 / mean-std by default),
are batched, and run through the model in eval mode. A 1000-class model is labelled with the
ImageNet category names (npmobilenet/data/imagenet_classes.txt, torchvision's list); other class
counts print as class indices unless --labels names them.
"""
import json
import sys
import time
from importlib import resources

import numpy as np

from npmobilenet.io.images import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, Preprocess, load_batch


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


def add_arguments(parser):
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow opens)")
    parser.add_argument("--weights", required=True, metavar="FILE",
                        help="npmobilenet .npz, or torchvision/timm .safetensors/.pth")
    parser.add_argument("--arch", default=None, help="expected architecture (checked against the file)")
    parser.add_argument("--width", type=float, default=None, help="width multiplier, if the file's cannot be inferred")
    parser.add_argument("--tf", action="store_true", help="the weights are one of timm's tf_mobilenetv3_* (see convert --tf)")
    parser.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--labels", default=None, metavar="FILE", help="class names, one per line (default: ImageNet's for 1000 classes)")
    parser.add_argument("--resize", type=int, default=256, help="shorter side after resizing (default 256)")
    parser.add_argument("--crop", type=int, default=224, help="centre crop size (default 224)")
    parser.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN, metavar=("R", "G", "B"))
    parser.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD, metavar=("R", "G", "B"))
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default="bilinear")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")


def run(args):
    from npmobilenet.io.weights import from_weights

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    preprocess = Preprocess(args.resize, args.crop, tuple(args.mean), tuple(args.std), args.interpolation)
    labels = None
    if args.labels:
        with open(args.labels, encoding="utf-8") as f:
            labels = [line.rstrip("\n") for line in f if line.strip()]
    from npmobilenet.compression import qformat

    t0 = time.perf_counter()
    if qformat.is_quantized(args.weights):
        model = qformat.load_quantized(args.weights)   # int8, integer-only inference
    else:
        model = from_weights(args.weights, arch=args.arch, width=args.width, variant="tf" if args.tf else None)
    t1 = time.perf_counter()
    notes = []
    results = classify(model, args.images, args.topk, preprocess, labels, args.batch_size, notes)
    t2 = time.perf_counter()
    for path, note in notes:
        print(f"npmobilenet predict: {path}: {note}", file=sys.stderr)
    config = model.config
    timing = {"load_weights_s": round(t1 - t0, 4), "predict_s": round(t2 - t1, 4), "images": len(results)}
    if args.json:
        print(json.dumps({"weights": args.weights, "arch": config["arch"], "width": config["width"],
                          "results": results, "time": timing}, indent=1))
        return 0
    for result in results:
        print(result["image"])
        for rank, entry in enumerate(result["top"], 1):
            print(f"  {rank}. {entry['probability']:7.2%}  {entry['label']}  ({entry['index']})")
    print(f"{config['arch']} width {config['width']:g}: {len(results)} image(s) in {t2 - t1:.3f} s "
          f"(loading, preprocessing and inference; weights loaded in {t1 - t0:.3f} s)")
    return 0
