"""`npmobilenet convert SRC DST.npz [--arch A] [--width W]`: torchvision/timm weights to an npmobilenet
checkpoint, once, so later loads need nothing but NumPy (and no transposes or name maps).

The model is built to follow the file (arch, width, classes, the library's variant; see
`keymaps`), loaded, and saved with `npmobilenet.training.checkpoint.save`: its config rebuilds it
with `npmobilenet.build(**config)`.
"""
import os

import numpy as np


def convert(src, dst, arch=None, width=None, variant=None):
    """Convert `src` (.safetensors/.pth/.npz) to the npmobilenet checkpoint `dst`; returns the model.
    `variant="tf"` for timm's tf_mobilenetv3_* files (see `from_weights`)."""
    from npmobilenet.io.weights import from_weights, inspect_weights
    from npmobilenet.training import checkpoint

    dst = os.fspath(dst)
    if not dst.endswith(".npz"):
        raise ValueError(f"DST must be an .npz file name, got {dst}")
    info = inspect_weights(src)
    model = from_weights(src, arch=arch, width=width, variant=variant)
    checkpoint.save(model, dst, source=os.path.basename(os.fspath(src)), source_naming=info.naming)
    # read it back: the file must rebuild the same model with the same numbers
    reloaded = checkpoint.load(dst)
    original, again = model.state_dict(), reloaded.state_dict()
    if set(original) != set(again) or any(not np.array_equal(original[k], again[k]) for k in original):
        raise RuntimeError(f"{dst} does not read back as the converted model")
    return model


def add_arguments(parser):
    parser.add_argument("src", metavar="SRC", help="torchvision/timm .safetensors or .pth (or an npmobilenet .npz)")
    parser.add_argument("dst", metavar="DST.npz", help="npmobilenet checkpoint to write")
    parser.add_argument("--arch", default=None, help="expected architecture (checked against the file; detected if omitted)")
    parser.add_argument("--width", type=float, default=None, help="width multiplier (checked; inferred if omitted)")
    parser.add_argument("--tf", action="store_true",
                        help="the file is one of timm's tf_mobilenetv3_* (TensorFlow padding and batch-norm eps; "
                             "the file cannot say so itself)")


def run(args):
    from npmobilenet.io.weights import inspect_weights

    info = inspect_weights(args.src)
    model = convert(args.src, args.dst, args.arch, args.width, variant="tf" if args.tf else None)
    config = model.config
    extras = {k: v for k, v in config.items() if k not in ("arch", "width", "num_classes")}
    print(f"{args.src}: {info.naming} naming -> {config['arch']}, width {config['width']:g}, "
          f"{config['num_classes']} classes" + (f", {extras}" if extras else ""))
    print(f"wrote {args.dst}: {model.num_parameters():,} parameters, {os.path.getsize(args.dst):,} bytes")
    return 0
