"""`npmobilenet predict IMAGE... --weights FILE`: classify images with any weights file npmobilenet
reads (`npmobilenet.io.predict.classify`).

    npmobilenet predict cat.jpg dog.png --weights mobilenet_v3_large-8738ca79.pth --topk 5
    npmobilenet predict *.jpg --weights model.npz --json
"""
import json
import sys
import time

from npmobilenet.io.images import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, Preprocess


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
    from npmobilenet.compression.qmodel import is_quantized, load_quantized
    from npmobilenet.io.predict import classify
    from npmobilenet.io.weights import from_weights

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    preprocess = Preprocess(args.resize, args.crop, tuple(args.mean), tuple(args.std), args.interpolation)
    labels = None
    if args.labels:
        with open(args.labels, encoding="utf-8") as f:
            labels = [line.rstrip("\n") for line in f if line.strip()]
    t0 = time.perf_counter()
    if is_quantized(args.weights):
        model = load_quantized(args.weights)   # int8, integer-only inference
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
