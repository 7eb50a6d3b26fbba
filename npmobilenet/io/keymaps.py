"""Foreign weight names and layouts, in one place: torchvision's and timm's MobileNets <-> ours.

Everything that knows another library's naming or tensor layout is in this file. A map is read
from *our* model's lowered graph (`npmobilenet.graph.lower`): every conv, batch-norm and linear
op there holds the model's own arrays under the op's name, our dotted layer path
("blocks.3.conv_pw.conv", "blocks.3.se.reduce"), so the map follows the model's actual blocks
(which have an expansion, which have squeeze-and-excitation, which V4 block kind) without knowing
any layer class. Each array is paired with the foreign key it comes from and the layout transpose
that turns one into the other; the names are the tables below.

Layouts (PyTorch -> ours; ours are NHWC-friendly, see STYLE.md), by the op that holds the array:

    conv       (Cout, Cin, KH, KW) -> (KH, KW, Cin, Cout)   conv op, variant standard
    depthwise  (C, 1, KH, KW)      -> (KH, KW, C)           conv op, variant depthwise
    pointwise  (Cout, Cin, 1, 1)   -> (Cin, Cout)           conv op, variant pointwise; also a linear
                                                            op the library stores as a 1x1 conv on
                                                            a pooled vector (SE's fc1/fc2, timm's
                                                            V3 and V4 conv_head): FOREIGN_1X1_CONVS
    linear     (out, in)           -> (in, out)             linear op
    vector     (C,)                -> (C,)                  biases; batch-norm ops' four arrays

Batch norm: gamma -> weight, beta -> bias, running_mean, running_var; num_batches_tracked ignored.

How the libraries name the same network (block i counts from 0 over all blocks):

                        torchvision                            timm
    stem conv / bn      features.0.0 / features.0.1            conv_stem / bn1
    block i             features.{i+1}.conv.{k} (V2),          blocks.{stage}.{j} (stages of
                        features.{i+1}.block.{k} (V3),         TIMM_STAGE_REPEATS); parts by
                        parts numbered in order                name: TIMM_BLOCKS
    head conv / bn      features.{n+1}.0 / .1                  V2: conv_head / bn2; V3, V4:
                                                               blocks.{last stage}.0.conv / .bn1
    after pooling       classifier.{j}, as ours                V1, V2: classifier; V3: conv_head
                                                               (1x1 conv with bias) = our
                                                               classifier.0, classifier = .3; V4:
                                                               conv_head (1x1, no bias) / norm_head
                                                               = classifier.0.conv / .bn,
                                                               classifier = classifier.2

Where timm's architecture differs from torchvision's (the model built for a file follows the file;
`file_overrides` reads the differences from the file's shapes):
- V3: batch-norm eps 1e-5 (torchvision: 1e-3) and momentum 0.1 (0.01);
- V3: the 1x1 conv after pooling (1280 / 1024 features) is not scaled by the width multiplier;
- V3: below width 0.75 the 16-channel stem is not scaled;
- V3: expansion widths are make_divisible(in_channels * ratio) from the block's own input, where
  torchvision scales the paper's absolute expansion sizes (identical at width 1.0 only);
- V1 exists only in timm (ReLU6, eps 1e-5, channels rounded to multiples of 8);
- V4 exists only in timm, and our builder follows it (stem fixed below width 1.0, the 1280
  features after pooling never scaled): no overrides. timm's `mobilenetv4_conv_aa_*` and
  `_blur_*` (anti-aliased downsampling) have the keys and shapes of `mobilenetv4_conv_*` but
  compute otherwise, and are not supported (the file cannot say which it is); its hybrid models
  (attention blocks) are refused by name.
timm's default `pad_type=''` pads symmetrically, as torchvision does and we do; timm's `tf_*`
models pad as TensorFlow does ('same': asymmetric at stride 2 on even sizes) with batch-norm eps
1e-3, and have the same keys and shapes: `from_weights(..., variant="tf")` builds that variant
(`padding="same"`), since the file cannot tell.
"""
import re

import numpy as np

from npmobilenet.graph import lower

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
# a lowered conv op's variant -> the layout kind of its weight
CONV_VARIANT_KINDS = {"standard": "conv", "depthwise": "depthwise", "pointwise": "pointwise"}
# a lowered op's array -> the PyTorch parameter or buffer name it is stored under
TORCH_ARRAY_NAMES = {"weight": "weight", "bias": "bias",
                     "gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var"}
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
NAMINGS = ("torchvision", "timm")


