"""`npmobilenet demo`: train MobileNetV2 on scikit-learn's digits, save, reload, report (the main job;
`npmobilenet.training.demo.run_demo`)."""
from npmobilenet.training.demo import DEFAULTS


def add_arguments(parser):
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help=f"default {DEFAULTS['epochs']}")
    parser.add_argument("--width", type=float, default=DEFAULTS["width"], help=f"width multiplier (default {DEFAULTS['width']})")
    parser.add_argument("--resolution", type=int, default=DEFAULTS["resolution"], help=f"input size (default {DEFAULTS['resolution']})")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help=f"peak AdamW learning rate (default {DEFAULTS['lr']})")
    parser.add_argument("--out", default="npmobilenet-demo", help="directory for the checkpoint (default ./npmobilenet-demo)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="initialisation, shuffling and augmentation seed")
    parser.add_argument("--quick", action="store_true", help="one epoch on 256 images: checks the pipeline, not the accuracy")
    parser.add_argument("--no-summary", action="store_true", help="skip the per-layer cost table")
    parser.add_argument("--progress", choices=("auto", "tqdm", "plain", "none"), default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="Numba and BLAS threads (default 1: fastest at these sizes on a shared 2-core machine)")


def run(args):
    from npmobilenet.extras import require

    require("sklearn", "npmobilenet demo (scikit-learn's digits dataset)")
    from npmobilenet.ops.geometry import MIN_RESOLUTION
    from npmobilenet.training.demo import run_demo

    if args.resolution < MIN_RESOLUTION:
        raise ValueError(f"--resolution must be at least {MIN_RESOLUTION}, got {args.resolution}")
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    run_demo(
        width=args.width, resolution=args.resolution, epochs=args.epochs, out=args.out, seed=args.seed,
        quick=args.quick, batch_size=args.batch_size, lr=args.lr, progress=args.progress,
        summary=not args.no_summary, threads=args.threads,
    )
    return 0
