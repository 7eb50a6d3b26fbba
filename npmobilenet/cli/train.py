"""`npmobilenet train`: train a MobileNet on the digits, CIFAR-10 or an image folder.

    npmobilenet train --data digits --arch mobilenet_v2 --width 0.35 --resolution 32 --epochs 15 \\
        --batch-size 64 --optimizer adamw --lr 0.01 --out digits.npz [--resume digits.npz]

The checkpoint is written atomically after every epoch, with the normalisation and split that
`npmobilenet eval` needs to repeat. `--resume` continues a run to `--epochs` in total.
"""
import contextlib
import sys

AUGMENTATIONS = ("none", "shift", "shift-flip", "resized-crop")


def add_arguments(parser):
    from npmobilenet.models import ARCHS
    from npmobilenet.training.optim import OPTIMIZERS

    parser.add_argument(
        "--data", required=True,
        help="'digits' (scikit-learn's), 'cifar10:DIR' (binary or python batches), or an image folder DIR "
        "(DIR/<class>/*.png|jpg, or DIR/train/<class>/ with DIR/val/<class>/)",
    )
    parser.add_argument("--arch", choices=ARCHS, default="mobilenet_v2", metavar="ARCH", help=f"one of {', '.join(ARCHS)}")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    parser.add_argument("--resolution", type=int, default=None, help="input size (default: 32 for digits and CIFAR, else the images' own)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adamw",
                        help="sgd (Nesterov momentum 0.9), rmsprop (TensorFlow's: decay 0.9, momentum 0.9) or adamw")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: sgd 0.1, rmsprop 0.01, adamw 0.005)")
    parser.add_argument("--weight-decay", type=float, default=None, help="default: sgd/rmsprop 4e-5, adamw 0.05 (never on BN/bias)")
    parser.add_argument("--schedule", choices=("cosine", "step", "exponential", "constant"), default="cosine",
                        help="cosine with warm-up (per step; default), step (x0.1 every third of the run), "
                        "exponential (x0.98 per epoch, V2 paper) or constant")
    parser.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up for the cosine schedule")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--augment", choices=AUGMENTATIONS, default=None,
                        help="default: shift for digits (no flips: digits are not mirror-symmetric), shift-flip otherwise")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held out of an image folder without DIR/val (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation, shuffling, augmentation and dropout seed")
    parser.add_argument("--out", required=True, help="checkpoint path (.npz), rewritten after every epoch")
    parser.add_argument("--resume", default=None, help="checkpoint to continue from (to --epochs in total)")
    parser.add_argument("--progress", choices=("auto", "tqdm", "plain", "none"), default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="Numba and BLAS threads (default: Numba's; 1 gives the same result on every machine)")


def build_transform(kind, resolution, mean, std):
    """The training transform for `--augment kind`, ending in per-channel normalisation."""
    from npmobilenet.training import augment

    pad = max(1, resolution // 16) if kind in ("shift", "shift-flip") else 0
    steps = {
        "none": [],
        "shift": [augment.RandomCrop(resolution, pad)],
        "shift-flip": [augment.RandomCrop(resolution, pad), augment.RandomHorizontalFlip()],
        "resized-crop": [augment.RandomResizedCrop(resolution, scale=(0.25, 1.0)), augment.RandomHorizontalFlip()],
    }[kind]
    return augment.Compose(steps + [augment.Normalize(mean, std)])


def make_schedule(name, lr, epochs, steps_per_epoch, warmup_epochs):
    from npmobilenet.training.schedule import ConstantLR, CosineLR, ExponentialLR, StepLR

    if name == "cosine":
        return CosineLR.from_epochs(lr, epochs, steps_per_epoch, min(warmup_epochs, epochs - 1) if epochs > 1 else 0)
    if name == "step":
        return StepLR(lr, max(1, epochs // 3), 0.1)
    if name == "exponential":
        return ExponentialLR(lr, 0.98)
    return ConstantLR(lr)


DEFAULT_LR = {"sgd": 0.1, "rmsprop": 0.01, "adamw": 0.005}
DEFAULT_WEIGHT_DECAY = {"sgd": 4e-5, "rmsprop": 4e-5, "adamw": 0.05}


def run(args):
    import npmobilenet
    from npmobilenet.ops.geometry import MIN_RESOLUTION
    from npmobilenet.training import augment
    from npmobilenet.training.data import datasets_from_spec
    from npmobilenet.training.loop import NonFiniteLossError, train
    from npmobilenet.training.optim import make_optimizer

    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.resolution is not None and args.resolution < MIN_RESOLUTION:
        raise ValueError(f"--resolution must be at least {MIN_RESOLUTION}, got {args.resolution}")
    train_set, val_set = datasets_from_spec(args.data, args.resolution, args.val_fraction, split_seed=0)
    resolution = train_set.images.shape[1]
    if train_set.images.shape[1] != train_set.images.shape[2]:
        raise ValueError(f"images are {train_set.images.shape[1]}x{train_set.images.shape[2]}: pass --resolution to make them square")
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"images are {resolution}x{resolution}; the models need >= {MIN_RESOLUTION}: pass --resolution")
    mean, std = augment.channel_stats(train_set.images)
    kind = args.augment or ("shift" if args.data == "digits" else "shift-flip")
    transform = build_transform(kind, resolution, mean, std)

    model = npmobilenet.build(args.arch, width=args.width, num_classes=train_set.num_classes, seed=args.seed)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    decay = args.weight_decay if args.weight_decay is not None else DEFAULT_WEIGHT_DECAY[args.optimizer]
    optimizer = make_optimizer(args.optimizer, model.named_parameters(), lr, decay)
    steps_per_epoch = max(1, len(train_set) // args.batch_size)
    schedule = make_schedule(args.schedule, lr, args.epochs, steps_per_epoch, args.warmup_epochs)
    print(
        f"training {args.arch} width {args.width:g} ({model.num_parameters():,} parameters) on {args.data}: "
        f"{len(train_set)} training, {len(val_set) if val_set is not None else 0} validation images at "
        f"{resolution}x{resolution}, {train_set.num_classes} classes; {optimizer!r}, {schedule!r}, augment {kind}",
        flush=True,
    )
    from npmobilenet.training.demo import limited_threads

    threads = contextlib.nullcontext() if args.threads is None else limited_threads(args.threads)
    try:
        with threads:
            history = train(
                model, train_set, val_set, args.epochs, optimizer, schedule,
                batch_size=args.batch_size, seed=args.seed, label_smoothing=args.label_smoothing,
                transform=transform, eval_transform=augment.Normalize(mean, std), checkpoint=args.out,
                resume=args.resume, progress=args.progress,
                checkpoint_meta={"resolution": resolution, "mean": mean.tolist(), "std": std.tolist(),
                                 "data": args.data, "val_fraction": args.val_fraction, "split_seed": 0,
                                 "classes": train_set.classes},
            )
    except NonFiniteLossError as exc:
        print(f"npmobilenet train: error: {exc}", file=sys.stderr)
        return 1
    last = history[-1]
    val = f", validation accuracy {100 * last['val_acc']:.2f}%" if last["val_acc"] is not None else ""
    print(f"saved {args.out} after epoch {last['epoch']}: training loss {last['train_loss']:.4f}{val}")
    return 0