def family(arch):
    """"mobilenet_v3" for mobilenet_v3_large and _small, "mobilenet_v4" for the mobilenet_v4_conv_*."""
    return arch[:len("mobilenet_vN")]


# Our op names outside the blocks -> the library's module names ({head}: the head's index: timm's
# last stage, torchvision's last feature). torchvision's classifier is ours, index for index.
TORCHVISION_TOP = {
    family_: {"stem.conv": "features.0.0", "stem.bn": "features.0.1",
              "head.conv": "features.{head}.0", "head.bn": "features.{head}.1"}
    for family_ in ("mobilenet_v2", "mobilenet_v3")
}
TIMM_TOP = {
    "mobilenet_v1": {"stem.conv": "conv_stem", "stem.bn": "bn1", "classifier.0": "classifier"},
    "mobilenet_v2": {"stem.conv": "conv_stem", "stem.bn": "bn1", "head.conv": "conv_head", "head.bn": "bn2",
                     "classifier.1": "classifier"},
    "mobilenet_v3": {"stem.conv": "conv_stem", "stem.bn": "bn1", "head.conv": "blocks.{head}.0.conv",
                     "head.bn": "blocks.{head}.0.bn1", "classifier.0": "conv_head", "classifier.3": "classifier"},
    "mobilenet_v4": {"stem.conv": "conv_stem", "stem.bn": "bn1", "head.conv": "blocks.{head}.0.conv",
                     "head.bn": "blocks.{head}.0.bn1", "classifier.0.conv": "conv_head",
                     "classifier.0.bn": "norm_head", "classifier.2": "classifier"},
}

# torchvision's blocks: features.{i+1}.{container}.{k}, with k counting the block's parts (our
# conv_pw, conv_dw, se, conv_pwl) in order. Our op name inside a block (the full one, else its
# last part) -> torchvision's, {k} the part's index, {k1} the next one. V2's projection is a bare
# Conv2d + BatchNorm2d, two entries of its Sequential; V3's SE holds fc1, fc2 (1x1 convs).
TORCHVISION_BLOCKS = {
    "mobilenet_v2": ("conv", {"conv": "{k}.0", "bn": "{k}.1", "conv_pwl.conv": "{k}", "conv_pwl.bn": "{k1}"}),
    "mobilenet_v3": ("block", {"conv": "{k}.0", "bn": "{k}.1", "se.reduce": "{k}.fc1", "se.expand": "{k}.fc2"}),
}

# timm's blocks, by the kind of block timm builds: our op names inside blocks.{i} -> timm's inside
# blocks.{stage}.{j}. Our block is of the first kind whose `ours` ops it has (V2/V3 blocks without
# expansion, and all of V1, are timm's DepthwiseSeparableConv "ds"). `file` names the two weights
# whose shapes give the block's expanded and output widths in a timm file; a file's block is of
# the first kind whose two weights it has.
_SE = {"se.reduce": "se.conv_reduce", "se.expand": "se.conv_expand"}
TIMM_BLOCKS = {
    # V4's UniversalInvertedResidual: its parts keep our names
    "uir": dict(ours=("pw_exp.conv",), file=("pw_exp.conv.weight", "pw_proj.conv.weight"),
                names={f"{part}.{op}": f"{part}.{op}" for part in ("dw_start", "pw_exp", "dw_mid", "pw_proj")
                       for op in ("conv", "bn")}),
    # V4's EdgeResidual (FusedIB)
    "er": dict(ours=("conv_exp.conv",), file=("conv_exp.weight", "conv_pwl.weight"),
               names={"conv_exp.conv": "conv_exp", "conv_exp.bn": "bn1", "conv_pwl.conv": "conv_pwl",
                      "conv_pwl.bn": "bn2"}),
    # V2/V3's InvertedResidual
    "ir": dict(ours=("conv_pw.conv", "conv_pwl.conv"), file=("conv_dw.weight", "conv_pwl.weight"),
               names={"conv_pw.conv": "conv_pw", "conv_pw.bn": "bn1", "conv_dw.conv": "conv_dw",
                      "conv_dw.bn": "bn2", "conv_pwl.conv": "conv_pwl", "conv_pwl.bn": "bn3", **_SE}),
    # DepthwiseSeparableConv: V1's blocks, V2/V3's first; its pointwise conv is our projection
    "ds": dict(ours=("conv_dw.conv",), file=("conv_dw.weight", "conv_pw.weight"),
               names={"conv_dw.conv": "conv_dw", "conv_dw.bn": "bn1", "conv_pw.conv": "conv_pw",
                      "conv_pw.bn": "bn2", "conv_pwl.conv": "conv_pw", "conv_pwl.bn": "bn2", **_SE}),
    # ConvBnAct: V4's conv rows (our block is the conv -> BN -> ReLU itself)
    "cn": dict(ours=("conv",), file=("conv.weight", "conv.weight"), names={"conv": "conv", "bn": "bn1"}),
}

