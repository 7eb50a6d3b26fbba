"""Foreign weight names and layouts, in one place: torchvision's and timm's MobileNets <-> ours.

Everything that knows another library's naming or tensor layout is in this file. A map is derived
from *our* model's tree (so it follows the model's actual blocks: which have an expansion layer,
which have squeeze-and-excitation) and pairs every parameter and buffer with the foreign key it
comes from and the layout transpose that turns one into the other.

Layouts (PyTorch -> ours; ours are NHWC-friendly, see STYLE.md):

    conv       (Cout, Cin, KH, KW) -> (KH, KW, Cin, Cout)
    depthwise  (C, 1, KH, KW)      -> (KH, KW, C)
    pointwise  (Cout, Cin, 1, 1)   -> (Cin, Cout)     also SE's fc1/fc2 and timm's V3 conv_head,
                                                      1x1 convs with bias that act on a pooled
                                                      vector, i.e. our Linear layers
    linear     (out, in)           -> (in, out)
    vector     (C,)                -> (C,)            biases; BN weight/bias/running stats

Batch norm: weight -> gamma, bias -> beta, running_mean, running_var; num_batches_tracked ignored.

How the libraries name the same network (block i counts from 0 over all blocks):

                        torchvision                            timm
    stem conv / bn      features.0.0 / features.0.1            conv_stem / bn1
    block i             features.{i+1}.conv.{k} (V2),          blocks.{stage}.{j} (stages of
                        features.{i+1}.block.{k} (V3),         TIMM_STAGE_REPEATS); parts by
                        parts numbered in order                name: TIMM_BLOCK_PARTS
    head conv / bn      features.{n+1}.0 / .1                  V2: conv_head / bn2;
                                                               V3: blocks.{last stage}.0.conv / .bn1
    classifier          classifier.{j}, as ours                V1: classifier; V2: classifier;
                                                               V3: conv_head (1x1 conv with bias,
                                                               after pooling) = our classifier.0,
                                                               classifier = our classifier.3

Where timm's architecture differs from torchvision's (the model built for a file follows the file;
`file_overrides` reads the differences from the file's shapes):
- V3: batch-norm eps 1e-5 (torchvision: 1e-3) and momentum 0.1 (0.01);
- V3: the 1x1 conv after pooling (1280 / 1024 features) is not scaled by the width multiplier;
- V3: below width 0.75 the 16-channel stem is not scaled;
- V3: expansion widths are make_divisible(in_channels * ratio) from the block's own input, where
  torchvision scales the paper's absolute expansion sizes (identical at width 1.0 only);
- V1 exists only in timm (ReLU6, eps 1e-5, channels rounded to multiples of 8).
timm's default `pad_type=''` pads symmetrically, as torchvision does and we do; timm's `tf_*`
models pad as TensorFlow does ('same': asymmetric at stride 2 on even sizes) with batch-norm eps
1e-3, and have the same keys and shapes: `from_weights(..., variant="tf")` builds that variant
(`padding="same"`), since the file cannot tell.
"""
import numpy as np

# -- layouts ---------------------------------------------------------------------------------------
# kind: (PyTorch layout, our layout, PyTorch -> ours, ours -> PyTorch)
LAYOUTS = {
    "conv": ("(Cout, Cin, KH, KW)", "(KH, KW, Cin, Cout)",
             lambda w: w.transpose(2, 3, 1, 0), lambda w: w.transpose(3, 2, 0, 1)),
    "depthwise": ("(C, 1, KH, KW)", "(KH, KW, C)",
                  lambda w: w[:, 0].transpose(1, 2, 0), lambda w: w.transpose(2, 0, 1)[:, None]),
    "pointwise": ("(Cout, Cin, 1, 1)", "(Cin, Cout)",
                  lambda w: w[:, :, 0, 0].T, lambda w: w.T[:, :, None, None]),
    "linear": ("(out, in)", "(in, out)", lambda w: w.T, lambda w: w.T),
    "vector": ("(C,)", "(C,)", lambda w: w, lambda w: w),
}
# the rank each kind has in PyTorch's layout (and extra checks a transpose relies on)
_TORCH_RANK = {"conv": 4, "depthwise": 4, "pointwise": 4, "linear": 2, "vector": 1}

BN_NAMES = {"gamma": "weight", "beta": "bias", "running_mean": "running_mean", "running_var": "running_var"}
IGNORED_SUFFIXES = ("num_batches_tracked",)


