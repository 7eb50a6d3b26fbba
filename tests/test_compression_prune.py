"""Pruning and factorisation: the surgery computes what it claims (exactly, where it should), the
smaller models really are smaller, compressed configs rebuild, and bad arguments are named."""
import copy

import numpy as np
import pytest

import npmobilenet
from npmobilenet.analysis.summary import summarize
from npmobilenet.compression import factorize, prune, structure
from npmobilenet.io import checkpoint
from npmobilenet.layers import InvertedResidual
from npmobilenet.io.checkpoint import save


def _trained_looking(arch, seed=1):
    """A model with varied batch-norm statistics and scales (so ranking and folding matter)."""
    model = npmobilenet.build(arch, width=0.35, num_classes=10)
    rng = np.random.default_rng(seed)
    for name, buf in model.named_buffers():
        buf[...] = rng.normal(0, 0.2, buf.shape) if name.endswith("running_mean") else rng.uniform(0.5, 2, buf.shape)
    for name, p in model.named_parameters():
        if name.endswith(("gamma", "beta")):
            p.data[...] = rng.normal(0.5, 0.5, p.shape)
    return model.eval()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
@pytest.mark.parametrize("criterion", ["bn", "l1"])
def test_channel_pruning_equals_zeroing_those_channels(arch, criterion, x):
    model = _trained_looking(arch)
    pruned = prune.prune_channels(model, 0.5, criterion)
    # The same network with the removed channels silenced (BN scale and shift 0 after the
    # expansion and the depthwise conv) computes exactly what the smaller one computes.
    silenced = copy.deepcopy(model)
    for block, original in zip(silenced.blocks, model.blocks):
        if isinstance(block, InvertedResidual) and block.conv_pw is not None:
            drop = np.setdiff1d(np.arange(block.expanded_channels), prune.kept_channels(original, 0.5, criterion))
            for bn in (block.conv_pw.bn, block.conv_dw.bn):
                bn.gamma.data[drop] = 0
                bn.beta.data[drop] = 0
    np.testing.assert_allclose(pruned(x), silenced(x), rtol=1e-4, atol=1e-5)
    assert not np.allclose(pruned(x), model(x), atol=1e-3)  # it did remove something


def test_pruning_keeps_the_most_important_channels():
    model = _trained_looking("mobilenet_v2")
    block = model.blocks[3]
    gamma = np.abs(block.conv_pw.bn.gamma.data)
    keep = prune.kept_channels(block, 0.75, "bn")
    assert keep.size == round(block.expanded_channels * 0.25)
    assert gamma[keep].min() >= np.delete(gamma, keep).max()
    l1 = np.abs(block.conv_pw.conv.weight.data).sum(axis=0)
    keep = prune.kept_channels(block, 0.5, "l1")
    assert l1[keep].min() >= np.delete(l1, keep).max()


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_pruned_models_are_dense_and_smaller(arch, fraction, x, tmp_path):
    # V3 too: its SE widths stay the unpruned model's, and the checkpoint must say so.
    model = _trained_looking(arch)
    pruned = prune.prune_channels(model, fraction)
    base, small = summarize(model, 32), summarize(pruned, 32)
    assert small.macs < base.macs and small.params < base.params
    widths = pruned.config["expanded_channels"]
    for block, width, original in zip(pruned.blocks, widths, model.blocks):
        assert getattr(block, "expanded_channels", block.in_channels) == width
        if isinstance(original, InvertedResidual) and original.conv_pw is not None:
            assert width == max(1, round(original.expanded_channels * (1 - fraction))) or width == original.in_channels + 1
            assert block.conv_pw is not None
    # the checkpoint rebuilds the same model from its config
    path = str(tmp_path / "pruned.npz")
    save(pruned, path)
    loaded = checkpoint.load(path)
    assert loaded.config == pruned.config
    np.testing.assert_array_equal(loaded(x), pruned(x))


def test_pruning_never_lets_an_expansion_vanish():
    # an 8 -> 48 block pruned by 5/6 would keep 8 = its input width; the builder would then drop
    # the expansion layer, so one more channel is kept
    model = _trained_looking("mobilenet_v2")
    block = model.blocks[2]
    assert (block.in_channels, block.expanded_channels) == (8, 48)
    assert prune.kept_channels(block, 5 / 6, "bn").size == 9
    assert prune.prune_channels(model, 5 / 6).blocks[2].conv_pw is not None


