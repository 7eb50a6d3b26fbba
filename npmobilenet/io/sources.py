"""One way to name a model's weights, for every command that reads them:

    a registry name       mobilenet_v2.IMAGENET1K_V1 (`npmobilenet.io.registry`; found by `hub`)
    an npmobilenet .npz   a float checkpoint (pruned and factorised ones too) or an int8 one
    a foreign file        torchvision's or timm's .pth / .safetensors (`npmobilenet.io.weights`)

`open_model(spec, arch=None, width=None, tf=False)` -> (model, meta) with the same checks
everywhere: `arch` and `width` must agree with what the weights hold, and `tf` (timm's
tf_mobilenetv3_* files, whose keys cannot say so) applies to foreign V3 files only. `meta` is a
dict that always has

    "source"      what was asked for;  "path": the file read
    "kind"        "registry", "checkpoint", "int8" or "foreign"
    "preprocess"  {"resize", "crop", "interpolation", "mean", "std"} the weights expect, or None
                  (unknown: a foreign file)
    "classes"     class names, or None

plus, for a registry name, its entry (`registry.WeightsEntry.meta`), and for a checkpoint the
metadata training stored (resolution, mean, std, data, split seed...).
"""
import os

from npmobilenet.io import registry

KINDS = ("registry", "checkpoint", "int8", "foreign")


def check_config(config, source, arch, width, tf=False):
    """ValueError if --arch, --width or --tf contradict what `config` (a loaded model's) holds."""
    if arch is not None and arch != config.get("arch"):
        raise ValueError(f"{source} holds {config.get('arch')} weights, not {arch} (--arch)")
    if width is not None and abs(float(width) - float(config.get("width", 1.0))) > 1e-9:
        raise ValueError(f"{source} holds a width-{float(config.get('width', 1.0)):g} {config.get('arch')}, "
                         f"not width {float(width):g} (--width)")
    if tf and config.get("padding") != "same":
        raise ValueError(f"{source} is an npmobilenet checkpoint of a model without TensorFlow padding; "
                         "--tf applies to timm's tf_mobilenetv3_* weight files")


def checkpoint_preprocess(meta):
    """The preprocessing a checkpoint's training metadata implies, as a `Preprocess` dict, or None.

    Training resizes whole images to `resolution` (square) and normalises with the stored mean and
    std, or only scales to [0, 1] when none is stored (`training.augment.preprocessing`)."""
    resolution = meta.get("resolution")
    if not resolution:
        return None
    mean, std = meta.get("mean"), meta.get("std")
    if mean is None or std is None:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return {"resize": int(resolution), "crop": int(resolution), "interpolation": "bilinear",
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def open_model(spec, arch=None, width=None, tf=False):
    """The model that `spec` (a registry name or a weights file) names, in eval mode, and its meta.

    Raises FileNotFoundError for a file that does not exist (or registry weights not yet
    downloaded), ValueError when `arch`, `width` or `tf` contradict the weights.
    """
    if registry.is_weights_name(spec) and not os.path.exists(spec):
        from npmobilenet.io.hub import pretrained

        entry = registry.get(spec)
        if tf:
            raise ValueError(f"{spec} are torchvision's weights; --tf applies to timm's tf_mobilenetv3_* files")
        check_config({"arch": entry.arch, "width": entry.width}, spec, arch, width)
        model = pretrained(spec)
        meta = dict(model.meta, source=spec, kind="registry", classes=model.meta["categories"])
        return model, meta
    path = os.fspath(spec)
    if not os.path.exists(path):
        looks_like_name = "." in path and os.sep not in path and not path.endswith((".npz", ".pth", ".pt", ".safetensors"))
        if looks_like_name:
            registry.get(path)   # the unknown-name error, listing the known names
        raise FileNotFoundError(f"weights {path} do not exist (a file, or one of: {', '.join(registry.names())})")
    from npmobilenet.io.formats import sniff_format

    if sniff_format(path) == "npz":
        from npmobilenet.compression.qmodel import QuantizedModel
        from npmobilenet.io.checkpoint import load_with_meta

        model, stored = load_with_meta(path)
        kind = "int8" if isinstance(model, QuantizedModel) else "checkpoint"
        check_config(model.config, path, arch, width, tf)
        meta = dict(stored, source=spec, path=path, kind=kind, preprocess=checkpoint_preprocess(stored),
                    classes=stored.get("classes"))
        return model.eval(), meta
    from npmobilenet.io.weights import from_weights

    model = from_weights(path, arch=arch, width=width, variant="tf" if tf else None)
    meta = {"source": spec, "path": path, "kind": "foreign", "preprocess": None,
            "classes": registry.imagenet_classes() if model.config["num_classes"] == 1000 else None}
    return model, meta


def describe(model, meta):
    """One line: what was loaded (for the commands' reports)."""
    c = model.config
    kind = {"int8": "int8 ", "registry": "", "checkpoint": "", "foreign": ""}[meta["kind"]]
    name = f" ({meta['name']})" if meta["kind"] == "registry" else ""
    return f"{kind}{c['arch']} width {c['width']:g}, {c['num_classes']} classes{name}"
