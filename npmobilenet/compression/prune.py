"""Pruning: structured (fewer expansion channels, a smaller dense model) and unstructured (zeros).

Structured channel pruning of expansion layers (V2 paper, Fig. 3b). An expanded channel c of a
block is one column of the 1x1 expansion, one depthwise filter, one SE input and output, and one
row of the 1x1 projection (`graph.channels` finds these slices in the block's lowered graph, for
any block): removing all of them together gives the same block with a smaller expansion width, a
dense model whose MACs, parameters and latency really drop. Channels are ranked per block by

- "bn": |gamma| of the expansion's batch norm (network slimming, Liu et al., 2017): a channel
  whose scale is near zero carries nearly nothing after normalisation;
- "l1": the L1 norm of the channel's expansion filter (Li et al., 2017, "Pruning filters").

and the same `fraction` of every block's expansion channels is removed (the projection's output
width, the residual path, is never touched). The pruned model is then fine-tuned.

Unstructured global magnitude pruning zeroes the `sparsity` fraction of all conv and linear
weights with the smallest |w| across the whole network (Han et al., 2015). The arrays keep their
shape, so nothing is faster without a sparse kernel; `MaskedOptimizer` keeps the zeros at zero
during fine-tuning.
"""
import copy

import numpy as np

from npmobilenet.compression import structure
from npmobilenet.graph import lower
from npmobilenet.graph.channels import internal_groups

CRITERIA = ("bn", "l1")


def _check_fraction(fraction, name="fraction"):
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not np.isfinite(fraction):
        raise TypeError(f"{name} must be a number in [0, 1), got {fraction!r}")
    if fraction < 0:
        raise ValueError(f"{name} must be in [0, 1): a negative fraction ({fraction}) prunes nothing and means a typo")
    if fraction >= 1:
        raise ValueError(f"{name} must be in [0, 1): pruning {fraction:.0%} would remove every channel/weight")
    return float(fraction)


def expansion_group(block):
    """The channel group of a block's expansion (`graph.channels`): the one cut-able group of the
    block's own lowered graph that a batch norm normalises (a factorised 1x1 conv's inner rank is
    a group too, without one). None for a block without expansion channels (V1's, V2's t=1)."""
    graph = lower(block)
    groups = [group for group in internal_groups(graph) if group.norm is not None]
    if len(groups) > 1:
        raise ValueError(f"a {type(block).__name__} has {len(groups)} independent channel groups; pruning "
                         "takes blocks with one expansion")
    return groups[0] if groups else None