# linear ops the library stores as 1x1 convolutions (the last part of its module name)
FOREIGN_1X1_CONVS = {"torchvision": ("fc1", "fc2"), "timm": ("conv_reduce", "conv_expand", "conv_head")}

# timm groups blocks into stages, one per row of its architecture definition (the papers' tables
# with rows of equal output width merged; V4: as its arch strings group them). V3's and V4's last
# stage, the 1x1 head conv, is not counted.
TIMM_STAGE_REPEATS = {
    "mobilenet_v1": (1, 2, 2, 6, 2),
    "mobilenet_v2": (1, 2, 3, 4, 3, 3, 1),
    "mobilenet_v3_large": (1, 2, 3, 4, 2, 3),
    "mobilenet_v3_small": (1, 2, 3, 2, 3),
    "mobilenet_v4_conv_small": (2, 2, 6, 6),
    "mobilenet_v4_conv_medium": (1, 2, 8, 11),
    "mobilenet_v4_conv_large": (1, 2, 11, 13),
}

# batch-norm eps each library's model uses (V3 in torchvision takes TensorFlow's 1e-3)
LIBRARY_BN_EPS = {
    ("torchvision", "mobilenet_v2"): 1e-5,
    ("torchvision", "mobilenet_v3_large"): 1e-3,
    ("torchvision", "mobilenet_v3_small"): 1e-3,
    **{("timm", arch): 1e-5 for arch in TIMM_STAGE_REPEATS},
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
    ("timm", "mobilenet_v4_conv_small"): "mobilenetv4_conv_small*",
    ("timm", "mobilenet_v4_conv_medium"): "mobilenetv4_conv_medium",
    ("timm", "mobilenet_v4_conv_large"): "mobilenetv4_conv_large",
}


def _lowered_arrays(model):
    """Every array the model's lowered graph holds, in execution order, as (op name, array role
    (the op's attribute: weight, bias, gamma, beta, mean, var), our parameter or buffer name,
    op kind, our layout kind: CONV_VARIANT_KINDS for a conv weight, "linear", or "vector")."""
    # the ops hold the model's own arrays: identity finds each one's parameter or buffer name
    names = {id(p.data): name for name, p in model.named_parameters()}
    names.update({id(b): name for name, b in model.named_buffers()})
    out = []
    for op in lower(model):
        for role in op.array_names:
            array = getattr(op, role, None)
            if array is None:
                continue
            if id(array) not in names:
                raise ValueError(f"op {op.name} ({op.kind}) holds a {role} that is no parameter or buffer of the model")
            if role != "weight":
                kind = "vector"
            elif op.kind == "conv":
                kind = CONV_VARIANT_KINDS[op.variant]
            elif op.kind == "linear":
                kind = "linear"
            else:
                raise ValueError(f"op {op.name}: no PyTorch layout for a {op.kind} op's weight")
            out.append((op.name, role, names[id(array)], op.kind, kind))
    return out


def _block_index(op_name):
    """(block index, op name inside the block) of an op in blocks.{i}, else (None, op name)."""
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", op_name)
    return (int(match.group(1)), match.group(2)) if match else (None, op_name)


def _blocks(op_names):
    """{block index: [op names inside it, in order]}."""
    blocks = {}
    for name in op_names:
        index, inner = _block_index(name)
        if index is not None and inner not in blocks.setdefault(index, []):
            blocks[index].append(inner)
    return blocks


