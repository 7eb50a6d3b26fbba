"""`npmobilenet compress quantize|prune|factorize CHECKPOINT OUT [options]`.

    compress quantize  CKPT OUT --data digits [--calibration-images 256] [--per-tensor] [--method minmax|percentile|mse]
    compress prune     CKPT OUT --fraction 0.5 [--criterion bn|l1] [--data digits --epochs 3]
    compress prune     CKPT OUT --sparsity 0.5 --unstructured [--data digits --epochs 3]
    compress factorize CKPT OUT [--energy 0.9] [--rank NAME=R ...] [--data digits --epochs 3]

The data (`--data`: 'digits', 'cifar10:DIR' or an image folder) is read and preprocessed as the
checkpoint's metadata says (resolution, mean/std, split seed), as `npmobilenet eval` does:
calibration and fine-tuning use its training split, the accuracy report (`--eval`) its test split.
"""
import os
import sys

import numpy as np

from npmobilenet.cli.options import add_threads_argument, add_weights_arguments, threads_context


def add_arguments(parser):
    sub = parser.add_subparsers(dest="method_name", metavar="{quantize,prune,factorize}")
    sub.required = True

    def common(p, data_required=False):
        p.add_argument("checkpoint", help="float checkpoint .npz (from `npmobilenet train` or `demo`)")
        p.add_argument("out", help="where to write the compressed checkpoint (.npz)")
        p.add_argument("--data", required=data_required, default=None,
                       help="'digits', 'cifar10:DIR' or an image folder: calibration/fine-tuning (train split) and --eval (test split)")
        p.add_argument("--eval", action="store_true", help="report top-1 before and after on the test split")
        p.add_argument("--batch-size", type=int, default=64)
        add_weights_arguments(p)
        add_threads_argument(p)

    q = sub.add_parser("quantize", help="int8 post-training quantization (integer-only inference)")
    common(q, data_required=True)
    q.add_argument("--calibration-images", type=int, default=256, help="training images to calibrate on (default 256)")
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per output channel)")
    q.add_argument("--method", default="minmax", choices=("minmax", "percentile", "mse"), help="activation range method")
    q.add_argument("--percentile", type=float, default=99.99)

    p = sub.add_parser("prune", help="structured channel pruning (default) or unstructured magnitude pruning")
    common(p)
    p.add_argument("--fraction", type=float, default=None, help="fraction of expansion channels to remove, in [0, 1)")
    p.add_argument("--criterion", default="bn", choices=("bn", "l1"), help="channel ranking: BN |gamma| or filter L1 norm")
    p.add_argument("--unstructured", action="store_true", help="global magnitude pruning of all weights instead")
    p.add_argument("--sparsity", type=float, default=None, help="with --unstructured: fraction of weights set to zero")
    p.add_argument("--scope", default="normalized", choices=("normalized", "global", "layer"),
                   help="with --unstructured: one threshold on |w|/RMS(layer) (default), on |w|, or per layer")
    _finetune_arguments(p)

    f = sub.add_parser("factorize", help="truncated-SVD factorisation of 1x1 convolutions and the classifier")
    common(f)
    f.add_argument("--energy", type=float, default=0.9, help="fraction of squared singular values kept (default 0.9)")
    f.add_argument("--rank", action="append", default=[], metavar="NAME=R", help="fix a layer's rank, e.g. head=64")
    _finetune_arguments(f)


def _finetune_arguments(p):
    p.add_argument("--recalibrate-images", type=int, default=512,
                   help="with --data: re-estimate batch-norm statistics on this many training images first (0: no)")
    p.add_argument("--epochs", type=int, default=0, help="fine-tuning epochs on --data (default 0: none)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (AdamW, cosine decay)")
    p.add_argument("--seed", type=int, default=0)


