"""`npmobilenet` command line: an argparse front end that only calls library functions.

Each subcommand is a module of this package with two functions, `add_arguments(parser)` and
`run(args) -> int`; the library modules hold no argparse. A command's library imports happen
when it runs, so `npmobilenet --help` is fast and optional extras are touched only by the
commands that need them.

Errors reach the user as one line on stderr, `npmobilenet COMMAND: error: ...`, and exit status 2
(argparse's status for a bad command line): bad values, unreadable or hostile files, paths that
cannot be written, a full disk, a missing optional extra, images Pillow refuses. `--debug` (before
the command) or NPMOBILENET_DEBUG=1 shows the traceback instead. Output cut short by a closed pipe
(`npmobilenet summary ... | head -1`) ends quietly, as Unix tools do; Ctrl-C ends with one line and
status 130. Anything else is a bug and keeps its traceback.
"""
import argparse
import errno
import importlib
import os
import sys

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130          # 128 + SIGINT, as a shell reports it
EXIT_BROKEN_PIPE = 141          # 128 + SIGPIPE

# command: (module, one-line help)
COMMANDS = {
    "demo": ("npmobilenet.cli.demo", "train MobileNetV2 on the scikit-learn digits and report (the main job); --task segmentation|detection for LR-ASPP and SSDLite"),
    "summary": ("npmobilenet.cli.summary", "per-layer parameters and multiply-accumulates of a model"),
    "train": ("npmobilenet.cli.train", "train or fine-tune a model on the digits, an image folder or CIFAR-10"),
    "eval": ("npmobilenet.cli.eval", "top-1/top-5 accuracy and confusion matrix of a checkpoint"),
    "predict": ("npmobilenet.cli.predict", "classify images with a weights file or name"),
    "convert": ("npmobilenet.cli.convert", "convert torchvision/timm weights to an npmobilenet .npz"),
    "export-onnx": ("npmobilenet.cli.export_onnx", "export a checkpoint as an ONNX graph"),
    "bench": ("npmobilenet.cli.bench", "inference latency and throughput, beside PyTorch and ONNX Runtime"),
    "compress": ("npmobilenet.cli.compress", "quantize, prune or factorize a checkpoint"),
    "download": ("npmobilenet.cli.download", "fetch pretrained weights by name into the weights cache"),
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
    from npmobilenet import __version__

    parser = argparse.ArgumentParser(prog="npmobilenet", description="MobileNet V1/V2/V3/V4 in NumPy and Numba.")
    parser.add_argument("--version", action="version", version=f"npmobilenet {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also: NPMOBILENET_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        module = _command_module(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _expected_errors():
    """The exception classes that are the user's input or environment, not a bug."""
    expected = [ValueError, TypeError, OSError, ImportError, MemoryError]
    pil = sys.modules.get("PIL.Image")
    if pil is not None:   # Pillow's own, when a command has used it
        expected += [pil.DecompressionBombError, pil.DecompressionBombWarning]
    return tuple(expected)


def error_message(exc):
    """One line for the user: the exception's message, its lines joined."""
    if isinstance(exc, MemoryError):
        return "out of memory" + (f" ({exc})" if str(exc) else "") + ": the input asks for more memory than there is"
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        if exc.errno == errno.ENOSPC:
            text = f"no space left on the device{f' writing {where}' if where else ''}"
        elif where:
            text = f"{where}: {exc.strerror}"
        else:
            text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _debugging(args):
    return bool(getattr(args, "debug", False)) or os.environ.get("NPMOBILENET_DEBUG", "") not in ("", "0")


def _quiet_stdout():
    """After a closed pipe: point stdout at /dev/null, so the interpreter's last flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        status = int(args._run(args) or 0)
        sys.stdout.flush()     # a closed pipe shows here, inside the handler, not at exit
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        if _debugging(args):
            raise
        print(f"\nnpmobilenet {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _expected_errors() as exc:
        if _debugging(args):
            raise
        print(f"npmobilenet {args.command}: error: {error_message(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
