"""`npmobilenet summary ARCH|CHECKPOINT [--width W] [--resolution R] [--classes K] [--json]`: per-layer
parameters and multiply-accumulates (`npmobilenet.analysis.summarize`), and the fused model's
planned activation memory."""
import json
import os


def add_arguments(parser):
    from npmobilenet.models import ARCHS

    parser.add_argument("arch", metavar="ARCH|CHECKPOINT",
                        help=f"one of: {', '.join(ARCHS)}; or a checkpoint (.npz: float, pruned, factorised or int8)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier alpha (default 1.0)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="input height and width (default 224, or the checkpoint's training resolution)")
    parser.add_argument("--classes", type=int, default=1000, help="classifier outputs (default 1000)")
    parser.add_argument("--json", action="store_true", help="print JSON: {params, macs, layers, breakdown}")


def _load(path):
    """The model in a checkpoint and its training resolution (None if not recorded)."""
    from npmobilenet.io.checkpoint import load_with_meta

    model, meta = load_with_meta(path)
    return model, meta.get("resolution")


def run(args):
    from npmobilenet.analysis.summary import summarize
    from npmobilenet.models import ARCHS, build
    from npmobilenet.ops.geometry import MIN_RESOLUTION

    if args.arch in ARCHS:
        model, trained_at = build(args.arch, width=args.width, num_classes=args.classes), None
    elif os.path.exists(args.arch):
        model, trained_at = _load(args.arch)
    else:
        raise ValueError(f"ARCH must be one of {', '.join(ARCHS)} or an existing checkpoint file, got {args.arch!r}")
    resolution = args.resolution or trained_at or 224
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"--resolution must be at least {MIN_RESOLUTION}, got {resolution}")
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
