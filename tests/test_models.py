"""The four architectures: parameter counts, bad input, and whole-model gradient checks."""
import zlib

import numpy as np
import pytest

import npmobilenet
from gradcheck import check_model_gradients
from npmobilenet.layers import (
    BatchNorm, Conv2d, DepthwiseConv2d, Dropout, Linear, PointwiseConv2d, SqueezeExcite,
)
from npmobilenet.models import make_divisible


def test_torchvision_parameter_counts():
    # torchvision's models at width 1.0 with 1000 classes (BN scale and shift counted, running
    # statistics not), so its published weights fit without changing the architecture.
    assert npmobilenet.build("mobilenet_v2").num_parameters() == 3_504_872
    assert npmobilenet.build("mobilenet_v3_large").num_parameters() == 5_483_032
    assert npmobilenet.build("mobilenet_v3_small").num_parameters() == 2_542_856
    # V1 paper, Table 8: 4.2M; the conv and FC weights alone are 4,209,088, BN adds 21,888 and the FC bias 1,000.
    assert npmobilenet.build("mobilenet_v1").num_parameters() == 4_231_976


def test_make_divisible_rule():
    assert [make_divisible(v) for v in (3, 8, 12, 13, 20, 24 * 0.35, 32 * 0.35, 1280 * 1.4)] == [8, 8, 16, 16, 24, 8, 16, 1792]
    # Never more than 10% below the requested width.
    for v in np.linspace(8, 2000, 500):
        assert make_divisible(v) >= 0.9 * v


def test_v3_structure_follows_the_tables():
    net = npmobilenet.build("mobilenet_v3_large")
    blocks = list(net.blocks)
    assert len(blocks) == 15
    assert [b.kernel_size for b in blocks] == [3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5]
    assert [b.se is not None for b in blocks].count(True) == 8
    assert blocks[3].se.squeeze_channels == 24  # make_divisible(72 / 4)
    assert net.head.conv.out_channels == 960 and net.classifier[0].out_features == 1280
    assert net.stem.bn.eps == 1e-3 and net.stem.bn.momentum == 0.01
    small = npmobilenet.build("mobilenet_v3_small")
    assert small.head.conv.out_channels == 576 and small.classifier[0].out_features == 1024
    v2 = npmobilenet.build("mobilenet_v2", width=1.4)
    assert v2.head.conv.out_channels == 1792 and v2.stem.bn.eps == 1e-5
    v1 = npmobilenet.build("mobilenet_v1")
    assert [b.stride for b in v1.blocks][-2:] == [2, 1]  # Table 1's last "s2" is a misprint


@pytest.mark.parametrize("arch", npmobilenet.ARCHS)
def test_forward_shapes_and_rebuild_from_config(arch):
    net = npmobilenet.build(arch, width=0.25, num_classes=7, seed=3)
    x = np.random.default_rng(0).standard_normal((2, 33, 40, 3)).astype(np.float32)
    net.eval()
    y = net(x)
    assert y.shape == (2, 7) and y.dtype == np.float32 and np.all(np.isfinite(y))
    twin = npmobilenet.build(**net.config, seed=3).eval()
    np.testing.assert_array_equal(twin(x), y)
    other = npmobilenet.build(**net.config, seed=4).eval()
    assert not np.array_equal(other(x), y)


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small"):
        npmobilenet.build("mobilenet_v4")
    for width in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="width"):
            npmobilenet.build("mobilenet_v2", width=width)
    with pytest.raises(ValueError, match="num_classes"):
        npmobilenet.build("mobilenet_v2", num_classes=0)
    with pytest.raises(TypeError, match="unknown build options"):
        npmobilenet.build("mobilenet_v2", colour="red")


def test_model_rejects_bad_input():
    net = npmobilenet.build("mobilenet_v3_small", width=0.25, num_classes=3)
    with pytest.raises(TypeError, match="numpy array"):
        net([[1.0]])
    with pytest.raises(TypeError, match="float"):
        net(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="rank 4"):
        net(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="3 channels"):
        net(np.zeros((1, 32, 32, 1), np.float32))
    with pytest.raises(ValueError, match="at least 32x32"):
        net(np.zeros((1, 31, 64, 3), np.float32))
    with pytest.raises(RuntimeError, match="before any forward"):
        net.backward(np.zeros((1, 3), np.float32))
    net(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"dlogits must have the logits' shape \(2, 3\)"):
        net.backward(np.zeros((2, 4), np.float32))


