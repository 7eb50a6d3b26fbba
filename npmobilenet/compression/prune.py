"""Pruning: structured (fewer expansion channels, a smaller dense model) and unstructured (zeros).

Structured channel pruning of inverted residuals (V2 paper, Fig. 3b). An expanded channel c of a
block is one column of the 1x1 expansion, one depthwise filter, one SE input and output, and one
row of the 1x1 projection: removing all of them together gives the same block with a smaller
expansion width, a dense model whose MACs, parameters and latency really drop. Channels are ranked
per block by

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

CRITERIA = ("bn", "l1")


def _check_fraction(fraction, name="fraction"):
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not np.isfinite(fraction):
        raise TypeError(f"{name} must be a number in [0, 1), got {fraction!r}")
    if fraction < 0:
        raise ValueError(f"{name} must be in [0, 1): a negative fraction ({fraction}) prunes nothing and means a typo")
    if fraction >= 1:
        raise ValueError(f"{name} must be in [0, 1): pruning {fraction:.0%} would remove every channel/weight")
    return float(fraction)


def channel_importance(block, criterion="bn"):
    """(E,) importance of each expanded channel of an inverted residual (higher: keep)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if criterion == "bn":
        return np.abs(block.conv_pw.bn.gamma.data).astype(np.float64)
    return np.abs(block.conv_pw.conv.weight.data).sum(axis=0).astype(np.float64)  # (Cin, E) -> (E,)


def kept_channels(block, fraction, criterion="bn"):
    """Sorted indices of the expansion channels that survive removing `fraction` of them."""
    scores = channel_importance(block, criterion)
    expanded = scores.size
    keep = max(1, int(round(expanded * (1.0 - fraction))))
    if keep == block.in_channels and keep != expanded:
        # an expansion as wide as its input would vanish from the architecture (the builder drops
        # conv_pw when expanded == in): keep one more channel
        keep += 1 if keep < expanded else -1
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:keep])


def _copy_block_channels(old, new, keep):
    """Copy `old`'s weights into the narrower `new`, keeping expansion channels `keep`."""
    def copy_bn(src, dst, index):
        dst.gamma.data[...] = src.gamma.data[index]
        dst.beta.data[...] = src.beta.data[index]
        dst.running_mean[...] = src.running_mean[index]
        dst.running_var[...] = src.running_var[index]

    new.conv_pw.conv.weight.data[...] = old.conv_pw.conv.weight.data[:, keep]
    copy_bn(old.conv_pw.bn, new.conv_pw.bn, keep)
    new.conv_dw.conv.weight.data[...] = old.conv_dw.conv.weight.data[:, :, keep]
    copy_bn(old.conv_dw.bn, new.conv_dw.bn, keep)
    if old.se is not None:
        new.se.reduce.weight.data[...] = old.se.reduce.weight.data[keep, :]
        new.se.reduce.bias.data[...] = old.se.reduce.bias.data
        new.se.expand.weight.data[...] = old.se.expand.weight.data[:, keep]
        new.se.expand.bias.data[...] = old.se.expand.bias.data[keep]
    new.conv_pwl.conv.weight.data[...] = old.conv_pwl.conv.weight.data[keep, :]
    everything = slice(None)
    copy_bn(old.conv_pwl.bn, new.conv_pwl.bn, everything)


def _inverted_residual_like(block, expanded_channels, rng):
    """A fresh InvertedResidual with `block`'s hyper-parameters and a new expanded width."""
    from npmobilenet.layers import InvertedResidual

    bn = block.conv_dw.bn
    se_channels = block.se.squeeze_channels if block.se is not None else None
    return InvertedResidual(block.in_channels, expanded_channels, block.out_channels, block.kernel_size,
                            block.stride, block.activation, se_channels, bn.eps, bn.momentum, rng=rng)



def prune_channels(model, fraction, criterion="bn"):
    """A copy of `model` with `fraction` of every inverted residual's expansion channels removed.

    model: a V2/V3 MobileNet (V1 has no expansion layers). fraction in [0, 1). criterion: "bn"
    or "l1" (see the module docstring). Blocks without an expansion layer are unchanged. The copy
    is a dense model of the same architecture with narrower blocks; its `config` records the new
    widths under "expanded_channels" (see `structure.py`). Fine-tune it afterwards.
    """
    from npmobilenet.layers import InvertedResidual

    fraction = _check_fraction(fraction)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    blocks = list(model.blocks)
    if not any(isinstance(b, InvertedResidual) and b.conv_pw is not None for b in blocks):
        raise ValueError(f"{model.config.get('arch')} has no inverted-residual expansion layers to prune")
    pruned = copy.deepcopy(model)
    widths = []
    rng = np.random.default_rng(0)
    for i, block in enumerate(blocks):
        if not isinstance(block, InvertedResidual) or block.conv_pw is None:
            widths.append(int(getattr(block, "expanded_channels", block.in_channels)))
            continue
        keep = kept_channels(block, fraction, criterion)
        new = _inverted_residual_like(block, int(keep.size), rng)
        _copy_block_channels(block, new, keep)
        new.train(model.training)
        pruned.blocks._children[str(i)] = new
        widths.append(int(keep.size))
    se_widths = [b.se.squeeze_channels if getattr(b, "se", None) is not None else 0 for b in pruned.blocks]
    # SE widths stay the unpruned model's (the builder would derive them from the narrower expansion).
    return structure.with_config(pruned, expanded_channels=widths, se_channels=se_widths if any(se_widths) else None)


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
