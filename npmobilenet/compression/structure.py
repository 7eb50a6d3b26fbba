"""Compressed architectures as config: rebuild a pruned or factorised model from its `config`.

A compressed float model is an ordinary MobileNet whose `config` carries two extra keys, so that a
checkpoint saved with `npmobilenet.save` describes it completely:

    expanded_channels: [int, ...]   one per block: the expanded width of each inverted residual
                                    after channel pruning (unchanged blocks keep their width)
    se_channels: [int, ...]         one per block: squeeze-and-excitation widths, kept from the
                                    unpruned model (0: no SE); both are `npmobilenet.build` options
    factorized: {layer: rank}       layers replaced by two thinner ones of that rank: a ConvBNAct's
                                    name ("blocks.3.conv_pwl": its 1x1 conv becomes conv.0 -> conv.1)
                                    or a classifier Linear's ("classifier.1": becomes .0 -> .1)

`build(config)` builds the architecture with `npmobilenet.build` and applies the factorisation
(`npmobilenet.load` reads any checkpoint with it).
"""
import numpy as np

from npmobilenet.applications import build as build_model   # classifiers and the applications (LR-ASPP, SSDLite)


def _layer(model, name):
    layer = model
    for part in name.split("."):
        children = dict(layer.children())
        if part not in children:
            raise ValueError(f"model has no layer {name!r}")
        layer = children[part]
    return layer


def _parent(model, name):
    parent_name, _, child = name.rpartition(".")
    return (_layer(model, parent_name) if parent_name else model), child


def max_rank(layer):
    """The largest useful rank of a 1x1 conv or linear layer: min(Cin, Cout)."""
    w = layer.weight.data
    return min(w.shape[0], w.shape[1])


def factorizable_layers(model):
    """{name: layer} of every 1x1 convolution that is the `conv` of a conv-BN unit (named by the
    unit, e.g. "blocks.3.conv_pwl") and every fully connected layer of the classifier (named by
    its own path, or by its unit's when it has a batch norm after it, as V4's does)."""
    from npmobilenet.layers import Linear, PointwiseConv2d

    found = {}
    for name, layer in model.modules():
        unit, _, child = name.rpartition(".")
        if isinstance(layer, PointwiseConv2d) and child == "conv":
            found[unit] = layer
        elif isinstance(layer, Linear) and name.startswith("classifier."):
            found[unit if child == "conv" else name] = layer
    return found


def factorized_pair(layer, rank, rng=None):
    """Two layers x -> x A -> (x A) B, A (Cin, rank), B (rank, Cout), replacing `layer` (fresh weights).

    A 1x1 conv becomes two 1x1 convs; a Linear becomes Linear(no bias) -> Linear(bias as before).
    """
    from npmobilenet.layers import Linear, PointwiseConv2d, Sequential

    rng = rng if rng is not None else np.random.default_rng(0)
    cin, cout = layer.weight.data.shape
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"rank must be an int, got {rank!r}")
    if not 1 <= rank <= min(cin, cout):
        raise ValueError(f"rank {rank} is not allowed for a {cin} -> {cout} layer: it must be between 1 and "
                         f"min(Cin, Cout) = {min(cin, cout)}")
    if isinstance(layer, PointwiseConv2d):
        return Sequential([PointwiseConv2d(cin, int(rank), rng=rng),
                           PointwiseConv2d(int(rank), cout, bias=layer.bias is not None, rng=rng)])
    if isinstance(layer, Linear):
        return Sequential([Linear(cin, int(rank), bias=False, rng=rng), Linear(int(rank), cout, bias=layer.bias is not None, rng=rng)])
    raise TypeError(f"only 1x1 convolutions and linear layers can be factorised, got {type(layer).__name__}")


def set_factorized(model, ranks):
    """Replace each named layer by a factorised pair of the given rank (fresh weights)."""
    candidates = factorizable_layers(model)
    for name, rank in ranks.items():
        if name not in candidates:
            raise ValueError(f"{name!r} is not a factorisable layer (1x1 conv block or classifier Linear); "
                             f"known: {', '.join(sorted(candidates)) or 'none'}")
        target = _layer(model, name)
        pair = factorized_pair(candidates[name], rank)
        if target is not candidates[name]:      # a conv-BN unit: its `conv` becomes the pair
            target.conv = pair
            target._children["conv"] = pair
        else:
            parent, child = _parent(model, name)
            parent._children[child] = pair
    return model


def build(config):
    """A model of `config`, compression keys included (fresh weights; load a state dict into it).

    Pruned widths (`expanded_channels`, `se_channels`) are the builder's own options; only the
    low-rank factorisation is applied here, on top of the built model.
    """
    config = dict(config)
    model = build_model(**{k: v for k, v in config.items() if k != "factorized"})
    if config.get("factorized"):
        set_factorized(model, dict(config["factorized"]))
    model.config = config
    return model


def with_config(model, **changes):
    """Set compression keys in `model.config` (None removes one)."""
    config = dict(model.config)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    model.config = config
    return model