def _freeze_dropout(model):
    """Reseed every dropout layer before each forward, so finite differences see one function."""
    drops = [m for _, m in model.modules() if isinstance(m, Dropout)]
    forward = model.forward

    def seeded_forward(x):
        for i, d in enumerate(drops):
            d.rng = np.random.default_rng(100 + i)
        return forward(x)

    model.forward = seeded_forward


def _randomise_bn(model, x, rng):
    """Random BN scale and shift; running statistics calibrated on `x` (so that eval mode keeps
    activations in the range where ReLU6 and hard-swish are not saturated, and gradients are not
    trivially zero), then perturbed."""
    bns = [m for _, m in model.modules() if isinstance(m, BatchNorm)]
    for m in bns:
        m.gamma.data[:] = rng.uniform(0.5, 1.5, m.channels)
        m.beta.data[:] = rng.uniform(-0.2, 0.5, m.channels)
        m.momentum, m.saved_momentum = 1.0, m.momentum
    model.train()(x)
    for m in bns:
        m.momentum = m.saved_momentum
        m.running_mean[:] += rng.uniform(-0.1, 0.1, m.channels)
        m.running_var[:] *= rng.uniform(0.8, 1.25, m.channels)


LAYER_TYPES = (Conv2d, DepthwiseConv2d, PointwiseConv2d, BatchNorm, Linear)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
# V4 has its own check (test_models_v4.py) at 64x64: at 32x32 its last stage batch-normalises 3
# values per channel with eps 1e-5, and the loss is too curved for central differences there
@pytest.mark.parametrize("arch", [a for a in npmobilenet.ARCHS if not a.startswith("mobilenet_v4")])
def test_whole_model_gradients(arch, training):
    """d(loss)/d(input) and d(loss)/d(parameter) for every layer type vs central differences."""
    rng = np.random.default_rng(zlib.crc32(arch.encode()))
    net = npmobilenet.build(arch, width=0.25, num_classes=5, seed=1).astype(np.float64)
    _freeze_dropout(net)
    x = rng.standard_normal((3, 32, 32, 3))
    _randomise_bn(net, x, rng)
    net.train(training)
    weights = rng.standard_normal((3, 5))

    # A random parameter of each layer type (and SE's), a few coordinates each.
    owners = {}
    for mod_name, mod in net.modules():
        kind = "se" if isinstance(mod, SqueezeExcite) else type(mod).__name__
        if isinstance(mod, LAYER_TYPES + (SqueezeExcite,)):
            owners.setdefault(kind, []).append(mod_name)
    params = list(dict(net.named_parameters()))
    chosen = []
    for names in owners.values():
        mod_name = names[rng.integers(len(names))]
        chosen += [(n, 2) for n in params if n.startswith(mod_name + ".")][:2]
    dx = check_model_gradients(net, x, weights, chosen, rng, arch)
    # Not vacuous: the gradient reaches the input.
    assert np.abs(dx).max() > 1e-3
    if arch.startswith("mobilenet_v3"):
        assert "se" in owners
    assert {"Conv2d", "DepthwiseConv2d", "PointwiseConv2d", "BatchNorm", "Linear"} <= set(owners)


def test_backward_fills_every_gradient():
    net = npmobilenet.build("mobilenet_v3_small", width=0.25, num_classes=4)
    for p in net.parameters():
        p.grad[...] = np.nan
    net(np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32))
    net.backward(np.ones((2, 4), np.float32))
    assert all(np.all(np.isfinite(p.grad)) for p in net.parameters())


