"""Compressed architectures as config: rebuild a pruned or factorised model from its `config`.

A compressed float model is an ordinary MobileNet whose `config` carries two extra keys, so that a
checkpoint saved with `npmobilenet.training.checkpoint.save` describes it completely:

    expanded_channels: [int, ...]   one per block: the expanded width of each inverted residual
                                    after channel pruning (unchanged blocks keep their width)
    factorized: {layer: rank}       layers replaced by two thinner ones of that rank: a ConvBNAct's
                                    name ("blocks.3.conv_pwl": its 1x1 conv becomes conv.0 -> conv.1)
                                    or a classifier Linear's ("classifier.1": becomes .0 -> .1)

`build(config)` builds the base architecture with `npmobilenet.build` and applies both; `load(path)`
reads any npmobilenet checkpoint: float, compressed float, or int8 quantized.
"""
import numpy as np

COMPRESSION_KEYS = ("expanded_channels", "factorized")


def _inverted_residual_like(block, expanded_channels, rng):
    """A fresh InvertedResidual with `block`'s hyper-parameters and a new expanded width."""
    from npmobilenet.layers import InvertedResidual

    bn = block.conv_dw.bn
    se_channels = block.se.squeeze_channels if block.se is not None else None
    return InvertedResidual(block.in_channels, expanded_channels, block.out_channels, block.kernel_size,
                            block.stride, block.activation, se_channels, bn.eps, bn.momentum, rng=rng)


def set_expanded_channels(model, expanded_channels):
    """Replace every inverted residual whose width differs from `expanded_channels[i]` (fresh weights)."""
    from npmobilenet.layers import InvertedResidual

    blocks = list(model.blocks)
    if len(expanded_channels) != len(blocks):
        raise ValueError(f"expanded_channels must list one width per block ({len(blocks)}), got {len(expanded_channels)}")
    rng = np.random.default_rng(0)
    for i, (block, width) in enumerate(zip(blocks, expanded_channels)):
        current = getattr(block, "expanded_channels", block.in_channels)
        if width == current:
            continue
        if not isinstance(block, InvertedResidual) or block.conv_pw is None:
            raise ValueError(f"block {i} has no expansion layer to resize (width {current}, asked {width})")
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 1 <= width:
            raise ValueError(f"expanded_channels[{i}] must be an int >= 1, got {width!r}")
        if width == block.in_channels:
            raise ValueError(f"expanded_channels[{i}] = {width} equals the block's input width: "
                             "the expansion layer would disappear; use a different width")
        model.blocks._children[str(i)] = _inverted_residual_like(block, int(width), rng)
    return model


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
    """{name: layer} of every 1x1 convolution (as its ConvBNAct's name) and classifier Linear."""
    from npmobilenet.layers import ConvBNAct, Linear, PointwiseConv2d

    found = {}
    for name, layer in model.modules():
        if isinstance(layer, ConvBNAct) and isinstance(layer.conv, PointwiseConv2d):
            found[name] = layer.conv
        elif isinstance(layer, Linear) and name.startswith("classifier.") and name.count(".") == 1:
            found[name] = layer
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
    from npmobilenet.layers import ConvBNAct

    candidates = factorizable_layers(model)
    for name, rank in ranks.items():
        if name not in candidates:
            raise ValueError(f"{name!r} is not a factorisable layer (1x1 conv block or classifier Linear); "
                             f"known: {', '.join(sorted(candidates)) or 'none'}")
        target = _layer(model, name)
        pair = factorized_pair(candidates[name], rank)
        if isinstance(target, ConvBNAct):
            target.conv = pair
            target._children["conv"] = pair
        else:
            parent, child = _parent(model, name)
            parent._children[child] = pair
    return model


def build(config):
    """A model of `config`, compression keys included (fresh weights; load a state dict into it)."""
    import npmobilenet

    config = dict(config)
    base = {k: v for k, v in config.items() if k not in COMPRESSION_KEYS}
    try:
        model = npmobilenet.build(**config)  # once the builder accepts the compression keys itself
        return model
    except TypeError:
        model = npmobilenet.build(**base)
    if config.get("expanded_channels") is not None:
        set_expanded_channels(model, list(config["expanded_channels"]))
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


def load_checkpoint(path):
    """`npmobilenet.training.checkpoint.load_checkpoint` for float checkpoints of compressed models too:
    the model is built from the config's compression keys first. Quantized files are refused by name."""
    from npmobilenet.compression import qformat
    from npmobilenet.training import checkpoint

    arrays = qformat.read_arrays(path)
    fmt = str(arrays["__format__"]) if "__format__" in arrays else None
    if fmt == qformat.FORMAT:
        raise ValueError(f"{path} is an int8 quantized checkpoint, not a float one; load it with "
                         "npmobilenet.compression.load_quantized (or npmobilenet.compression.load)")
    if fmt != qformat.FLOAT_FORMAT or "__config__" not in arrays:
        return checkpoint.load_checkpoint(path)  # its error names the problem
    config = qformat.from_json_array(arrays["__config__"], "__config__", path)
    if not isinstance(config, dict) or not any(k in config for k in COMPRESSION_KEYS):
        return checkpoint.load_checkpoint(path)
    try:
        model = build(config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path}: cannot build a model from its config {config}: {exc}") from exc
    return checkpoint.load_checkpoint(path, model=model)


def load(path):
    """The model in any npmobilenet checkpoint: a float MobileNet (pruned/factorised included, in eval
    mode) or a `QuantizedModel`. Errors name the file and the problem."""
    from npmobilenet.compression import qformat

    if qformat.read_format(path) == qformat.FORMAT:
        return qformat.load_quantized(path)
    return load_checkpoint(path).model