def to_ours(kind, array):
    """Transpose a PyTorch-layout array of `kind` to our layout (a C-contiguous copy)."""
    array = np.asarray(array)
    if array.ndim != _TORCH_RANK[kind] or (kind == "depthwise" and array.shape[1] != 1) or (
            kind == "pointwise" and array.shape[2:] != (1, 1)):
        raise ValueError(f"a {kind} weight must have PyTorch layout {LAYOUTS[kind][0]}, got shape {array.shape}")
    return np.ascontiguousarray(LAYOUTS[kind][2](array))


def to_torch(kind, array):
    """Our layout -> PyTorch's (the inverse of `to_ours`)."""
    return np.ascontiguousarray(LAYOUTS[kind][3](np.asarray(array)))


def torch_shape(kind, our_shape):
    """The PyTorch-layout shape of an array of `our_shape`, or None if the rank does not fit."""
    try:
        return to_torch(kind, np.empty(our_shape, dtype=np.uint8)).shape
    except (ValueError, IndexError):
        return None


def our_shape(kind, torch_shape_):
    """Our-layout shape of a PyTorch array of `torch_shape_`, or None if it does not fit the kind."""
    try:
        return to_ours(kind, np.empty(torch_shape_, dtype=np.uint8)).shape
    except (ValueError, IndexError):
        return None


# -- names -----------------------------------------------------------------------------------------
# timm groups blocks into stages, one per row of its architecture definition (the papers' tables
# with rows of equal output width merged). V3's last stage is the 1x1 head conv.
TIMM_STAGE_REPEATS = {
    "mobilenet_v1": (1, 2, 2, 6, 2),
    "mobilenet_v2": (1, 2, 3, 4, 3, 3, 1),
    "mobilenet_v3_large": (1, 2, 3, 4, 2, 3),
    "mobilenet_v3_small": (1, 2, 3, 2, 3),
}

# Our block parts -> timm's names inside blocks.{stage}.{j}. timm's first block of V2/V3 (and all
# of V1) is a DepthwiseSeparableConv ("ds": dw, [se], pw); the rest are InvertedResidual
# ("ir": pw, dw, [se], pwl). Our V2/V3 blocks without expansion are the "ds" ones.
TIMM_BLOCK_PARTS = {
    "ds": {"conv_dw": ("conv_dw", "bn1"), "conv_pw": ("conv_pw", "bn2"), "conv_pwl": ("conv_pw", "bn2"),
           "se.reduce": "se.conv_reduce", "se.expand": "se.conv_expand"},
    "ir": {"conv_pw": ("conv_pw", "bn1"), "conv_dw": ("conv_dw", "bn2"), "conv_pwl": ("conv_pwl", "bn3"),
           "se.reduce": "se.conv_reduce", "se.expand": "se.conv_expand"},
}

NAMINGS = ("torchvision", "timm")
# batch-norm eps each library's model uses (V3 in torchvision takes TensorFlow's 1e-3)
LIBRARY_BN_EPS = {
    ("torchvision", "mobilenet_v2"): 1e-5,
    ("torchvision", "mobilenet_v3_large"): 1e-3,
    ("torchvision", "mobilenet_v3_small"): 1e-3,
    ("timm", "mobilenet_v1"): 1e-5,
    ("timm", "mobilenet_v2"): 1e-5,
    ("timm", "mobilenet_v3_large"): 1e-5,
    ("timm", "mobilenet_v3_small"): 1e-5,
}
# the library's model name for each supported (naming, arch)
LIBRARY_MODEL_NAMES = {
    ("torchvision", "mobilenet_v2"): "mobilenet_v2",
    ("torchvision", "mobilenet_v3_large"): "mobilenet_v3_large",
    ("torchvision", "mobilenet_v3_small"): "mobilenet_v3_small",
    ("timm", "mobilenet_v1"): "mobilenetv1_100",
    ("timm", "mobilenet_v2"): "mobilenetv2_*",
    ("timm", "mobilenet_v3_large"): "mobilenetv3_large_*",
    ("timm", "mobilenet_v3_small"): "mobilenetv3_small_*",
}


def _block_parts(block):
    """Our block's parts in execution order: names of ConvBNAct children and 'se'."""
    return [name for name in ("conv_pw", "conv_dw", "se", "conv_pwl") if getattr(block, name, None) is not None]