def test_bad_pruning_arguments_are_named():
    model = _trained_looking("mobilenet_v2")
    with pytest.raises(ValueError, match="every channel"):
        prune.prune_channels(model, 1.0)
    with pytest.raises(ValueError, match="negative"):
        prune.prune_channels(model, -0.1)
    with pytest.raises(TypeError, match="number"):
        prune.prune_channels(model, "half")
    with pytest.raises(ValueError, match="criterion"):
        prune.prune_channels(model, 0.5, "random")
    v1 = npmobilenet.build("mobilenet_v1", width=0.25, num_classes=10).eval()
    with pytest.raises(ValueError, match="no inverted-residual expansion"):
        prune.prune_channels(v1, 0.5)
    with pytest.raises(ValueError, match="every channel"):
        prune.magnitude_prune(model, 1.0)
    with pytest.raises(ValueError, match="negative"):
        prune.magnitude_prune(model, -0.5)


def test_magnitude_pruning_hits_the_target_sparsity_globally():
    model = _trained_looking("mobilenet_v2")
    before = {n: p.data.copy() for n, p in prune.prunable_weights(model).items()}
    masks = prune.magnitude_prune(model, 0.6, scope="global")
    total = sum(m.size for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * total)
    assert prune.sparsity_of(model) == pytest.approx(0.6, abs=1e-3)
    # global: every kept weight is at least as large as every pruned one
    kept = np.concatenate([np.abs(before[n][m]) for n, m in masks.items()])
    dropped = np.concatenate([np.abs(before[n][~m]) for n, m in masks.items()])
    assert kept.min() >= dropped.max()
    # batch norm and biases are untouched
    assert all(not n.endswith("weight") or p.data.ndim >= 2 for n, p in model.named_parameters() if (p.data == 0).all())


def test_normalized_and_per_layer_scopes():
    model = _trained_looking("mobilenet_v2")
    before = {n: p.data.copy() for n, p in prune.prunable_weights(model).items()}
    masks = prune.magnitude_prune(copy.deepcopy(model), 0.5, scope="normalized")
    total = sum(m.size for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * total)
    # raw global magnitude would wipe out the classifier (initialised at std 0.01); normalised does not
    classifier = "classifier.1.weight"
    raw = prune.magnitude_prune(copy.deepcopy(model), 0.5, scope="global")
    assert raw[classifier].mean() < 0.05 and masks[classifier].mean() > 0.2
    rms = {n: np.sqrt(np.mean(w.astype(float) ** 2)) for n, w in before.items()}
    kept = np.concatenate([np.abs(before[n][m]) / rms[n] for n, m in masks.items()])
    dropped = np.concatenate([np.abs(before[n][~m]) / rms[n] for n, m in masks.items()])
    assert kept.min() >= dropped.max()
    layer = prune.magnitude_prune(copy.deepcopy(model), 0.5, scope="layer")
    assert all(abs((~m).mean() - 0.5) <= 0.5 / m.size + 1e-9 for m in layer.values())
    with pytest.raises(ValueError, match="scope"):
        prune.magnitude_prune(model, 0.5, scope="random")


def test_batch_norm_recalibration_averages_fresh_statistics():
    model = _trained_looking("mobilenet_v2")
    images = np.random.default_rng(0).uniform(0, 1, (8, 32, 32, 3)).astype(np.float32)
    prune.recalibrate_batch_norm(model, images, batch_size=4)
    assert not model.training
    # the stem's statistics are now those of the images through the stem's conv (averaged over 2 batches)
    conv_out = [model.stem.conv(images[i : i + 4]) for i in (0, 4)]
    expected = np.mean([c.mean(axis=(0, 1, 2)) for c in conv_out], axis=0)
    np.testing.assert_allclose(model.stem.bn.running_mean, expected, rtol=1e-4, atol=1e-5)
    assert model.stem.bn.momentum == 0.1  # restored


def test_masked_optimizer_keeps_pruned_weights_at_zero():
    from npmobilenet.training import SGD

    model = _trained_looking("mobilenet_v2")
    masks = prune.magnitude_prune(model, 0.5)
    model.train()
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    opt = prune.MaskedOptimizer(SGD(model.named_parameters(), lr=0.1), model, masks)
    model.backward(np.ones_like(model(x)))
    opt.step()
    assert prune.sparsity_of(model) >= 0.5
    opt.lr = 0.05
    assert opt.lr == 0.05


# -- low-rank factorisation ---------------------------------------------------------------------
def test_full_rank_factorisation_is_exact(x):
    model = _trained_looking("mobilenet_v3_small")
    names = ["blocks.4.conv_pw", "head", "classifier.3"]
    ranks = {n: structure.max_rank(structure.factorizable_layers(model)[n]) for n in names}
    factored, report = factorize.factorize(model, ranks=ranks, layers=names)
    assert factored.config["factorized"] == ranks
    np.testing.assert_allclose(factored(x), model(x), rtol=1e-4, atol=1e-5)


