"""Load weights into a model: npmobilenet's own .npz, and torchvision's or timm's .safetensors / .pth.

    load_weights(model, path) -> model     into a model you built; one error lists every mismatch
    from_weights(path, arch=None, width=None) -> model
                                           build the model the file describes (arch, width, classes
                                           and the library's variant, read from the file), then load
    inspect_weights(path) -> WeightsInfo   what the file holds, without building anything

Formats are recognised by content, not by extension (`formats.py`). Nothing here imports torch or
unpickles with Python's unrestricted unpickler: .pth files go through `torch_zip` (tensors only),
.npz through `np.load(allow_pickle=False)`, .safetensors through `formats.read_safetensors`. The
foreign names are `keymaps.py`'s; what a file's keys and shapes say, `recognise.py`'s.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from npmobilenet.io import keymaps, recognise
from npmobilenet.io.files import from_json_array, read_arrays
from npmobilenet.io.formats import read_foreign_state, sniff_format
from npmobilenet.io.limits import warn_non_finite

# -- what a file holds -----------------------------------------------------------------------------------
@dataclass
class WeightsInfo:
    """What `inspect_weights` found: enough to build the model the file fits."""
    path: str
    format: str               # "npz", "safetensors" or "torch"
    naming: str               # "npmobilenet", "torchvision" or "timm"
    arch: str
    width: object             # float, or None if it could not be inferred
    num_classes: int
    overrides: dict = field(default_factory=dict)  # build options that make our model follow the file

    @property
    def config(self):
        """Keyword arguments for `npmobilenet.build`."""
        return dict(arch=self.arch, width=self.width, num_classes=self.num_classes, **self.overrides)


def _width_candidates(ratio):
    # round widths first (any width whose channels all match gives the identical network)
    for step in (0.05, 0.025, 0.01, 0.005):
        for k in range(1, int(round(4.0 / step)) + 1):
            yield round(k * step, 4)
    yield ratio


def infer_width(state, naming, arch, overrides=None):
    """The width multiplier under which our builder gives every channel count the file has
    (those not set by `overrides`), preferring round values; None if there is none."""
    from npmobilenet.models import arch_spec

    overrides = overrides or {}
    try:
        channels = recognise.file_channels(state, naming, arch)
    except (KeyError, ValueError):
        return None

    repeats = overrides.get("repeats")

    def spec_channels(width):
        # built with the overrides, since an overridden stem also sets the first block's input
        spec = arch_spec(arch, width, **overrides)
        found = dict(stem=spec.stem_channels, expanded=[b.expanded_channels for b in spec.blocks],
                     out=[b.out_channels for b in spec.blocks], head=spec.head_channels, last=spec.last_channels)
        for field_name, override in (("stem", "stem_channels"), ("expanded", "expanded_channels"),
                                     ("head", "head_channels"), ("last", "last_channels")):
            if override in overrides:
                found[field_name] = channels[field_name]
        return found

    base = arch_spec(arch, 1.0).blocks[-1].out_channels
    if len(channels["out"]) != len(arch_spec(arch, 1.0, repeats=repeats).blocks):
        return None
    for width in _width_candidates(round(channels["out"][-1] / base, 4)):
        if spec_channels(width) == channels:
            return width
    return None


def _read_npz_config(path):
    arrays = read_arrays(path)
    config = from_json_array(arrays["__config__"], "__config__", path) if "__config__" in arrays else None
    return arrays, config


def inspect_weights(path):
    """Identify a weights file: format, naming, arch, width, classes, and the build overrides it needs."""
    path = os.fspath(path)
    fmt = sniff_format(path)
    if fmt == "npz":
        _, config = _read_npz_config(path)
        if not isinstance(config, dict) or "arch" not in config:
            raise ValueError(f"{path} is an .npz without an npmobilenet config (__config__); it needs a model to load into")
        overrides = {k: v for k, v in config.items() if k not in ("arch", "width", "num_classes")}
        return WeightsInfo(path, fmt, "npmobilenet", config["arch"], config.get("width", 1.0),
                           config.get("num_classes", 1000), overrides)
    state = read_foreign_state(path)
    return _inspect_state(path, fmt, state)


def _inspect_state(path, fmt, state):
    from npmobilenet.models import arch_spec

    naming, arch = recognise.detect_naming(state)
    overrides = recognise.file_overrides(state, naming, arch)
    blocks = recognise.count_blocks(state, naming, arch)
    expected = len(arch_spec(arch, repeats=overrides.get("repeats")).blocks)
    if blocks != expected:
        raise ValueError(f"{path}: this {naming} {arch} has {blocks} blocks where the paper's has {expected} "
                         f"(a depth-multiplied variant?); supported for timm's V1 and V2 (e.g. mobilenetv2_110d), "
                         f"not for V3, V4 or torchvision")
    try:
        num_classes = recognise.num_classes_of(state, naming, arch)
    except KeyError as exc:
        raise ValueError(f"{path}: no classifier weight {exc.args[0]}") from None
    return WeightsInfo(path, fmt, naming, arch, infer_width(state, naming, arch, overrides), num_classes, overrides)


# -- loading ---------------------------------------------------------------------------------------------
def _model_targets(model):
    targets = {name: p.data for name, p in model.named_parameters()}
    targets.update(dict(model.named_buffers()))
    return targets


def _model_bn_eps(model):
    spec = getattr(model, "spec", None)
    if spec is not None and hasattr(spec, "bn_eps"):
        return spec.bn_eps
    return next((layer.eps for _, layer in model.modules() if hasattr(layer, "running_var")), None)


def convert_state(model, state, naming):
    """Map a foreign state dict onto `model`'s names and layouts.

    Returns (converted {our name: array}, problems [str]); problems lists every missing key,
    unexpected key and shape mismatch, each with both layouts' shapes.
    """
    targets = _model_targets(model)
    converted, missing, mismatched, used = {}, [], [], set()
    entries = keymaps.key_map(model, naming)
    for ours, theirs, kind in entries:
        target = targets[ours]
        expected_theirs = keymaps.torch_shape(kind, target.shape)
        if theirs not in state:
            missing.append(f"{theirs} (for {ours}; model expects {expected_theirs} in the file's layout)")
            continue
        used.add(theirs)
        array = state[theirs]
        as_ours = keymaps.our_shape(kind, array.shape)
        if as_ours != target.shape:
            mismatched.append(
                f"{theirs} -> {ours}: model expects {target.shape} in our layout = {expected_theirs} in the file's "
                f"{keymaps.LAYOUTS[kind][0]}; the file has {array.shape}"
                + (f" = {as_ours} in ours" if as_ours is not None else f", which is not a {kind} weight")
            )
            continue
        if not np.issubdtype(array.dtype, np.floating):
            mismatched.append(f"{theirs} -> {ours}: expected floating-point values, the file has {array.dtype}")
            continue
        converted[ours] = keymaps.to_ours(kind, array).astype(target.dtype)
    unmapped = sorted(set(targets) - {ours for ours, _, _ in entries})
    missing += [f"(no foreign name for {name})" for name in unmapped]
    unexpected = sorted(k for k in set(state) - used if not k.endswith(keymaps.IGNORED_SUFFIXES))
    problems = []
    if missing:
        problems.append(f"missing from the file ({len(missing)}): " + "; ".join(missing))
    if unexpected:
        problems.append(f"unexpected in the file ({len(unexpected)}): "
                        + "; ".join(f"{k} {tuple(np.shape(state[k]))}" for k in unexpected))
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): " + "; ".join(mismatched))
    return converted, problems


def foreign_state_dict(model, naming):
    """`model`'s weights under torchvision's or timm's names and PyTorch layouts (the inverse of
    loading), with the `num_batches_tracked` counters PyTorch's strict loading expects."""
    targets = _model_targets(model)
    state = {}
    for ours, theirs, kind in keymaps.key_map(model, naming):
        state[theirs] = keymaps.to_torch(kind, targets[ours])
        if theirs.endswith(".running_var"):
            state[theirs[: -len("running_var")] + "num_batches_tracked"] = np.array(0, dtype=np.int64)
    return state


