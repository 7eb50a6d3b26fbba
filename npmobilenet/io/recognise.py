"""Recognising a foreign weights file by its keys and shapes alone: which library named it
(torchvision or timm), which architecture, how many blocks per stage, which channel widths, which
build options make our model follow it (`file_overrides`), and its class count. The names
themselves are `keymaps.py`'s tables.

Decided by structure (how many features or stages, which head), not by any single key, so a file
missing a few keys is still recognised and its missing keys then listed one by one.
"""
import numpy as np

from npmobilenet.io.keymaps import LIBRARY_MODEL_NAMES, TIMM_BLOCKS, TIMM_STAGE_REPEATS, TORCHVISION_BLOCKS, family


# timm's V4 models: keys only they have among timm's MobileNets and EfficientNets (the batch norm
# after pooling, UIR blocks), and keys that mark its hybrid models (attention blocks and layer
# scale), which we do not build
TIMM_V4_MARKS = ("norm_head.", ".dw_start.", ".pw_exp.", ".dw_mid.")
TIMM_HYBRID_MARKS = (".attn.", ".layer_scale.")


def _stage_of(key):
    """(stage, index) of a timm `blocks.{stage}.{j}.` key, else None."""
    parts = key.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    return None


def _stage_counts(keys, stages):
    """Blocks in each of the first `stages` timm stages (its `blocks.{stage}.{j}` keys)."""
    found = [set() for _ in range(stages)]
    for position in filter(None, map(_stage_of, keys)):
        if position[0] < stages:
            found[position[0]].add(position[1])
    return tuple(len(js) for js in found)


def _detect_timm_v4(keys):
    hybrid = sorted(k for k in keys if any(mark in k for mark in TIMM_HYBRID_MARKS))
    if hybrid:
        raise ValueError(f"timm MobileNetV4 hybrid keys ({hybrid[0]}, ...): attention blocks, which npmobilenet does "
                         "not build; supported are mobilenetv4_conv_small*, _medium and _large")
    counts = {arch: repeats for arch, repeats in TIMM_STAGE_REPEATS.items() if family(arch) == "mobilenet_v4"}
    found = _stage_counts(keys, 4)
    for arch, repeats in counts.items():
        if found == repeats:
            return arch
    known = ", ".join(f"{LIBRARY_MODEL_NAMES[('timm', arch)]} {repeats}" for arch, repeats in counts.items())
    first = "a conv row (small)" if any(k.startswith("blocks.0.0.conv.") for k in keys) else "a FusedIB (medium, large)"
    raise ValueError(f"timm MobileNetV4 keys, first block {first}, but {found} blocks in stages 0-3 where timm's "
                     f"models have: {known}")


def detect_naming(keys):
    """(naming, arch) of a state dict from its key names alone, or raise ValueError saying why not.

    Decided by structure (how many features / stages, which head, which block kinds), not by any
    single key, so a file missing a few keys is still recognised and its missing keys then listed
    one by one.
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
        if any(mark in k for k in keys for mark in TIMM_V4_MARKS):
            return "timm", _detect_timm_v4(keys)
        stages = {position[0] for position in map(_stage_of, keys) if position}
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
            f"timm-style keys (conv_stem, blocks.*) but not a supported timm MobileNet (mobilenetv1_100, "
            f"mobilenetv2_*, mobilenetv3_large_*, mobilenetv3_small_*, mobilenetv4_conv_*): {n_stages} stages"
        )
    sample = ", ".join(sorted(keys)[:5])
    raise ValueError(
        "unrecognised key names: expected torchvision's (features.0.0.weight ...) or timm's "
        f"(conv_stem.weight ...) MobileNets; the file starts with {sample}"
    )


def file_stage_repeats(state, arch):
    """Blocks per stage in a timm file (its `blocks.{stage}.{j}` keys; V3's and V4's last stage,
    the head conv, not counted)."""
    return _stage_counts(state, len(TIMM_STAGE_REPEATS[arch]))


def count_blocks(state, naming, arch):
    """How many blocks the file's network has (our builder makes the papers' count)."""
    if naming == "timm":
        return sum(file_stage_repeats(state, arch))
    return max(int(k.split(".")[1]) for k in state if k.startswith("features.")) - 1


def _block_prefixes(state, naming, arch):
    """The file's block prefixes, in order."""
    if naming == "timm":
        return [f"blocks.{s}.{j}" for s, n in enumerate(file_stage_repeats(state, arch)) for j in range(n)]
    last = max(int(k.split(".")[1]) for k in state if k.startswith("features."))
    container = TORCHVISION_BLOCKS[family(arch)][0]
    return [f"features.{n}.{container}" for n in range(1, last)]


def _index_path(key, prefix):
    return [int(t) for t in key[len(prefix):].split(".") if t.isdigit()]


def _timm_block_weights(state, prefix):
    """The weights giving a timm block's expanded and output widths (TIMM_BLOCKS' `file`)."""
    for entry in TIMM_BLOCKS.values():
        keys = [f"{prefix}.{name}" for name in entry["file"]]
        if all(k in state for k in keys):
            return state[keys[0]], state[keys[1]]
    raise KeyError(f"{prefix}.*.weight (none of the weights of timm's {', '.join(TIMM_BLOCKS)} blocks)")


# timm: the weights whose output widths are our head conv's and the layer after pooling's
TIMM_HEAD_WEIGHTS = {
    "mobilenet_v1": (None, None),
    "mobilenet_v2": ("conv_head.weight", None),
    "mobilenet_v3": ("blocks.{head}.0.conv.weight", "conv_head.weight"),
    "mobilenet_v4": ("blocks.{head}.0.conv.weight", "conv_head.weight"),
}


def file_channels(state, naming, arch):
    """The channel counts a file's shapes say, as our builder's spec names them:
    dict(stem, expanded [per block], out [per block], head (0: none), last (0: none))."""
    expanded, out = [], []
    for prefix in _block_prefixes(state, naming, arch):
        if naming == "timm":
            dw, project = _timm_block_weights(state, prefix)
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
        head, last = (key.format(head=len(TIMM_STAGE_REPEATS[arch])) if key else None
                      for key in TIMM_HEAD_WEIGHTS[family(arch)])
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
    and head widths, which timm keeps at 32 and 1280 for those (fix_stem_head). timm's V4 needs
    none: our builder makes timm's choices."""
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
    if naming == "timm" and family(arch) == "mobilenet_v3":
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