def _torchvision_modules(model):
    """[(our module path, foreign conv-or-linear prefix, foreign bn prefix or None, kind of layer)]."""
    arch = model.config["arch"]
    if arch not in ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"):
        raise ValueError(f"torchvision has no {arch}; its MobileNets are mobilenet_v2 and mobilenet_v3_large/small")
    out = [("stem", "features.0.0", "features.0.1")]
    for i, block in enumerate(model.blocks):
        if arch == "mobilenet_v2":
            # features.{n}.conv = [ConvBNReLU expand]?, ConvBNReLU dw, Conv2d project, BatchNorm2d
            c, k = f"features.{i + 1}.conv", 0
            for part in _block_parts(block):
                if part == "conv_pwl":
                    out.append((f"blocks.{i}.conv_pwl", f"{c}.{k}", f"{c}.{k + 1}"))
                else:
                    out.append((f"blocks.{i}.{part}", f"{c}.{k}.0", f"{c}.{k}.1"))
                    k += 1
        else:
            # features.{n}.block = [expand]?, dw, [SqueezeExcitation(fc1, fc2)]?, project; each Conv-BN(-act)
            c = f"features.{i + 1}.block"
            for k, part in enumerate(_block_parts(block)):
                if part == "se":
                    out.append((f"blocks.{i}.se.reduce", f"{c}.{k}.fc1", None))
                    out.append((f"blocks.{i}.se.expand", f"{c}.{k}.fc2", None))
                else:
                    out.append((f"blocks.{i}.{part}", f"{c}.{k}.0", f"{c}.{k}.1"))
    last = len(model.blocks) + 1
    out.append(("head", f"features.{last}.0", f"features.{last}.1"))
    for j, layer in enumerate(model.classifier):
        if hasattr(layer, "weight"):
            out.append((f"classifier.{j}", f"classifier.{j}", None))
    return out


def _timm_stages(arch, config):
    """Blocks per timm stage: for V1 and V2 timm's stages are the papers' table rows, so a
    depth-multiplied model's `repeats` option is its stage list."""
    repeats = config.get("repeats") if arch in ("mobilenet_v1", "mobilenet_v2") else None
    return tuple(repeats) if repeats is not None else TIMM_STAGE_REPEATS[arch]


def _timm_modules(model):
    arch = model.config["arch"]
    repeats = _timm_stages(arch, model.config)
    if sum(repeats) != len(model.blocks):
        raise ValueError(f"timm's {arch} has {sum(repeats)} blocks; the model has {len(model.blocks)}")
    positions = [(s, j) for s, n in enumerate(repeats) for j in range(n)]
    out = [("stem", "conv_stem", "bn1")]
    for i, block in enumerate(model.blocks):
        prefix = "blocks.{}.{}".format(*positions[i])
        parts = TIMM_BLOCK_PARTS["ir" if arch != "mobilenet_v1" and block.conv_pw is not None else "ds"]
        for part in _block_parts(block):
            if part == "se":
                out.append((f"blocks.{i}.se.reduce", f"{prefix}.{parts['se.reduce']}", None))
                out.append((f"blocks.{i}.se.expand", f"{prefix}.{parts['se.expand']}", None))
            else:
                conv, bn = parts[part]
                out.append((f"blocks.{i}.{part}", f"{prefix}.{conv}", f"{prefix}.{bn}"))
    if arch == "mobilenet_v1":
        out.append(("classifier.0", "classifier", None))
    elif arch == "mobilenet_v2":
        out.append(("head", "conv_head", "bn2"))
        out.append(("classifier.1", "classifier", None))
    else:
        out.append(("head", f"blocks.{len(repeats)}.0.conv", f"blocks.{len(repeats)}.0.bn1"))
        out.append(("classifier.0", "conv_head", None))
        out.append(("classifier.3", "classifier", None))
    return out