def _load_npz(model, path):
    from npmobilenet.io import checkpoint

    arrays, config = _read_npz_config(path)
    if config is None:
        # a bare np.savez(path, **model.state_dict())
        state = {k[len("model/"):] if k.startswith("model/") else k: v for k, v in arrays.items()}
        try:
            model.load_state_dict(state)
        except ValueError as exc:
            raise ValueError(f"{path} does not fit the model: {exc}") from None
        warn_non_finite(state, path)
        return model
    model_config = getattr(model, "config", {})
    if config != model_config:
        differences = ", ".join(
            f"{k}: file {config.get(k, '(default)')!r}, model {model_config.get(k, '(default)')!r}"
            for k in sorted(set(config) | set(model_config)) if config.get(k) != model_config.get(k)
        )
        raise ValueError(f"{path} was saved from a different architecture ({differences}); "
                         f"use npmobilenet.io.from_weights(path) to build the model it holds")
    checkpoint.load_checkpoint(path, model)
    return model


def load_weights(model, path):
    """Load the weights in `path` into `model` (in place) and return `model`.

    path: an npmobilenet .npz checkpoint, or a .safetensors / .pth / .pt file with torchvision's
    (mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small) or timm's (mobilenetv1_100,
    mobilenetv2_*, mobilenetv3_large_*, mobilenetv3_small_*, mobilenetv4_conv_small*,
    mobilenetv4_conv_medium, mobilenetv4_conv_large) key names, recognised automatically.
    PyTorch layouts are transposed once, here (see `keymaps`). Raises one ValueError that lists
    every missing key, unexpected key and shape mismatch (with the model's expected shape beside
    the file's, in both layouts), and names an architecture, width, class-count or batch-norm
    mismatch; `UnsafeCheckpointError` if a .pth holds anything but tensors.
    """
    path = os.fspath(path)
    fmt = sniff_format(path)
    if fmt == "npz":
        return _load_npz(model, path)
    state = read_foreign_state(path)
    info = _inspect_state(path, fmt, state)
    return _load_foreign(model, path, state, info)


