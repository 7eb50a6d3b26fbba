"""`npmobilenet` command line: an argparse front end that only calls library functions.

Each subcommand is a module of this package with two functions, `add_arguments(parser)` and
`run(args) -> int`; the library modules hold no argparse. A command's library imports happen
when it runs, so `npmobilenet --help` is fast and optional extras are touched only by the
commands that need them. Errors reach the user as one line on stderr.
"""
import argparse
import importlib
import sys

# command: (module, one-line help)
COMMANDS = {
    "demo": ("npmobilenet.cli.demo", "train MobileNetV2 on the scikit-learn digits and report (the main job)"),
    "summary": ("npmobilenet.cli.summary", "per-layer parameters and multiply-accumulates of a model"),
    "train": ("npmobilenet.cli.train", "train a model on an image folder or CIFAR-10"),
    "eval": ("npmobilenet.cli.eval", "top-1/top-5 accuracy and confusion matrix of a checkpoint"),
    "predict": ("npmobilenet.cli.predict", "classify images with a weights file"),
    "convert": ("npmobilenet.cli.convert", "convert torchvision/timm weights to an npmobilenet .npz"),
    "export-onnx": ("npmobilenet.cli.export_onnx", "export a checkpoint as an ONNX graph"),
    "bench": ("npmobilenet.cli.bench", "inference latency and throughput, beside PyTorch and ONNX Runtime"),
    "compress": ("npmobilenet.cli.compress", "quantize, prune or factorize a checkpoint"),
}


def _command_module(name):
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("npmobilenet"):
            return None
        raise


def build_parser():
    parser = argparse.ArgumentParser(prog="npmobilenet", description="MobileNet V1/V2/V3/V4 in NumPy and Numba.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        module = _command_module(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"npmobilenet {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
