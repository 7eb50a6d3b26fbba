"""torchvision's weights for LR-ASPP and SSDLite: key names, recognising a file, loading.

The backbone's names and layouts are `io.keymaps`' (torchvision's V3-Large, read from the
backbone's lowered graph); this module adds where torchvision puts that backbone in each model
and the names of the heads:

    lraspp_mobilenet_v3_large        backbone.{j}...  = the classifier's features.{j}...
                                     classifier.cbr.0 / .1 (conv, BN), classifier.scale.1 (the
                                     gate's 1x1 conv), classifier.low_classifier, .high_classifier
    ssdlite320_mobilenet_v3_large    backbone.features.0.{j} = features.{j} for j <= 12, and
                                     features.13.block.0 (C4's expansion) as ...features.0.13;
                                     backbone.features.1.0.{k} = features.13.block.{k} (k >= 1: a
                                     slice of a Sequential keeps its keys),
                                     backbone.features.1.{j-13} = features.{j} for j >= 14;
                                     backbone.extra.{e}.{0,1,2}.{0 conv, 1 BN};
                                     head.{classification,regression}_head.module_list.{i}.0.0 /
                                     .0.1 (depthwise conv, BN) and .1 (the 1x1 conv with bias)
"""
import re

import numpy as np

from npmobilenet.io.keymaps import IGNORED_SUFFIXES, key_map, to_ours

APPLICATION_MARKS = {
    "lraspp_mobilenet_v3_large": "classifier.low_classifier.weight",
    "ssdlite320_mobilenet_v3_large": "head.classification_head.module_list.0.1.weight",
}


def detect_application(keys):
    """The application arch a state dict's keys name, or None."""
    keys = set(keys)
    return next((arch for arch, mark in APPLICATION_MARKS.items() if mark in keys), None)


def _ssdlite_backbone_key(key):
    """torchvision's classifier V3 key "features.{j}..." -> where SSDLite keeps it."""
    match = re.fullmatch(r"features\.(\d+)\.(.+)", key)
    j, rest = int(match.group(1)), match.group(2)
    if j <= 12:
        return f"backbone.features.0.{j}.{rest}"
    if j == 13:
        k, inner = re.fullmatch(r"block\.(\d+)\.(.+)", rest).groups()
        return f"backbone.features.0.13.{inner}" if k == "0" else f"backbone.features.1.0.{k}.{inner}"
    return f"backbone.features.1.{j - 13}.{rest}"


def _head_keys(model):
    """(our name, torchvision key, layout kind) of the parts after the backbone."""
    entries = []
    roles = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "mean": "running_mean",
             "var": "running_var"}

    our_names = {"mean": "running_mean", "var": "running_var"}

    def add(ours, theirs, kind, arrays=("weight",)):
        for role in arrays:
            entries.append((f"{ours}.{our_names.get(role, role)}", f"{theirs}.{roles[role]}",
                            "vector" if role != "weight" else kind))

    bn = ("gamma", "beta", "mean", "var")
    if model.arch == "lraspp_mobilenet_v3_large":
        add("classifier.cbr.conv", "classifier.cbr.0", "pointwise")
        add("classifier.cbr.bn", "classifier.cbr.1", None, bn)
        add("classifier.scale", "classifier.scale.1", "pointwise")
        add("classifier.low_classifier", "classifier.low_classifier", "pointwise", ("weight", "bias"))
        add("classifier.high_classifier", "classifier.high_classifier", "pointwise", ("weight", "bias"))
        return entries
    for e in range(len(model.extra)):
        for part, kind in enumerate(("pointwise", "depthwise", "pointwise")):
            add(f"extra.{e}.{part}.conv", f"backbone.extra.{e}.{part}.0", kind)
            add(f"extra.{e}.{part}.bn", f"backbone.extra.{e}.{part}.1", None, bn)
    for head in ("classification_head", "regression_head"):
        for i in range(len(getattr(model, head))):
            add(f"{head}.{i}.0.conv", f"head.{head}.module_list.{i}.0.0", "depthwise")
            add(f"{head}.{i}.0.bn", f"head.{head}.module_list.{i}.0.1", None, bn)
            add(f"{head}.{i}.1", f"head.{head}.module_list.{i}.1", "pointwise", ("weight", "bias"))
    return entries


def application_key_map(model):
    """Every parameter and buffer of an LR-ASPP or SSDLite model as (our name, torchvision key,
    layout kind of `io.keymaps.LAYOUTS`)."""
    entries = []
    for ours, theirs, kind in key_map(model.backbone.network, "torchvision"):
        if ours.startswith(("classifier.", "pool.")):
            continue                                   # the classification network's own head
        theirs = ("backbone." + theirs[len("features."):] if model.arch == "lraspp_mobilenet_v3_large"
                  else _ssdlite_backbone_key(theirs))
        entries.append((f"backbone.{ours}", theirs, kind))
    return entries + _head_keys(model)