# -- data as the checkpoint was trained ------------------------------------------------------------
def _data(meta, spec, split):
    """(dataset, transform) of `spec`'s "train" or "test" split, as `npmobilenet eval` reads it."""
    from npmobilenet.training import data
    from npmobilenet.training.augment import preprocessing

    resolution, seed = meta.get("resolution"), meta.get("split_seed", 0)
    if hasattr(data, "datasets_from_spec"):
        # the split training held out, when this is the data it trained on (as `eval` does)
        val_fraction = meta.get("val_fraction", 0.1) if meta.get("data") == spec else 0.0
        train, held_out = data.datasets_from_spec(spec, resolution, val_fraction=val_fraction, split_seed=seed)
        dataset = train if split == "train" or held_out is None else held_out
    else:
        dataset = data.dataset_from_spec(spec, split, resolution=resolution, seed=seed)
    return dataset, preprocessing(resolution, meta.get("mean"), meta.get("std"))


def calibration_images(meta, spec, count, seed=0):
    """`count` preprocessed float images drawn (seeded) from the training split of `spec`."""
    from npmobilenet.training.data import as_dataset

    if count < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {count}")
    dataset, transform = _data(meta, spec, "train")
    dataset = as_dataset(dataset)
    index = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:count])
    images, _ = dataset[index]
    return np.ascontiguousarray(transform(images, None), dtype=np.float32)


def _top1(model, meta, spec, batch_size=256):
    from npmobilenet.training.evaluation import evaluate

    dataset, transform = _data(meta, spec, "test")
    return evaluate(model, dataset, batch_size, transform)["top1"]