def channel_importance(block, criterion="bn"):
    """(E,) importance of each expansion channel of a block (higher: keep)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    group = expansion_group(block)
    if group is None:
        raise ValueError(f"a {type(block).__name__} has no expansion channels to rank")
    if criterion == "bn":
        return np.abs(group.norm.gamma).astype(np.float64)
    weight = np.abs(group.seed.weight).astype(np.float64)
    return weight.reshape(-1, weight.shape[-1]).sum(axis=0)         # each output filter's L1 norm


def kept_channels(block, fraction, criterion="bn"):
    """Sorted indices of the expansion channels that survive removing `fraction` of them."""
    scores = channel_importance(block, criterion)
    expanded = scores.size
    keep = max(1, int(round(expanded * (1.0 - fraction))))
    if keep == expansion_group(block).seed.in_channels and keep != expanded:
        # an expansion as wide as its input would vanish from the architecture (the builder drops
        # a 1x1 expansion when expanded == in): keep one more channel
        keep += 1 if keep < expanded else -1
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:keep])


def prune_channels(model, fraction, criterion="bn"):
    """A copy of `model` with `fraction` of every block's expansion channels removed.

    model: a MobileNet whose blocks have expansion layers (V2, V3, V4; not V1); fraction in
    [0, 1); criterion: "bn" or "l1" (see the module docstring). Which slices of which arrays a
    channel is (the expansion's filter, its batch norm, the depthwise filter, SE's rows and
    columns, the projection's input row) comes from the block's lowered graph
    (`graph.channels`). The copy is a dense model of the same architecture with narrower
    blocks, rebuilt from its `config`, which records the new widths under "expanded_channels"
    (see `structure.py`). Fine-tune it afterwards.
    """
    fraction = _check_fraction(fraction)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    groups = [expansion_group(block) for block in model.blocks]
    if not any(groups):
        raise ValueError(f"{model.config.get('arch')} has no inverted-residual expansion layers to prune")
    names = {id(p.data): name for name, p in model.named_parameters()}
    names.update({id(b): name for name, b in model.named_buffers()})
    widths, cuts = [], {}
    for i, (block, group) in enumerate(zip(model.blocks, groups)):
        if group is None:
            widths.append(int(model.spec.blocks[i].expanded_channels))
            continue
        keep = kept_channels(block, fraction, criterion)
        widths.append(int(keep.size))
        for op, attribute, axis in group.slices:
            cuts[names[id(getattr(op, attribute))]] = (axis, keep)
    # SE widths stay the unpruned model's (the builder would derive them from the narrower expansion).
    se_widths = [int(b.se_channels) for b in model.spec.blocks]
    config = dict(model.config, expanded_channels=widths)
    config.pop("se_channels", None)
    if any(se_widths):
        config["se_channels"] = se_widths
    pruned = structure.build(config)
    state = model.state_dict()
    for name, (axis, keep) in cuts.items():
        state[name] = np.take(state[name], keep, axis=axis)
    pruned.load_state_dict(state)
    original = dict(model.modules())
    for name, layer in pruned.modules():      # dropout's generators continue where they were
        if hasattr(layer, "rng"):
            layer.rng = copy.deepcopy(original[name].rng)
    return pruned.train(model.training)


# -- unstructured magnitude pruning --------------------------------------------------------------
def prunable_weights(model):
    """{name: Parameter} of every conv and linear weight (batch norm and biases are never pruned)."""
    return {name: p for name, p in model.named_parameters() if name.endswith("weight") and p.data.ndim >= 2}


def _scores(p, scope):
    magnitude = np.abs(p.data).astype(np.float64)
    if scope == "global":
        return magnitude
    # each layer's magnitudes in units of its own RMS: layers initialised (and trained) at very
    # different scales -- the classifier at std 0.01, convolutions at He scale -- compete fairly
    rms = np.sqrt(np.mean(magnitude**2))
    return magnitude / rms if rms > 0 else magnitude


SCOPES = ("normalized", "global", "layer")


def magnitude_prune(model, sparsity, scope="normalized"):
    """Zero the `sparsity` fraction of all conv/linear weights with the smallest magnitude, in place.

    scope: "normalized" (default): one threshold across layers on |w| / RMS(layer), so a layer's
    share of zeros follows how small its weights are relative to their own scale; "global": one
    threshold on raw |w| (Han et al., 2015), which on MobileNets prunes the small-scale
    classifier away first; "layer": the same fraction in every layer.
    Returns the masks {name: bool array, True = kept}; pass them to `MaskedOptimizer` to
    fine-tune without regrowing the zeros.
    """
    sparsity = _check_fraction(sparsity, "sparsity")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    weights = prunable_weights(model)
    if scope == "layer":
        groups = [{name: p} for name, p in weights.items()]
    else:
        groups = [weights]
    masks = {}
    for group in groups:
        scores = {name: _scores(p, scope) for name, p in group.items()}
        masks.update(_prune_lowest(group, scores, sparsity))
    return masks


def _prune_lowest(weights, scores, sparsity):
    """Zero exactly round(sparsity * count) weights with the lowest scores (ties: first in order)."""
    flat = np.concatenate([s.ravel() for s in scores.values()])
    count = int(round(sparsity * flat.size))
    if count == 0:
        return {name: np.ones(p.shape, bool) for name, p in weights.items()}
    threshold = np.partition(flat, count - 1)[count - 1]
    remaining = count - int((flat < threshold).sum())  # weights at the threshold still to prune
    masks = {}
    for name, p in weights.items():
        score = scores[name]
        mask = score > threshold
        at = np.flatnonzero(score.ravel() == threshold)
        taken = min(remaining, at.size)
        mask.ravel()[at[taken:]] = True
        remaining -= taken
        p.data[~mask] = 0
        masks[name] = mask
    return masks


def sparsity_of(model):
    """Fraction of conv/linear weights that are exactly zero."""
    weights = prunable_weights(model)
    total = sum(p.size for p in weights.values())
    return sum(int((p.data == 0).sum()) for p in weights.values()) / max(total, 1)


class MaskedOptimizer:
    """Wraps an optimizer so pruned weights stay zero: after each step, w *= mask."""

    def __init__(self, optimizer, model, masks):
        self.__dict__["_optimizer"] = optimizer
        params = dict(model.named_parameters())
        missing = sorted(set(masks) - set(params))
        if missing:
            raise ValueError(f"masks name parameters the model does not have: {missing}")
        self.__dict__["_pairs"] = [(params[name], mask) for name, mask in masks.items()]

    def step(self):
        self._optimizer.step()
        for p, mask in self._pairs:
            p.data *= mask

    def __getattr__(self, name):
        return getattr(self._optimizer, name)

    def __setattr__(self, name, value):
        setattr(self._optimizer, name, value)


def recalibrate_batch_norm(model, images, batch_size=64):
    """Re-estimate every batch norm's running statistics on `images` (N, H, W, 3), in place.

    Removing channels shifts the distribution every later batch norm sees, so its stored
    statistics go stale (Li et al., 2020, "EagleEye": adaptive batch norm). The new statistics are
    the plain average over the batches (momentum 1/k at the k-th batch); no weight changes, and
    the model is returned in eval mode.
    """
    from npmobilenet.layers import BatchNorm

    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, 3) array, got {getattr(images, 'shape', images)}")
    norms = [layer for _, layer in model.modules() if isinstance(layer, BatchNorm)]
    saved = [bn.momentum for bn in norms]
    model.eval()
    try:
        for bn in norms:
            bn.training = True
        for k, start in enumerate(range(0, images.shape[0], batch_size)):
            for bn in norms:
                bn.momentum = 1.0 / (k + 1)
            model(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32))
    finally:
        for bn, momentum in zip(norms, saved):
            bn.momentum = momentum
        model.eval()
    return model
