"""`npmobilenet convert SRC DST.npz [--arch A] [--width W] [--tf]`: torchvision/timm weights to an
npmobilenet checkpoint (`npmobilenet.io.convert.convert`)."""
import os


def add_arguments(parser):
    parser.add_argument("src", metavar="SRC", help="torchvision/timm .safetensors or .pth (or an npmobilenet .npz), "
                        "or a registry name (e.g. mobilenet_v2.IMAGENET1K_V1: its file, found as `download` puts it)")
    parser.add_argument("dst", metavar="DST.npz", help="npmobilenet checkpoint to write")
    parser.add_argument("--arch", default=None, help="expected architecture (checked against the file; detected if omitted)")
    parser.add_argument("--width", type=float, default=None, help="width multiplier (checked; inferred if omitted)")
    parser.add_argument("--tf", action="store_true",
                        help="the file is one of timm's tf_mobilenetv3_* (TensorFlow padding and batch-norm eps; "
                             "the file cannot say so itself)")


def run(args):
    from npmobilenet.io.convert import convert
    from npmobilenet.io import hub, registry
    from npmobilenet.io.files import check_output
    from npmobilenet.io.weights import inspect_weights

    if registry.is_weights_name(args.src) and not os.path.exists(args.src):
        args.src = hub.check_file(hub.locate(args.src), registry.get(args.src))
    if not os.path.exists(args.src):
        raise FileNotFoundError(f"weights file {args.src} does not exist")
    check_output(args.dst, [args.src], "DST")
    info = inspect_weights(args.src)
    model = convert(args.src, args.dst, args.arch, args.width, variant="tf" if args.tf else None)
    config = model.config
    extras = {k: v for k, v in config.items() if k not in ("arch", "width", "num_classes")}
    print(f"{args.src}: {info.naming} naming -> {config['arch']}, width {config['width']:g}, "
          f"{config['num_classes']} classes" + (f", {extras}" if extras else ""))
    print(f"wrote {args.dst}: {model.num_parameters():,} parameters, {os.path.getsize(args.dst):,} bytes")
    return 0
