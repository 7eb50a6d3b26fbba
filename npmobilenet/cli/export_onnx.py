"""`npmobilenet export-onnx CHECKPOINT OUT.onnx [--batch dynamic|N] [--layout nchw|nhwc] [--no-fold-bn]`:
a float or int8 checkpoint as an ONNX graph (`npmobilenet.io.onnx_export`), checked against
npmobilenet in ONNX Runtime after writing."""
import os

import numpy as np

from npmobilenet.cli.options import add_weights_arguments
from npmobilenet.io.onnx_export import DEFAULT_OPSET


def _batch_argument(text):
    if text == "dynamic":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--batch must be 'dynamic' or a positive int, got {text!r}") from None
    if value < 1:
        raise ValueError(f"--batch must be 'dynamic' or a positive int, got {text!r}")
    return value


def add_arguments(parser):
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="npmobilenet .npz (float or int8: int8 is written in QDQ form), torchvision/timm weights, or a registry name")
    parser.add_argument("out", metavar="OUT.onnx", help="ONNX file to write")
    parser.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}, >= 14)")
    parser.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw",
                        help="input layout of the graph (default nchw, as ONNX vision models take)")
    parser.add_argument("--no-fold-bn", action="store_true", help="keep BatchNormalization nodes instead of folding")
    parser.add_argument("--no-verify", action="store_true", help="skip checking the graph against npmobilenet in ONNX Runtime")
    add_weights_arguments(parser)


def run(args):
    from npmobilenet.compression.peer import saturating_int8_cpu
    from npmobilenet.extras import available
    from npmobilenet.io.onnx_export import export_onnx, run_onnx
    from npmobilenet.io.registry import is_weights_name
    from npmobilenet.io.sources import open_model

    from npmobilenet.io.files import check_output

    batch = _batch_argument(args.batch)
    if not os.path.exists(args.checkpoint) and not is_weights_name(args.checkpoint):
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    check_output(args.out, [args.checkpoint], "OUT.onnx")
    model, meta = open_model(args.checkpoint, arch=args.arch, width=args.width, tf=args.tf)
    check_output(args.out, [meta["path"]], "OUT.onnx")   # a registry name's file too
    quantized = meta["kind"] == "int8"
    export_onnx(model, args.out, batch, args.opset, args.layout, not args.no_fold_bn)
    config = model.config
    print(f"wrote {args.out}: {config['arch']} width {config['width']:g}, {config['num_classes']} classes, "
          + ("int8 in QDQ form, " if quantized else "")
          + f"opset {args.opset}, input {'N' if batch is None else batch}x"
          + ("3xHxW (NCHW)" if args.layout == "nchw" else "HxWx3 (NHWC)"))
    if not args.no_verify and available("onnxruntime"):
        n = batch or 2
        rng = np.random.default_rng(0)
        size = 320 if model.config.get("arch", "").startswith("ssdlite320") else 224   # SSDLite320's anchors
        if quantized:   # images in the calibrated range (the input's int8 grid)
            scale, zero = model.tensors["input"]
            x = (scale * (rng.integers(-128, 128, (n, size, size, 3)) - zero)).astype(np.float32)
        else:
            x = rng.standard_normal((n, size, size, 3)).astype(np.float32)
        ours = model(x)
        unfused = quantized and saturating_int8_cpu()   # its int8 kernels saturate on this CPU
        theirs = run_onnx(args.out, x.transpose(0, 3, 1, 2) if args.layout == "nchw" else x, fuse=not unfused)
        # a model of several outputs (SSDLite: class logits and box regressions) is compared output by output
        pairs = zip(ours, theirs) if isinstance(ours, tuple) else [(ours, theirs)]
        diff = max(float(np.abs(a - b).max()) for a, b in pairs)
        ours = np.concatenate([np.ravel(a) for a in ours]) if isinstance(ours, tuple) else ours
        note = f" = {diff / model.tensors[model.output][0]:.0f} int8 output steps" if quantized else ""
        if unfused:
            note += ", the QDQ graph run unfused (ONNX Runtime's int8 kernels saturate on a CPU without VNNI)"
        print(f"verified in ONNX Runtime: max |logit difference| {diff:.2e}{note} (logit scale {float(np.abs(ours).max()):.2e})")
    return 0