def key_map(model, naming):
    """Every parameter and buffer of `model` paired with its foreign key and layout kind.

    Returns a list of (our name, foreign key, kind) with kind a key of LAYOUTS. A foreign
    1x1 conv that feeds our Linear (SE, timm's V3 conv_head) has kind "pointwise".
    """
    from npmobilenet.layers import Conv2d, DepthwiseConv2d, Linear, PointwiseConv2d

    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {NAMINGS}, got {naming!r}")
    modules = dict(model.modules())
    table = _torchvision_modules(model) if naming == "torchvision" else _timm_modules(model)
    entries = []
    for ours, theirs, theirs_bn in table:
        layer = modules[ours]
        if theirs_bn is not None:  # a ConvBNAct: conv + batch norm
            conv = layer.conv
            kind = {Conv2d: "conv", DepthwiseConv2d: "depthwise", PointwiseConv2d: "pointwise"}[type(conv)]
            entries.append((f"{ours}.conv.weight", f"{theirs}.weight", kind))
            if conv.bias is not None:
                entries.append((f"{ours}.conv.bias", f"{theirs}.bias", "vector"))
            for our_bn, their_bn in BN_NAMES.items():
                entries.append((f"{ours}.bn.{our_bn}", f"{theirs_bn}.{their_bn}", "vector"))
        else:
            if not isinstance(layer, Linear):
                raise TypeError(f"{ours} is a {type(layer).__name__}, expected a Linear")
            # our Linear layers inside SE and timm's V3 conv_head are 1x1 convolutions in PyTorch
            kind = "linear" if theirs.startswith("classifier") else "pointwise"
            entries.append((f"{ours}.weight", f"{theirs}.weight", kind))
            if layer.bias is not None:
                entries.append((f"{ours}.bias", f"{theirs}.bias", "vector"))
    return entries


# -- recognising a file ------------------------------------------------------------------------------
def detect_naming(keys):
    """(naming, arch) of a state dict from its key names alone, or raise ValueError saying why not.

    Decided by structure (how many features / stages, which head), not by any single key, so a
    file missing a few keys is still recognised and its missing keys then listed one by one.
    """
    keys = set(keys)
    if any(k.startswith("features.0.") for k in keys):
        feature_ids = {int(k.split(".")[1]) for k in keys if k.startswith("features.") and k.split(".")[1].isdigit()}
        last = max(feature_ids)
        v3_head = any(k.startswith("classifier.3.") for k in keys)
        if not v3_head and last == 18:
            return "torchvision", "mobilenet_v2"
        if v3_head and last == 16:
            return "torchvision", "mobilenet_v3_large"
        if v3_head and last == 12:
            return "torchvision", "mobilenet_v3_small"
        raise ValueError(
            f"torchvision-style keys (features.*) but not a MobileNet V2/V3 layout (last feature index {last}, "
            f"classifier keys {sorted(k for k in keys if k.startswith('classifier'))})"
        )
    if any(k.startswith(("conv_stem.", "blocks.0.0.")) for k in keys):
        stages = {int(k.split(".")[1]) for k in keys if k.startswith("blocks.") and k.split(".")[1].isdigit()}
        n_stages = max(stages) + 1 if stages else 0
        has_pwl = any(".conv_pwl." in k for k in keys)
        if n_stages == 5 and not has_pwl:
            return "timm", "mobilenet_v1"
        if n_stages == 7 and any(k.startswith("blocks.6.0.conv.") for k in keys):
            return "timm", "mobilenet_v3_large"
        if n_stages == 7:
            return "timm", "mobilenet_v2"
        if n_stages == 6 and any(k.startswith("blocks.5.0.conv.") for k in keys):
            return "timm", "mobilenet_v3_small"
        raise ValueError(
            f"timm-style keys (conv_stem, blocks.*) but not a supported timm MobileNet "
            f"(mobilenetv1_100, mobilenetv2_*, mobilenetv3_large_*, mobilenetv3_small_*): {n_stages} stages"
        )
    sample = ", ".join(sorted(keys)[:5])
    raise ValueError(
        "unrecognised key names: expected torchvision's (features.0.0.weight ...) or timm's "
        f"(conv_stem.weight ...) MobileNets; the file starts with {sample}"
    )


def count_blocks(state, naming, arch):
    """How many blocks the file's network has (our builder makes the papers' count)."""
    if naming == "timm":
        n_stages = len(TIMM_STAGE_REPEATS[arch])
        return len({tuple(k.split(".")[1:3]) for k in state
                    if k.startswith("blocks.") and k.split(".")[1].isdigit() and int(k.split(".")[1]) < n_stages})
    return max(int(k.split(".")[1]) for k in state if k.startswith("features.")) - 1


def file_stage_repeats(state, arch):
    """Blocks per stage in a timm file (its `blocks.{stage}.{j}` keys; V3's last stage, the head
    conv, not counted)."""
    stages = len(TIMM_STAGE_REPEATS[arch])
    found = [set() for _ in range(stages)]
    for k in state:
        parts = k.split(".")
        if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() and parts[2].isdigit() and int(parts[1]) < stages:
            found[int(parts[1])].add(int(parts[2]))
    return tuple(len(js) for js in found)