def load_application_state(model, state):
    """Load torchvision's state dict (name -> array) into `model` in place; one ValueError lists
    every missing key, unexpected key and shape mismatch."""
    entries = application_key_map(model)
    known = {theirs for _, theirs, _ in entries}
    missing = sorted(theirs for _, theirs, _ in entries if theirs not in state)
    unexpected = sorted(k for k in state if k not in known and not k.endswith(IGNORED_SUFFIXES))
    converted, mismatched = {}, []
    targets = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for ours, theirs, kind in entries:
        if theirs not in state:
            continue
        array = to_ours(kind, np.asarray(state[theirs]))
        target = targets[ours].data if ours in targets else buffers[ours]
        if array.shape != target.shape:
            mismatched.append(f"{theirs}: model expects {target.shape} (ours), got {array.shape}")
        converted[ours] = array
    if missing or unexpected or mismatched:
        lines = ([f"missing keys: {', '.join(missing)}"] if missing else []) + (
            [f"unexpected keys: {', '.join(unexpected)}"] if unexpected else []) + (
            [f"shape mismatches: {'; '.join(mismatched)}"] if mismatched else [])
        raise ValueError(f"the file does not hold torchvision's {model.arch}:\n  " + "\n  ".join(lines))
    for ours, array in converted.items():
        target = targets[ours].data if ours in targets else buffers[ours]
        target[...] = array.astype(target.dtype)
    return model


def application_classes(state, arch):
    """The class count a torchvision state dict of `arch` was trained for."""
    if arch == "lraspp_mobilenet_v3_large":
        return int(np.shape(state["classifier.low_classifier.bias"])[0])
    boxes = 6                                          # SSDLite320: 6 default boxes per location
    return int(np.shape(state["head.classification_head.module_list.0.1.bias"])[0]) // boxes


# round widths first; any width that gives every channel count of the file builds the same network
WIDTH_CANDIDATES = tuple(round(k * 0.05, 2) for k in range(1, 41)) + tuple(round(k * 0.01, 2) for k in range(1, 201))


def _channels(state, key, axis=0):
    return int(np.shape(state[key])[axis])


def application_widths(state, arch):
    """The build options (width, and SSDLite's extra_width) under which the model has the channel
    counts of the file: the stem, the taps and the heads' inputs; ValueError if none does."""
    from npmobilenet.detection.ssdlite import EXTRA_CHANNELS, MIN_DEPTH
    from npmobilenet.models import arch_spec, scale_channels

    if arch == "lraspp_mobilenet_v3_large":
        wanted = (_channels(state, "backbone.0.0.weight"), _channels(state, "classifier.low_classifier.weight", 1),
                  _channels(state, "classifier.cbr.0.weight", 1))
        signature = lambda spec, w: (spec.stem_channels, spec.blocks[3].out_channels, spec.head_channels)  # noqa: E731
    else:
        wanted = (_channels(state, "backbone.features.0.0.0.weight"), _channels(state, "backbone.features.0.13.0.weight"),
                  _channels(state, "backbone.features.1.3.0.weight"))
        signature = lambda spec, w: (spec.stem_channels, spec.blocks[12].expanded_channels,  # noqa: E731
                                     6 * scale_channels(80, w))
    width = next((w for w in WIDTH_CANDIDATES if signature(arch_spec("mobilenet_v3_large", w), w) == wanted), None)
    if width is None:
        raise ValueError(f"no width multiplier of {arch} gives the file's channels (stem, taps, head: {wanted})")
    options = {"width": width}
    if arch == "ssdlite320_mobilenet_v3_large":
        extra = [_channels(state, f"backbone.extra.{e}.2.0.weight") for e in range(len(EXTRA_CHANNELS))]
        extra_width = next((w for w in (1.0,) + WIDTH_CANDIDATES
                            if [max(MIN_DEPTH, int(c * w)) for c in EXTRA_CHANNELS] == extra), None)
        if extra_width is None:
            raise ValueError(f"the file's extra blocks have {extra} channels, not max(16, int(c x)) of {EXTRA_CHANNELS}")
        if extra_width != 1.0:
            options["extra_width"] = extra_width
    return options


def from_application_state(state, arch=None, num_classes=None):
    """Build the LR-ASPP or SSDLite model a torchvision state dict holds and load it (eval mode).
    `arch` and `num_classes`, if given, must agree with the file."""
    from npmobilenet.applications import build

    found = detect_application(state)
    if found is None:
        raise ValueError("not torchvision's lraspp_mobilenet_v3_large or ssdlite320_mobilenet_v3_large weights")
    if arch is not None and arch != found:
        raise ValueError(f"the file holds {found} weights, not {arch}")
    classes = application_classes(state, found)
    if num_classes is not None and num_classes != classes:
        raise ValueError(f"the file's {found} has {classes} classes, not {num_classes}")
    return load_application_state(build(found, num_classes=classes, **application_widths(state, found)), state).eval()


def from_application_weights(path, arch=None, num_classes=None):
    """`from_application_state` of a torchvision .pth or .safetensors file (read by `io.formats`)."""
    from npmobilenet.io.formats import read_foreign_state

    return from_application_state(read_foreign_state(path), arch, num_classes)
