"""`npmobilenet train`: train a MobileNet on the digits, CIFAR-10 or an image folder.

    npmobilenet train --data digits --arch mobilenet_v2 --width 0.35 --resolution 32 --epochs 15 \\
        --batch-size 64 --optimizer adamw --lr 0.01 --out digits.npz [--resume digits.npz]
    npmobilenet train --data digits --init mobilenet_v2-b0353104.pth --classes 10 --resolution 64 \\
        --out tuned.npz [--freeze-backbone]

The checkpoint is written atomically after every epoch, with the normalisation and split that
`npmobilenet eval` needs to repeat. `--resume` continues a run to `--epochs` in total. `--init`
fine-tunes weights (a registry name, an npmobilenet checkpoint, or a torchvision/timm file): the
architecture and every layer come from them, with a new classifier for the data's classes
(`model.reset_classifier`); `--freeze-backbone` trains that classifier alone (a linear probe).
Every argument and the output path are checked before any data is read.
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
    parser.add_argument("--arch", choices=ARCHS, default=None, metavar="ARCH",
                        help=f"one of {', '.join(ARCHS)} (default mobilenet_v2; with --init: the weights')")
    parser.add_argument("--width", type=float, default=None, help="width multiplier (default 1.0; with --init: the weights')")
    parser.add_argument("--init", default=None, metavar="NAME_OR_FILE",
                        help="start from these weights with a new classifier (fine-tuning): a weights name "
                        "(e.g. mobilenet_v2.IMAGENET1K_V1), an npmobilenet checkpoint, or a torchvision/timm "
                        ".pth/.safetensors file")
    parser.add_argument("--classes", type=int, default=None,
                        help="classes of the new classifier; must equal the data's (default: the data's)")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="with --init: train only the new classifier (a linear probe); the rest stays as loaded, "
                        "batch norm on its stored statistics")
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


def check_arguments(args):
    """Every value checked before any work starts (a ValueError naming the flag)."""
    from npmobilenet.io.files import check_output
    from npmobilenet.ops.geometry import MIN_RESOLUTION

    for flag, value, least in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                               ("--classes", args.classes, 1), ("--threads", args.threads, 1)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    if args.resolution is not None and args.resolution < MIN_RESOLUTION:
        raise ValueError(f"--resolution must be at least {MIN_RESOLUTION}, got {args.resolution}")
    if args.width is not None and not args.width > 0:
        raise ValueError(f"--width must be > 0, got {args.width}")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.weight_decay is not None and not args.weight_decay >= 0:
        raise ValueError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if not 0 <= args.label_smoothing < 1:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.freeze_backbone and args.init is None:
        raise ValueError("--freeze-backbone needs --init: a linear probe trains a classifier on loaded weights")
    if args.classes is not None and args.init is None:
        raise ValueError("--classes applies with --init (without it the model gets the data's class count)")
    # the checkpoint is rewritten after every epoch: it must be writable, and not the weights it starts from
    check_output(args.out, [args.init] if args.init is not None else [], "--out")


def initial_model(args, num_classes):
    """The model to train: built from --arch/--width, or the --init weights with a new classifier."""
    import npmobilenet

    if args.init is None:
        return npmobilenet.build(args.arch or "mobilenet_v2", width=1.0 if args.width is None else args.width,
                                 num_classes=num_classes, seed=args.seed)
    if args.classes is not None and args.classes != num_classes:
        raise ValueError(f"--classes {args.classes} does not match the data, which has {num_classes} classes")
    model = load_weights(args.init)
    config = model.config
    if args.arch is not None and args.arch != config["arch"]:
        raise ValueError(f"--init {args.init} holds {config['arch']} weights, not {args.arch} (--arch)")
    if args.width is not None and abs(args.width - float(config["width"])) > 1e-9:
        raise ValueError(f"--init {args.init} holds a width-{float(config['width']):g} model, not {args.width:g} (--width)")
    model.reset_classifier(num_classes, seed=args.seed)
    if args.freeze_backbone:
        model.freeze_backbone()
    return model.train()


def load_weights(spec):
    """A float MobileNet from a weights file (npmobilenet checkpoint, torchvision/timm .pth or
    .safetensors) or, for a path that does not exist, a weights name (`npmobilenet.pretrained`)."""
    import os

    import npmobilenet
    from npmobilenet.models import MobileNet

    if os.path.exists(spec):
        from npmobilenet.io.formats import sniff_format

        model = npmobilenet.load(spec) if sniff_format(spec) == "npz" else npmobilenet.from_weights(spec)
    elif os.sep in spec or spec.endswith((".npz", ".pth", ".pt", ".safetensors")):
        raise FileNotFoundError(f"--init {spec}: no such file")
    else:
        try:
            pretrained = npmobilenet.pretrained
        except AttributeError:
            raise FileNotFoundError(f"--init {spec}: no such file (weights by name need npmobilenet.pretrained)") from None
        model = pretrained(spec)
    if not isinstance(model, MobileNet):
        raise ValueError(f"--init {spec} holds a {type(model).__name__}, not a float MobileNet: fine-tuning needs "
                         "float weights (an int8 model cannot be trained)")
    return model


def run(args):
    from npmobilenet.training import augment
    from npmobilenet.training.data import datasets_from_spec
    from npmobilenet.training.loop import NonFiniteLossError, train
    from npmobilenet.training.optim import make_optimizer
    from npmobilenet.ops.geometry import MIN_RESOLUTION

    check_arguments(args)
    train_set, val_set = datasets_from_spec(args.data, args.resolution, args.val_fraction, split_seed=0)
    resolution = train_set.images.shape[1]
    if train_set.images.shape[1] != train_set.images.shape[2]:
        raise ValueError(f"images are {train_set.images.shape[1]}x{train_set.images.shape[2]}: pass --resolution to make them square")
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"images are {resolution}x{resolution}; the models need >= {MIN_RESOLUTION}: pass --resolution")
    mean, std = augment.channel_stats(train_set.images)
    kind = args.augment or ("shift" if args.data == "digits" else "shift-flip")
    transform = build_transform(kind, resolution, mean, std)

    model = initial_model(args, train_set.num_classes)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    decay = args.weight_decay if args.weight_decay is not None else DEFAULT_WEIGHT_DECAY[args.optimizer]
    optimizer = make_optimizer(args.optimizer, model.named_trainable_parameters(), lr, decay)
    steps_per_epoch = max(1, len(train_set) // args.batch_size)
    schedule = make_schedule(args.schedule, lr, args.epochs, steps_per_epoch, args.warmup_epochs)
    trained = sum(p.size for _, p in model.named_trainable_parameters())
    start = f"from {args.init}, new classifier, " if args.init is not None else ""
    frozen = f", {trained:,} trained (backbone frozen)" if args.freeze_backbone else ""
    print(
        f"training {model.arch} width {model.config['width']:g} ({start}{model.num_parameters():,} parameters{frozen}) "
        f"on {args.data}: {len(train_set)} training, {len(val_set) if val_set is not None else 0} validation images at "
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
                                 "classes": train_set.classes, "init": args.init,
                                 "frozen_backbone": bool(args.freeze_backbone)},
            )
    except NonFiniteLossError as exc:
        print(f"npmobilenet train: error: {exc}", file=sys.stderr)
        return 1
    last = history[-1]
    val = f", validation accuracy {100 * last['val_acc']:.2f}%" if last["val_acc"] is not None else ""
    print(f"saved {args.out} after epoch {last['epoch']}: training loss {last['train_loss']:.4f}{val}")
    return 0