# timm's tf_* models: TensorFlow's padding and batch-norm eps (timm's BN_EPS_TF_DEFAULT; its
# momentum stays timm's 0.1)
TF_VARIANT = dict(padding="same", bn_eps=1e-3)


def _load_foreign(model, path, state, info):
    config = model.config
    if config.get("padding") == "same" and info.naming == "timm" and info.arch.startswith("mobilenet_v3"):
        info.overrides.update(TF_VARIANT)        # a model built with TF padding is the tf_* variant
    library = keymaps.LIBRARY_MODEL_NAMES[(info.naming, info.arch)]
    if info.arch != config["arch"]:
        raise ValueError(f"{path} holds {info.naming}'s {library} ({info.arch}) weights, but the model is "
                         f"{config['arch']}; build a {info.arch} (npmobilenet.io.from_weights does it for you)")
    converted, problems = convert_state(model, state, info.naming)
    notes = []
    if info.width is not None and abs(info.width - config["width"]) > 1e-9:
        notes.append(f"the file is width {info.width:g}, the model width {config['width']:g}")
    if info.num_classes != config["num_classes"]:
        notes.append(f"the file has {info.num_classes} classes, the model {config['num_classes']}")
    file_eps = info.overrides.get("bn_eps", keymaps.LIBRARY_BN_EPS[(info.naming, info.arch)])
    model_eps = _model_bn_eps(model)
    if model_eps is not None and not np.isclose(model_eps, file_eps, rtol=1e-6, atol=0):
        problems.append(f"batch-norm eps: {info.naming}'s {info.arch} uses {file_eps:g}, the model {model_eps:g} "
                        f"(build with bn_eps={file_eps:g})")
    if problems:
        head = f"{path} ({info.naming} naming, {library}) does not fit the model ({config['arch']}, width {config['width']:g}, {config['num_classes']} classes)"
        if notes:
            head += ": " + "; ".join(notes)
        raise ValueError(head + "\n  " + "\n  ".join(problems)
                         + "\n  (npmobilenet.io.from_weights(path) builds the model the file describes)")
    model.load_state_dict(converted)
    warn_non_finite(converted, path)
    return model


VARIANTS = (None, "tf")