def _finetune(model, meta, args, masks=None):
    if args.data is not None and args.recalibrate_images > 0:
        from npmobilenet.compression.prune import recalibrate_batch_norm

        recalibrate_batch_norm(model, calibration_images(meta, args.data, args.recalibrate_images, args.seed))
    if not args.epochs:
        return model
    if args.data is None:
        raise ValueError("fine-tuning (--epochs) needs --data")
    from npmobilenet.training import AdamW, CosineLR, train

    dataset, transform = _data(meta, args.data, "train")
    optimizer = AdamW(model.named_parameters(), lr=args.lr, weight_decay=0.01)
    steps = max(1, len(dataset) // args.batch_size)
    schedule = CosineLR.from_epochs(args.lr, args.epochs, steps)
    if masks is not None:
        from npmobilenet.compression.prune import MaskedOptimizer

        optimizer = MaskedOptimizer(optimizer, model, masks)
    train(model, dataset, epochs=args.epochs, optimizer=optimizer, schedule=schedule, batch_size=args.batch_size,
          seed=args.seed, transform=lambda x, rng: transform(x, rng), progress="plain")
    return model.eval()


def _size(path):
    return os.path.getsize(path)


def _parse_ranks(items):
    ranks = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--rank must look like NAME=R (e.g. head=64), got {item!r}")
        ranks[name.strip()] = int(value)
    return ranks


def _check_arguments(args):
    """Every argument checked before any work starts (the output path first: never the input)."""
    from npmobilenet.io.files import check_output

    if not os.path.exists(args.checkpoint):
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    check_output(args.out, [args.checkpoint], "OUT")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.eval and args.data is None:
        raise ValueError("--eval needs --data")
    if getattr(args, "epochs", 0) < 0:
        raise ValueError(f"--epochs must be >= 0, got {args.epochs}")
    if getattr(args, "epochs", 0) and args.data is None:
        raise ValueError("fine-tuning (--epochs) needs --data")
    if args.method_name == "quantize" and args.calibration_images < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {args.calibration_images}")
    if args.method_name == "prune" and args.unstructured and args.sparsity is None:
        raise ValueError("--unstructured needs --sparsity (fraction of weights to zero)")
    if args.method_name == "prune" and not args.unstructured and args.fraction is None:
        raise ValueError("prune needs --fraction (of expansion channels to remove), or --unstructured --sparsity")
    if args.method_name == "factorize":
        _parse_ranks(args.rank)


def run(args):
    with threads_context(args.threads):
        return _run(args)


def _run(args):
    from npmobilenet.analysis.summary import summarize
    from npmobilenet.compression.qmodel import is_quantized
    from npmobilenet.io import checkpoint
    from npmobilenet.io.images import IMAGENET_MEAN, IMAGENET_STD
    from npmobilenet.io.sources import open_model

    _check_arguments(args)
    if os.path.exists(args.checkpoint) and is_quantized(args.checkpoint):
        raise ValueError(f"{args.checkpoint} is already an int8 quantized checkpoint; compress the float checkpoint "
                         "it came from")
    # any weights a command reads: an npmobilenet checkpoint, a torchvision/timm file or a registry
    # name (--arch/--width/--tf refused when they contradict it, not ignored)
    model, meta = open_model(args.checkpoint, args.arch, args.width, args.tf)
    source_path = meta["path"]
    if meta["kind"] != "checkpoint":
        # foreign weights record no training data: read --data as the weights' own evaluation
        # preprocessing does (a registry entry's), else at 224 with ImageNet's statistics
        preprocess = meta.get("preprocess") or {}
        meta = {"resolution": preprocess.get("crop", 224), "mean": list(preprocess.get("mean", IMAGENET_MEAN)),
                "std": list(preprocess.get("std", IMAGENET_STD)), "classes": meta.get("classes")}
    # what `eval` and `predict` need to read data as the model was trained: the input side and the split
    keep_meta = {k: meta[k] for k in ("resolution", "mean", "std", "split_seed", "classes", "data", "val_fraction")
                 if meta.get(k) is not None}
    resolution = meta.get("resolution") or 224
    before = _top1(model, meta, args.data) if args.eval else None

    if args.method_name == "quantize":
        from npmobilenet.compression.quantize import quantize

        images = calibration_images(meta, args.data, args.calibration_images, getattr(args, "seed", 0))
        compressed = quantize(model, images, per_channel=not args.per_tensor, method=args.method,
                              percentile=args.percentile, batch_size=args.batch_size)
        compressed.info["meta"] = keep_meta
        compressed.save(args.out)
        macs = compressed.macs((1, resolution, resolution, 3))
        params = compressed.num_parameters()
        kind = f"int8 {'per-tensor' if args.per_tensor else 'per-channel'} ({args.method})"
    else:
        masks = None
        if args.method_name == "prune":
            from npmobilenet.compression import prune

            if args.unstructured:
                compressed = open_model(args.checkpoint)[0]       # a copy to prune in place
                masks = prune.magnitude_prune(compressed, args.sparsity, args.scope)
                kind = f"magnitude-pruned to {prune.sparsity_of(compressed):.1%} sparsity"
            else:
                compressed = prune.prune_channels(model, args.fraction, args.criterion)
                kind = f"{args.fraction:.0%} of expansion channels removed ({args.criterion})"
        else:
            from npmobilenet.compression.factorize import factorize

            compressed, report = factorize(model, args.energy, _parse_ranks(args.rank))
            done = sum(1 for r in report.values() if r[2] is not None)
            kind = f"{done} layers factorised (energy {args.energy})"
        compressed = _finetune(compressed, meta, args, masks)
        if args.epochs:
            kind += f", fine-tuned {args.epochs} epoch{'s' if args.epochs != 1 else ''}"
        checkpoint.save(compressed, args.out, **keep_meta)
        cost = summarize(compressed, resolution)
        macs, params = cost.macs, cost.params
    base = summarize(model, resolution)
    print(f"{args.checkpoint} -> {args.out}: {kind}")
    print(f"  MACs   {base.macs:>12,} -> {macs:>12,}  ({macs / base.macs:.2f}x)  at {resolution}x{resolution}")
    print(f"  params {base.params:>12,} -> {params:>12,}")
    print(f"  file   {_size(source_path):>12,} -> {_size(args.out):>12,} bytes "
          f"({_size(source_path) / _size(args.out):.2f}x smaller)")
    if args.eval:
        after = _top1(checkpoint.load(args.out), meta, args.data)
        print(f"  top-1  {100 * before:.2f}% -> {100 * after:.2f}%  ({args.data} test split)")
    sys.stdout.flush()
    return 0