def test_energy_rank_and_savings():
    s = np.array([4.0, 2.0, 1.0, 1.0, 0.0])
    assert factorize.energy_rank(s, 16 / 22) == 1
    assert factorize.energy_rank(s, 0.9) == 2  # (16 + 4) / 22 = 0.909
    assert factorize.energy_rank(s, 1.0) == 4
    assert factorize.saves(96, 576, 40) and not factorize.saves(16, 16, 8)


def test_truncated_factorisation_is_the_best_low_rank_approximation(x, tmp_path):
    model = _trained_looking("mobilenet_v2")
    factored, report = factorize.factorize(model, energy=0.8)
    assert report and any(r[2] is not None for r in report.values())
    for name, (cin, cout, rank, kept) in report.items():
        if rank is None:
            continue
        assert factorize.saves(cin, cout, rank) and kept >= 0.8 - 1e-9
        layer = structure.factorizable_layers(model)[name]
        pair = structure._layer(factored, name)
        pair = pair.conv if hasattr(pair, "conv") else pair
        a, b = (p.weight.data.astype(np.float64) for p in pair)
        w = layer.weight.data.astype(np.float64)
        s = np.linalg.svd(w, compute_uv=False)
        # Eckart-Young: the error is the energy of the dropped singular values
        assert np.linalg.norm(w - a @ b) ** 2 == pytest.approx((s[rank:] ** 2).sum(), rel=1e-3, abs=1e-6)
    assert summarize(factored, 32).macs < summarize(model, 32).macs
    assert factored.num_parameters() < model.num_parameters()
    path = str(tmp_path / "f.npz")
    save(factored, path)
    np.testing.assert_array_equal(checkpoint.load(path)(x), factored(x))


def test_factorised_and_pruned_models_quantize(x):
    from npmobilenet.ops import reference_int8 as qreference
    from npmobilenet.compression.quantize import quantize

    model = _trained_looking("mobilenet_v2")
    factored, _ = factorize.factorize(prune.prune_channels(model, 0.5), energy=0.8)
    qmodel = quantize(factored, x)
    xq = qmodel.quantize_input(x)
    assert np.array_equal(qmodel.run(xq), qreference.run_graph(qmodel, xq)[qmodel.output])
    assert any(op.name.endswith("conv.0") for op in qmodel.ops)


def test_bad_ranks_are_named():
    model = _trained_looking("mobilenet_v2")
    with pytest.raises(ValueError, match="rank 500 of head is not allowed.*min\\(Cin, Cout\\) = 112"):
        factorize.factorize(model, ranks={"head": 500})
    with pytest.raises(ValueError, match="rank 0"):
        factorize.factorize(model, ranks={"head": 0})
    with pytest.raises(ValueError, match="not factorisable"):
        factorize.factorize(model, ranks={"blocks.3.conv_dw": 2})
    with pytest.raises(ValueError, match="energy"):
        factorize.factorize(model, energy=0)


@pytest.mark.parametrize("arch", ["mobilenet_v4_conv_small", "mobilenet_v4_conv_medium"])
def test_v4_expansions_prune_through_the_graph(arch, x, tmp_path):
    # V4's universal inverted bottlenecks (pw_exp -> [dw_mid] -> pw_proj) and fused IBs
    # (conv_exp -> conv_pwl) lose expansion channels by the same channel groups, with no V4 code:
    # the pruned model equals the original with those channels silenced at every batch norm of
    # the group
    model = _trained_looking(arch)
    pruned = prune.prune_channels(model, 0.5)
    silenced = copy.deepcopy(model)
    blocks = 0
    for block, original in zip(silenced.blocks, model.blocks):
        group = prune.expansion_group(block)
        if group is None:
            continue
        blocks += 1
        drop = np.setdiff1d(np.arange(group.width), prune.kept_channels(original, 0.5))
        for op, name, _ in group.slices:
            if op.kind == "batch_norm" and name in ("gamma", "beta"):
                getattr(op, name)[drop] = 0            # the op holds the layer's own array
    assert blocks >= 4
    np.testing.assert_allclose(pruned(x), silenced(x), rtol=1e-4, atol=1e-5)
    assert summarize(pruned, 32).macs < summarize(model, 32).macs
    path = str(tmp_path / "pruned.npz")
    save(pruned, path)
    np.testing.assert_array_equal(checkpoint.load(path)(x), pruned(x))