def from_weights(path, arch=None, width=None, num_classes=None, variant=None):
    """Build the model `path` describes and load it, in eval mode.

    For a foreign file, the architecture, width, class count and the library's variant (timm's
    V3 batch-norm eps, unscaled stem and head, expansion widths, depth-multiplied V2; timm's V4,
    which our builder follows as it is) are read from the file; `arch`, `width` and `num_classes`, if given, must agree with it (`width` is
    needed only when it cannot be inferred). An npmobilenet .npz rebuilds from its saved config.

    `variant="tf"`: the file holds one of timm's `tf_mobilenetv3_*` models (weights ported from
    TensorFlow), which pad as TensorFlow does ('same') and use its batch-norm eps (1e-3). Its keys
    and shapes are those of `mobilenetv3_*`, so the file cannot say which it is: loaded without
    `variant="tf"`, such a file gives slightly wrong outputs.
    """
    from npmobilenet.models import build

    path = os.fspath(path)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be None or 'tf' (timm's tf_* models), got {variant!r}")
    fmt = sniff_format(path)
    if fmt == "npz":
        from npmobilenet.io import checkpoint

        info = inspect_weights(path)
        _check_requested(path, info, arch, width, num_classes)
        if variant == "tf" and info.overrides.get("padding") != "same":
            raise ValueError(f"{path} is an npmobilenet checkpoint of a model without TensorFlow padding; "
                             "variant='tf' applies to timm's tf_* weight files")
        return checkpoint.load(path)
    state = read_foreign_state(path)
    application = _from_application(path, state, arch, width, num_classes, variant)
    if application is not None:
        return application
    info = _inspect_state(path, fmt, state)
    if variant == "tf":
        if info.naming != "timm" or not info.arch.startswith("mobilenet_v3"):
            raise ValueError(f"{path} holds {info.naming}'s {info.arch}; variant='tf' is timm's tf_mobilenetv3_* "
                             "(MobileNetV3 only)")
        info.overrides.update(TF_VARIANT)
    if info.width is None:
        if width is None:
            raise ValueError(f"{path}: cannot infer the width multiplier of this {info.arch}; pass width=")
        info.width = float(width)
    _check_requested(path, info, arch, width, num_classes)
    kwargs = _build_overrides(info)
    try:
        model = build(info.arch, info.width, info.num_classes, **kwargs)
    except TypeError as exc:
        raise ValueError(f"{path}: npmobilenet.build cannot follow this file's architecture ({exc}); "
                         f"it needs the build options {sorted(kwargs)}") from None
    _load_foreign(model, path, state, info)
    return model.eval()


def _from_application(path, state, arch, width, num_classes, variant):
    """torchvision's LR-ASPP or SSDLite (recognised by key names: `application_weights`), built
    and loaded; None for any other file."""
    from npmobilenet.application_weights import detect_application, from_application_state

    found = detect_application(state)
    if found is None:
        return None
    if variant is not None:
        raise ValueError(f"{path} holds torchvision's {found}; variant='tf' is timm's tf_mobilenetv3_*")
    try:
        model = from_application_state(state, arch, num_classes)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if width is not None and abs(float(width) - model.config["width"]) > 1e-9:
        raise ValueError(f"{path} holds a width-{model.config['width']:g} {found}, not width {float(width):g}")
    warn_non_finite(state, path)
    return model


def _check_requested(path, info, arch, width, num_classes):
    if arch is not None and arch != info.arch:
        raise ValueError(f"{path} holds {info.arch} weights ({info.naming} naming), not {arch}")
    if width is not None and info.width is not None and abs(float(width) - info.width) > 1e-9:
        raise ValueError(f"{path} holds a width-{info.width:g} {info.arch}, not width {float(width):g}")
    if num_classes is not None and num_classes != info.num_classes:
        raise ValueError(f"{path} has {info.num_classes} classes, not {num_classes}")


def _build_overrides(info):
    """The file's overrides, minus those equal to what the builder does anyway (keeps configs short
    and lets width-1.0 timm V3 files build without the builder's `expanded_channels` option)."""
    from npmobilenet.models import arch_spec

    spec = arch_spec(info.arch, info.width)
    defaults = dict(stem_channels=spec.stem_channels, head_channels=spec.head_channels,
                    last_channels=spec.last_channels, expanded_channels=tuple(b.expanded_channels for b in spec.blocks))
    kept = {}
    for key, value in info.overrides.items():
        if key in defaults and defaults[key] == value:
            continue
        kept[key] = list(value) if isinstance(value, tuple) else value
    return kept
