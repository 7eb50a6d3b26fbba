"""Flags that mean the same in every command (not a command itself).

    add_weights_arguments   --arch, --width, --tf: checked against the weights the command reads
                            (`npmobilenet.io.sources.open_model`), which is a registry name, an
                            npmobilenet checkpoint (float or int8) or a torchvision/timm file
    add_threads_argument    --threads N: threads for the command's computation
    add_json_argument       --json: print one JSON document on stdout instead of text
"""

WEIGHTS_HELP = ("weights: a registry name (e.g. mobilenet_v2.IMAGENET1K_V1), an npmobilenet checkpoint .npz "
                "(float or int8), or torchvision/timm .pth/.safetensors")


def add_weights_arguments(parser, width_help=None):
    parser.add_argument("--arch", default=None, help="expected architecture (checked against the weights)")
    parser.add_argument("--width", type=float, default=None,
                        help=width_help or "expected width multiplier (checked; needed only when a file's cannot be inferred)")
    parser.add_argument("--tf", action="store_true",
                        help="the weights are one of timm's tf_mobilenetv3_* (TensorFlow padding; the file cannot say so)")


def add_threads_argument(parser):
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for the computation (default: NUMBA_NUM_THREADS)")


def add_json_argument(parser, what="the results"):
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout instead of text")


def threads_context(threads):
    """A context running Numba's parallel kernels on `threads` threads (None: unchanged)."""
    from npmobilenet.inference.threads import check_threads, numba_threads

    return numba_threads(check_threads(threads))