def test_expanded_channels_override_round_trips():
    base = npmobilenet.build("mobilenet_v3_small", width=0.5, num_classes=3)
    widths = [b.expanded_channels for b in base.blocks]
    narrower = [max(8, w - 8) for w in widths]
    net = npmobilenet.build("mobilenet_v3_small", width=0.5, num_classes=3, expanded_channels=narrower)
    assert [b.expanded_channels for b in net.blocks] == narrower
    assert net.num_parameters() < base.num_parameters()
    assert [b.expanded_channels for b in npmobilenet.build(**net.config).blocks] == narrower
    with pytest.raises(ValueError, match="one width per block"):
        npmobilenet.build("mobilenet_v3_small", expanded_channels=[16, 16])
    with pytest.raises(ValueError, match="not mobilenet_v1"):
        npmobilenet.build("mobilenet_v1", expanded_channels=[16])


def test_se_channels_override_sets_or_removes_squeeze_excite():
    base = npmobilenet.build("mobilenet_v3_small", width=0.5, num_classes=3)
    se = [b.se.squeeze_channels if b.se is not None else 0 for b in base.blocks]
    wider = [w + 8 if w else 0 for w in se]
    net = npmobilenet.build("mobilenet_v3_small", width=0.5, num_classes=3, se_channels=wider)
    assert [b.se.squeeze_channels if b.se is not None else 0 for b in net.blocks] == wider
    none = npmobilenet.build("mobilenet_v3_small", width=0.5, num_classes=3, se_channels=[0] * len(se))
    assert all(b.se is None for b in none.blocks)
    assert npmobilenet.build(**net.config).num_parameters() == net.num_parameters()
    with pytest.raises(ValueError, match="se_channels must list one width per block"):
        npmobilenet.build("mobilenet_v3_small", se_channels=[8])
    with pytest.raises(ValueError, match="ints >= 0"):
        npmobilenet.build("mobilenet_v3_small", se_channels=[-1] * len(se))


def test_repeats_override_changes_blocks_per_table_row():
    from npmobilenet.analysis.summary import summarize

    model = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=5, repeats=[1, 3, 4, 5, 4, 4, 1])
    # strides stay on each row's first block: 112 -> 7 as in the paper's table
    strides = [b.conv_dw.conv.stride[0] for b in model.blocks]
    assert len(model.blocks) == 22 and strides.count(2) == 4
    assert strides[:5] == [1, 2, 1, 1, 2]
    again = npmobilenet.build(**model.config)
    assert [b.out_channels for b in again.spec.blocks] == [b.out_channels for b in model.spec.blocks]
    assert model(np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 5)
    v1 = npmobilenet.build("mobilenet_v1", width=0.25, repeats=[1, 2, 2, 3, 1])
    assert len(v1.blocks) == 1 + 2 + 2 + 3 + 1
    # the analytic count follows the deeper network
    paper = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=5)
    assert summarize(model, 64).macs > summarize(paper, 64).macs
    assert summarize(model, 64).params == model.num_parameters()
    for bad in ([1, 2, 3], [1, 0, 3, 4, 3, 3, 1], [1, 2.5, 3, 4, 3, 3, 1], "1234567"):
        with pytest.raises(ValueError, match="repeats"):
            npmobilenet.build("mobilenet_v2", repeats=bad)
    with pytest.raises(ValueError, match="repeats applies to mobilenet_v1 and mobilenet_v2"):
        npmobilenet.build("mobilenet_v3_small", repeats=[1] * 11)


def test_same_padding_option():
    from npmobilenet.analysis.summary import summarize

    model = npmobilenet.build("mobilenet_v3_small", width=0.35, num_classes=4, padding="same")
    assert model.config["padding"] == "same" and npmobilenet.build(**model.config).stem.conv.same
    x = np.random.default_rng(0).standard_normal((1, 65, 64, 3)).astype(np.float32)
    assert model(x).shape == (1, 4)
    # ceil(65 / 32) x ceil(64 / 32) at the end, in the forward pass and in the analytic count
    rows = {row.name: row for row in summarize(model, (65, 64)).rows}
    assert rows["head.conv"].input_shape == (1, 3, 2, 32)
    assert model.stem.conv.padding_at(65, 64) == (1, 1, 0, 1)
    with pytest.raises(ValueError, match="padding must be 'symmetric'"):
        npmobilenet.build("mobilenet_v2", padding="valid")
