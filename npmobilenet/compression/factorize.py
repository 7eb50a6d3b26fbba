"""Low-rank factorisation of 1x1 convolutions and classifier layers by truncated SVD.

A 1x1 convolution or linear layer is a matrix W (Cin, Cout). Its SVD W = U diag(s) V^T truncated
to rank r is the best rank-r approximation in Frobenius norm (Eckart-Young), and it splits into two
thinner layers

    x W  ~  (x A) B,   A = U_r diag(sqrt(s_r))  (Cin, r),   B = diag(sqrt(s_r)) V_r^T  (r, Cout)

that cost r (Cin + Cout) parameters and MACs per pixel instead of Cin Cout: a saving only when
r < Cin Cout / (Cin + Cout). The rank is the smallest whose singular values keep `energy` of
sum(s^2) (the squared Frobenius norm); layers where that rank saves nothing stay whole. The batch
norm after a factorised 1x1 convolution stays after its second half; a bias stays on the second.
"""
import copy

import numpy as np

from npmobilenet.compression import structure


def energy_rank(singular_values, energy):
    """The smallest r with sum(s[:r]^2) >= energy * sum(s^2)."""
    power = np.asarray(singular_values, np.float64) ** 2
    total = power.sum()
    if total == 0:
        return 1
    cumulative = np.cumsum(power) / total
    return int(min(np.searchsorted(cumulative, energy - 1e-12) + 1, power.size))


def saves(cin, cout, rank):
    """True when rank * (Cin + Cout) < Cin * Cout: two thin layers are smaller than one."""
    return rank * (cin + cout) < cin * cout


def factorize(model, energy=0.9, ranks=None, layers=None):
    """A copy of `model` with 1x1 convolutions and classifier layers replaced by rank-r pairs.

    energy: in (0, 1]; each layer's rank keeps this fraction of its squared singular values.
    ranks: optional {layer name: rank} overriding the energy rule for those layers (1 <= rank <=
        min(Cin, Cout), else a ValueError).
    layers: names to consider (default: every 1x1 conv block and classifier Linear; see
        `structure.factorizable_layers`). A layer is factorised only if its rank saves parameters.
    The copy's `config["factorized"]` records {name: rank}; returns (model, report) where report
    maps each considered layer to (Cin, Cout, rank or None, kept energy).
    """
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1:
        raise ValueError(f"energy must be a number in (0, 1], got {energy!r}")
    ranks = dict(ranks or {})
    candidates = structure.factorizable_layers(model)
    names = list(candidates) if layers is None else list(layers)
    unknown = sorted((set(names) | set(ranks)) - set(candidates))
    if unknown:
        raise ValueError(f"not factorisable layers: {unknown}; known: {', '.join(sorted(candidates))}")
    for name, rank in ranks.items():
        if name not in names:
            names.append(name)
        cin, cout = candidates[name].weight.data.shape
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
            raise TypeError(f"rank of {name} must be an int, got {rank!r}")
        if not 1 <= rank <= min(cin, cout):
            raise ValueError(f"rank {rank} of {name} is not allowed: a {cin} -> {cout} layer takes ranks "
                             f"1 to min(Cin, Cout) = {min(cin, cout)}")

    factored = copy.deepcopy(model)
    chosen, report = dict(model.config.get("factorized") or {}), {}
    for name in names:
        layer = candidates[name]
        w = layer.weight.data.astype(np.float64)
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        rank = ranks.get(name) or energy_rank(s, energy)
        kept = float((s[:rank] ** 2).sum() / max((s**2).sum(), 1e-300))
        cin, cout = w.shape
        if name not in ranks and not saves(cin, cout, rank):
            report[name] = (cin, cout, None, kept)
            continue
        root = np.sqrt(s[:rank])
        structure.set_factorized(factored, {name: int(rank)})
        pair = structure._layer(factored, name)
        pair = pair.conv if hasattr(pair, "conv") else pair
        first, second = list(pair)
        first.weight.data[...] = (u[:, :rank] * root).astype(first.weight.data.dtype)
        second.weight.data[...] = (root[:, None] * vt[:rank]).astype(second.weight.data.dtype)
        if getattr(layer, "bias", None) is not None:
            second.bias.data[...] = layer.bias.data
        pair.train(model.training)
        chosen[name] = int(rank)
        report[name] = (cin, cout, int(rank), kept)
    return structure.with_config(factored, factorized=chosen or None), report
