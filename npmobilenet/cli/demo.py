"""`npmobilenet demo [--task classification|segmentation|detection]`: train a model end to end.

    classification (default)  MobileNetV2 on scikit-learn's digits: train, save, reload, report
                              (`npmobilenet.training.demo.run_demo`)
    segmentation              LR-ASPP on the synthetic shapes, mIoU on a held-out split, and a PNG of
                              predicted masks (`npmobilenet.training.demo_tasks.run_task`)
    detection                 SSDLite on the synthetic shapes, mAP@0.5 on a held-out split, and a
                              PNG of predicted boxes (the same)

Flags left unset take each task's own defaults (DEFAULTS in the two modules above).
"""
import os

from npmobilenet.training.demo import DEFAULTS

TASKS = ("classification", "segmentation", "detection")
COMMON = ("epochs", "width", "resolution", "batch_size", "lr", "seed")


def add_arguments(parser):
    parser.add_argument("--task", choices=TASKS, default="classification",
                        help="classification (MobileNetV2 on digits, the default), segmentation (LR-ASPP) or "
                        "detection (SSDLite), both on synthetic shapes over textures and photographs")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {DEFAULTS['epochs']} (classification), "
                        "14 (segmentation), 12 (detection)")
    parser.add_argument("--width", type=float, default=None,
                        help=f"width multiplier of the backbone (default {DEFAULTS['width']})")
    parser.add_argument("--resolution", type=int, default=None,
                        help=f"input size (default {DEFAULTS['resolution']}; segmentation 96, detection 128)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"default {DEFAULTS['batch_size']} (classification), 16 (segmentation, detection)")
    parser.add_argument("--lr", type=float, default=None, help=f"peak AdamW learning rate (default {DEFAULTS['lr']} "
                        "for classification, 6e-3 segmentation, 3e-3 detection)")
    parser.add_argument("--out", default="npmobilenet-demo",
                        help="directory for the checkpoint or the picture (default ./npmobilenet-demo)")
    parser.add_argument("--picture", default=None,
                        help="segmentation and detection: PNG of predictions over test images "
                        "(default OUT/TASK_demo.png)")
    parser.add_argument("--seed", type=int, default=None,
                        help="initialisation, shuffling and augmentation seed (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help="one epoch on a few images: checks the pipeline, not the score")
    parser.add_argument("--no-summary", action="store_true", help="classification: skip the per-layer cost table")
    parser.add_argument("--progress", choices=("auto", "tqdm", "plain", "none"), default=None,
                        help="classification: the progress display (default auto)")
    parser.add_argument("--threads", type=int, default=1,
                        help="Numba and BLAS threads (default 1: fastest at these sizes on a shared 2-core machine)")


def _check_common(args, minimum_resolution):
    if args.resolution is not None and args.resolution < minimum_resolution:
        raise ValueError(f"--resolution must be at least {minimum_resolution}, got {args.resolution}")
    for flag in ("epochs", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.width is not None and not args.width > 0:
        raise ValueError(f"--width must be > 0, got {args.width}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")


def _run_classification(args):
    from npmobilenet.extras import require
    from npmobilenet.ops.geometry import MIN_RESOLUTION
    from npmobilenet.training.demo import run_demo

    if args.picture is not None:
        raise ValueError("--picture applies to --task segmentation or detection (the classification demo draws none)")
    _check_common(args, MIN_RESOLUTION)
    require("sklearn", "npmobilenet demo (scikit-learn's digits dataset)")
    chosen = {k: getattr(args, k) for k in COMMON if getattr(args, k) is not None}
    options = dict({k: DEFAULTS[k] for k in COMMON}, **chosen)
    run_demo(out=args.out, quick=args.quick, progress=args.progress or "auto", summary=not args.no_summary,
             threads=args.threads, **options)
    return 0


def _run_task(args):
    from npmobilenet.io.files import check_output
    from npmobilenet.ops.geometry import MIN_RESOLUTION
    from npmobilenet.training.demo import limited_threads
    from npmobilenet.training.demo_tasks import QUICK, run_task

    for flag, given in (("--no-summary", args.no_summary), ("--progress", args.progress is not None)):
        if given:
            raise ValueError(f"{flag} applies to the classification demo, not --task {args.task}")
    _check_common(args, MIN_RESOLUTION)
    if args.picture is None:
        os.makedirs(args.out, exist_ok=True)
        picture = os.path.join(args.out, f"{args.task}_demo.png")
    else:
        picture = args.picture
    if not picture.lower().endswith(".png"):
        raise ValueError(f"--picture must name a .png file, got {picture!r}")
    check_output(picture, name="--picture")
    options = {k: getattr(args, k) for k in COMMON if getattr(args, k) is not None}
    if args.quick:
        options = dict(QUICK, **options)
    with limited_threads(args.threads):
        run_task(args.task, options, picture=picture)
    return 0


def run(args):
    return _run_classification(args) if args.task == "classification" else _run_task(args)