def _torchvision_names(arch, op_names):
    """{our op name: torchvision's module name}."""
    if arch not in ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"):
        raise ValueError(f"torchvision has no {arch}; its MobileNets are mobilenet_v2 and mobilenet_v3_large/small")
    container, table = TORCHVISION_BLOCKS[family(arch)]
    blocks = _blocks(op_names)
    names = {}
    for i, inner_names in blocks.items():
        parts = []  # the block's parts in order: conv_pw, conv_dw, se, conv_pwl (those it has)
        for inner in inner_names:
            part = inner.split(".")[0]
            if part not in parts:
                parts.append(part)
            k = parts.index(part)  # V2's bare projection takes two Sequential entries, k and k + 1
            pattern = table.get(inner, table.get(inner.rsplit(".", 1)[-1]))
            if pattern is None:
                raise ValueError(f"torchvision's {arch} has no name for our blocks.{i}.{inner}")
            names[f"blocks.{i}.{inner}"] = f"features.{i + 1}.{container}." + pattern.format(k=k, k1=k + 1)
    top = {ours: theirs.format(head=len(blocks) + 1) for ours, theirs in TORCHVISION_TOP[family(arch)].items()}
    for name in op_names:
        if _block_index(name)[0] is None:
            names[name] = top.get(name, name if name.startswith("classifier.") else None)
    return names


def _timm_block_kind(inner_names):
    """timm's kind of block (a key of TIMM_BLOCKS) for our block with these op names inside it."""
    present = set(inner_names)
    return next((kind for kind, entry in TIMM_BLOCKS.items() if present.issuperset(entry["ours"])), None)


def _timm_stages(arch, config):
    """Blocks per timm stage: for V1 and V2 timm's stages are the papers' table rows, so a
    depth-multiplied model's `repeats` option is its stage list."""
    repeats = config.get("repeats") if arch in ("mobilenet_v1", "mobilenet_v2") else None
    return tuple(repeats) if repeats is not None else TIMM_STAGE_REPEATS[arch]


def _timm_names(arch, config, op_names):
    """{our op name: timm's module name}."""
    repeats = _timm_stages(arch, config)
    blocks = _blocks(op_names)
    if sum(repeats) != len(blocks):
        raise ValueError(f"timm's {arch} has {sum(repeats)} blocks; the model has {len(blocks)}")
    positions = [(s, j) for s, n in enumerate(repeats) for j in range(n)]
    names = {}
    for i, inner_names in blocks.items():
        kind = _timm_block_kind(inner_names)
        table = TIMM_BLOCKS[kind]["names"] if kind else {}
        for inner in inner_names:
            if inner not in table:
                raise ValueError(f"timm's {arch} has no name for our blocks.{i}.{inner} (timm block kind {kind})")
            names[f"blocks.{i}.{inner}"] = "blocks.{}.{}.".format(*positions[i]) + table[inner]
    top = {ours: theirs.format(head=len(repeats)) for ours, theirs in TIMM_TOP[family(arch)].items()}
    names.update({name: top.get(name) for name in op_names if _block_index(name)[0] is None})
    return names


def key_map(model, naming):
    """Every parameter and buffer of `model` paired with its foreign key and layout kind.

    Returns a list of (our name, foreign key, kind) with kind a key of LAYOUTS, read from the
    model's lowered graph (module doc). A foreign 1x1 conv that is our linear op (SE, timm's V3
    and V4 conv_head) has kind "pointwise".
    """
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {NAMINGS}, got {naming!r}")
    arch = model.config["arch"]
    arrays = _lowered_arrays(model)
    op_names = list(dict.fromkeys(op_name for op_name, *_ in arrays))
    modules = (_torchvision_names(arch, op_names) if naming == "torchvision"
               else _timm_names(arch, model.config, op_names))
    entries = []
    for op_name, role, ours, op_kind, kind in arrays:
        theirs = modules.get(op_name)
        if theirs is None:
            raise ValueError(f"{naming}'s {arch} has no name for our {op_name} ({op_kind})")
        if kind == "linear" and theirs.rsplit(".", 1)[-1] in FOREIGN_1X1_CONVS[naming]:
            kind = "pointwise"
        entries.append((ours, f"{theirs}.{TORCH_ARRAY_NAMES[role]}", kind))
    return entries
