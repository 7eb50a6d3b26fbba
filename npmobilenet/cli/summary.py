"""`npmobilenet summary ARCH|WEIGHTS [--width W] [--resolution R] [--classes K] [--tf] [--json]`: per-layer
parameters and multiply-accumulates (`npmobilenet.analysis.summary.summarize`), and the fused model's
planned activation memory. WEIGHTS is anything `npmobilenet.io.sources.open_model` reads (a registry
name, an npmobilenet checkpoint float or int8, a torchvision/timm file); --width and --classes are
then checked against it, not ignored."""
import json
import os


def add_arguments(parser):
    from npmobilenet.applications import APPLICATIONS
    from npmobilenet.models import ARCHS

    parser.add_argument("arch", metavar="ARCH|WEIGHTS",
                        help=f"one of: {', '.join(ARCHS + APPLICATIONS)}; or weights: a registry name, a checkpoint (.npz: float, "
                        "pruned, factorised or int8), a torchvision/timm .pth/.safetensors")
    parser.add_argument("--width", type=float, default=None,
                        help="width multiplier alpha (default 1.0; for weights: checked against them)")
    parser.add_argument("--tf", action="store_true", help="the weights are one of timm's tf_mobilenetv3_*")
    parser.add_argument("--resolution", type=int, default=None,
                        help="input height and width (default 224 for a classifier, 520 for LR-ASPP, 320 for "
                        "SSDLite, or the checkpoint's training resolution)")
    parser.add_argument("--classes", type=int, default=None,
                        help="classes (default 1000 for a classifier, 21 for LR-ASPP, 91 for SSDLite; for weights: "
                        "checked against them)")
    parser.add_argument("--json", action="store_true", help="print JSON: {params, macs, layers, breakdown}")


def _load(args):
    """The model the weights hold and its training resolution (None if not recorded); --width,
    --classes and --tf checked against them."""
    from npmobilenet.io.sources import open_model

    model, meta = open_model(args.arch, width=args.width, tf=args.tf)
    if args.classes is not None and args.classes != model.config["num_classes"]:
        raise ValueError(f"{args.arch} has {model.config['num_classes']} classes, not {args.classes} (--classes)")
    from npmobilenet.applications import DEFAULT_RESOLUTION

    return model, (meta.get("resolution") or (meta.get("preprocess") or {}).get("crop")
                   or DEFAULT_RESOLUTION.get(model.config["arch"]))


def run(args):
    from npmobilenet.analysis.summary import summarize
    from npmobilenet.applications import APPLICATIONS, DEFAULT_RESOLUTION, build
    from npmobilenet.io.registry import is_weights_name
    from npmobilenet.models import ARCHS
    from npmobilenet.ops.geometry import MIN_RESOLUTION

    if args.resolution is not None and args.resolution < MIN_RESOLUTION:
        raise ValueError(f"--resolution must be at least {MIN_RESOLUTION}, got {args.resolution}")
    if args.arch in ARCHS + APPLICATIONS and not os.path.exists(args.arch):
        if args.tf:
            raise ValueError("--tf describes a weights file, not an architecture")
        if args.classes is not None and args.classes < 1:
            raise ValueError(f"--classes must be at least 1, got {args.classes}")
        # num_classes None: each model's own default (1000, LR-ASPP's 21, SSDLite's 91)
        model = build(args.arch, width=1.0 if args.width is None else args.width, num_classes=args.classes)
        trained_at = DEFAULT_RESOLUTION.get(args.arch)
    elif os.path.exists(args.arch) or is_weights_name(args.arch):
        model, trained_at = _load(args)
    else:
        raise ValueError(f"ARCH must be one of {', '.join(ARCHS + APPLICATIONS)}, a weights name or an existing weights file, "
                         f"got {args.arch!r}")
    resolution = args.resolution if args.resolution is not None else (trained_at or 224)
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"{args.arch} was trained at {resolution}x{resolution}; pass --resolution of at least "
                         f"{MIN_RESOLUTION}")
    if not hasattr(model, "modules"):
        # An int8 model is a graph of integer ops, not layers: report its totals.
        macs, params = model.macs((1, resolution, resolution, 3)), model.num_parameters()
        c = model.config
        if args.json:
            print(json.dumps({"params": int(params), "macs": int(macs), "layers": [], "quantized": True}))
        else:
            print(f"{args.arch}: int8 {c['arch']} width {c['width']}, input {resolution}x{resolution}x3")
            print(f"total: {params:,} parameters (int8 weights, int32 biases), {macs:,} multiply-accumulates")
        return 0
    summary = summarize(model, resolution)
    peak = _peak_activation_bytes(model, resolution)
    if args.json:
        data = summary.to_json()
        print(data[:-2] + f',\n "peak_activation_bytes_per_image": {json.dumps(peak)}\n}}')
    else:
        print(summary.format_table())
        if peak is not None:
            print(f"\nfused inference (model.fuse()): planned peak activation memory {peak:,} bytes "
                  f"({peak / 2**20:.2f} MiB) per image at {resolution}x{resolution}")
    return 0


def _peak_activation_bytes(model, resolution):
    """Bytes per image of the fused model's memory plan, or None where fusing does not apply."""
    from npmobilenet.inference import planned_peak_bytes

    try:
        return int(planned_peak_bytes(model, resolution, batch=1))
    except NotImplementedError:
        return None  # a graph with an op the fused kernels do not compute