def _block_prefixes(state, naming, arch):
    """The file's block prefixes, in order."""
    if naming == "timm":
        return [f"blocks.{s}.{j}" for s, n in enumerate(file_stage_repeats(state, arch)) for j in range(n)]
    last = max(int(k.split(".")[1]) for k in state if k.startswith("features."))
    container = "conv" if arch == "mobilenet_v2" else "block"
    return [f"features.{n}.{container}" for n in range(1, last)]


def _index_path(key, prefix):
    return [int(t) for t in key[len(prefix):].split(".") if t.isdigit()]


def file_channels(state, naming, arch):
    """The channel counts a file's shapes say, as our builder's spec names them:
    dict(stem, expanded [per block], out [per block], head (0: none), last (0: none))."""
    expanded, out = [], []
    for prefix in _block_prefixes(state, naming, arch):
        if naming == "timm":
            dw = state[f"{prefix}.conv_dw.weight"]
            project = state.get(f"{prefix}.conv_pwl.weight", state.get(f"{prefix}.conv_pw.weight"))
            if project is None:
                raise KeyError(f"{prefix}.conv_pwl.weight")
        else:
            convs = sorted((k for k, v in state.items() if k.startswith(prefix + ".") and k.endswith(".weight")
                            and np.ndim(v) == 4 and ".fc" not in k), key=lambda k: _index_path(k, prefix))
            depthwise = [k for k in convs if np.shape(state[k])[1] == 1]
            if not convs or not depthwise:
                raise KeyError(f"{prefix}.*.weight")
            dw, project = state[depthwise[0]], state[convs[-1]]
        expanded.append(int(np.shape(dw)[0]))
        out.append(int(np.shape(project)[0]))
    if naming == "timm":
        stem = state["conv_stem.weight"]
        head = {"mobilenet_v1": None, "mobilenet_v2": "conv_head.weight"}.get(
            arch, f"blocks.{len(TIMM_STAGE_REPEATS.get(arch, ()))}.0.conv.weight")
        last = "conv_head.weight" if arch.startswith("mobilenet_v3") else None
    else:
        stem = state["features.0.0.weight"]
        head = f"features.{len(out) + 1}.0.weight"
        last = "classifier.0.weight" if arch.startswith("mobilenet_v3") else None
    return dict(stem=int(np.shape(stem)[0]), expanded=expanded, out=out,
                head=int(np.shape(state[head])[0]) if head else 0,
                last=int(np.shape(state[last])[0]) if last else 0)


def file_overrides(state, naming, arch):
    """Build options that make our model follow the file's architecture (see the module doc):
    timm's V3 channel choices, read from the file's shapes, and its batch-norm constants; a
    depth-multiplied timm V1/V2 (mobilenetv2_110d, _120d): its blocks per table row, and its stem
    and head widths, which timm keeps at 32 and 1280 for those (fix_stem_head)."""
    if naming == "timm" and arch in ("mobilenet_v1", "mobilenet_v2"):
        repeats = file_stage_repeats(state, arch)
        if repeats == TIMM_STAGE_REPEATS[arch] or 0 in repeats:
            return {}
        try:
            channels = file_channels(state, naming, arch)
        except KeyError as exc:
            raise ValueError(f"timm {arch} file lacks {exc.args[0]}") from None
        overrides = dict(repeats=repeats, stem_channels=channels["stem"])
        if channels["head"]:
            overrides["head_channels"] = channels["head"]
        return overrides
    if naming == "timm" and arch.startswith("mobilenet_v3"):
        try:
            channels = file_channels(state, naming, arch)
        except KeyError as exc:
            raise ValueError(f"timm {arch} file lacks {exc.args[0]}") from None
        return dict(stem_channels=channels["stem"], expanded_channels=tuple(channels["expanded"]),
                    head_channels=channels["head"], last_channels=channels["last"], bn_eps=1e-5, bn_momentum=0.1)
    return {}


def num_classes_of(state, naming, arch):
    """The classifier's output count, from the file."""
    key = "classifier.weight" if naming == "timm" else ("classifier.1.weight" if arch == "mobilenet_v2" else "classifier.3.weight")
    return int(np.shape(state[key])[0])
