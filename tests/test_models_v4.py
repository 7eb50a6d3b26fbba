"""MobileNetV4-Conv Small, Medium and Large (Qin et al., 2024) as timm builds them: exact counts,
the blocks' structure, hand-written gradients against finite differences, the lowered graph, and
the build options."""
import zlib

import numpy as np
import pytest

import npmobilenet
from gradcheck import check_model_gradients
from npmobilenet.analysis.summary import summarize
from npmobilenet.graph import inference_graph, lower
from npmobilenet.layers import (
    BatchNorm, Conv2d, ConvBNAct, DepthwiseConv2d, FusedInvertedBottleneck, Linear, PointwiseConv2d,
    UniversalInvertedBottleneck,
)
from npmobilenet.models import make_divisible, tables
from test_layers import check_layer_gradients
from test_models import _freeze_dropout

V4 = ("mobilenet_v4_conv_small", "mobilenet_v4_conv_medium", "mobilenet_v4_conv_large")
TABLES = {"mobilenet_v4_conv_small": tables.V4_CONV_SMALL_BLOCKS,
          "mobilenet_v4_conv_medium": tables.V4_CONV_MEDIUM_BLOCKS,
          "mobilenet_v4_conv_large": tables.V4_CONV_LARGE_BLOCKS}


@pytest.fixture(scope="module")
def full_width():
    """The three models at width 1.0 with 1000 classes (built once: Large has 32.6M parameters)."""
    return {arch: npmobilenet.build(arch) for arch in V4}


# -- counts -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, resolution, params, macs", [
    # timm's mobilenetv4_conv_{small,medium,large}: parameters (BN scale and shift, no running
    # statistics) and conv + linear MACs at each model's training resolution
    ("mobilenet_v4_conv_small", 224, 3_774_024, 186_005_568),
    ("mobilenet_v4_conv_medium", 256, 9_715_512, 1_080_244_224),
    ("mobilenet_v4_conv_large", 384, 32_590_864, 6_376_220_672),
])
def test_counts_equal_timm(full_width, arch, resolution, params, macs):
    model = full_width[arch]
    summary = summarize(model, resolution)
    assert model.num_parameters() == summary.params == params
    assert summary.macs == macs


def test_small_050_is_timm_mobilenetv4_conv_small_050():
    # Obtained from timm 1.0.31: timm.create_model("mobilenetv4_conv_small_050"), reading each
    # block's pw_proj.conv / conv_pwl / conv out_channels and pw_exp.conv / conv_exp out_channels,
    # conv_stem, conv_head and sum(p.numel() for p in model.parameters()).
    model = npmobilenet.build("mobilenet_v4_conv_small", width=0.5)
    assert model.stem.conv.out_channels == 32                     # timm's fix_stem below width 1.0
    assert [b.out_channels for b in model.blocks] == [16, 16, 48, 32, 48, 48, 48, 48, 48, 48, 64, 64, 64, 64, 64, 64]
    assert [b.expanded_channels for b in model.spec.blocks] == [
        16, 16, 48, 32, 96, 96, 96, 96, 96, 192, 288, 256, 256, 192, 256, 256]
    assert model.head.out_channels == 480 and model.classifier[0].out_channels == 1280
    assert model.num_parameters() == 2_238_952


# -- structure --------------------------------------------------------------------------------------
# The blocks without a shortcut, from timm's has_skip (every other block adds its input)
NO_SKIP = {"mobilenet_v4_conv_small": [0, 1, 2, 3, 4, 10],
           "mobilenet_v4_conv_medium": [0, 1, 3, 11],
           "mobilenet_v4_conv_large": [0, 1, 3, 14]}


def _strided(block):
    """The layer of a block that carries its stride."""
    if isinstance(block, ConvBNAct):
        return block.conv
    if isinstance(block, FusedInvertedBottleneck):
        return block.conv_exp.conv
    return (block.dw_mid or block.dw_start or block.pw_exp).conv  # FFN: no stride, pointwise convs only


@pytest.mark.parametrize("arch", V4)
def test_blocks_follow_the_table(full_width, arch):
    model = full_width[arch]
    # every row n times, the first of them with the row's stride
    rows = [(row, repeat) for row in TABLES[arch] for repeat in range(row[1])]
    blocks = list(model.blocks)
    assert len(blocks) == len(rows)
    product = model.stem.conv.stride[0]
    for i, (block, ((kind, _, a, k, s, e, c), repeat)) in enumerate(zip(blocks, rows)):
        assert block.out_channels == c, i
        if kind == "cn":
            assert isinstance(block, ConvBNAct) and block.activation == "relu"
            assert isinstance(block.conv, PointwiseConv2d if k == 1 else Conv2d)
        elif kind == "er":
            assert isinstance(block, FusedInvertedBottleneck) and block.conv_exp.conv.kernel_size == (k, k)
            assert isinstance(block.conv_exp.conv, Conv2d) and block.conv_exp.activation == "relu"
        else:
            assert isinstance(block, UniversalInvertedBottleneck)
            assert (block.dw_start is not None, block.dw_mid is not None) == (a > 0, k > 0), i
            if a:
                assert isinstance(block.dw_start.conv, DepthwiseConv2d) and block.dw_start.act is None
                assert block.dw_start.conv.kernel_size == (a, a)
            if k:
                assert isinstance(block.dw_mid.conv, DepthwiseConv2d) and block.dw_mid.activation == "relu"
                assert block.dw_mid.conv.kernel_size == (k, k)
            assert block.pw_exp.activation == "relu" and block.pw_proj.act is None
            # the stride sits on the middle depthwise conv when there is one; the other is stride 1
            if a and k:
                assert block.dw_start.conv.stride == (1, 1)
        if kind != "cn":  # timm: the expansion is make_divisible(input width * e)
            assert block.expanded_channels == make_divisible(block.in_channels * e), i
        stride = s if repeat == 0 else 1
        assert _strided(block).stride == (stride, stride), i
        product *= stride
        if kind != "cn":
            assert block.use_residual == (stride == 1 and block.in_channels == block.out_channels), i
    assert product == 32  # five stride-2 stages: 224 -> 7
    assert [i for i, b in enumerate(blocks) if not getattr(b, "use_residual", False)] == NO_SKIP[arch]
    assert model.head.conv.out_channels == 960 and isinstance(model.head.conv, PointwiseConv2d)
    bns = [m for _, m in model.modules() if isinstance(m, BatchNorm)]
    assert all((bn.eps, bn.momentum) == (1e-5, 0.1) for bn in bns)
    assert [type(m).__name__ for m in model.classifier] == ["ConvBNAct", "Dropout", "Linear"]
    assert isinstance(model.classifier[0].conv, Linear) and model.classifier[0].activation == "relu"


def test_parameter_names_follow_timm_parts():
    model = npmobilenet.build("mobilenet_v4_conv_medium", width=0.25, num_classes=3)
    names = {name: p.shape for name, p in model.named_parameters()}
    assert "blocks.0.conv_exp.conv.weight" in names and "blocks.0.conv_pwl.bn.gamma" in names
    assert {"blocks.1.dw_start.conv.weight", "blocks.1.pw_exp.conv.weight", "blocks.1.dw_mid.conv.weight",
            "blocks.1.pw_proj.bn.beta"} <= set(names)
    assert names["classifier.0.conv.weight"] == (model.head.out_channels, 1280)
    assert "classifier.0.conv.bias" not in names and names["classifier.0.bn.gamma"] == (1280,)
    assert names["classifier.2.weight"] == (1280, 3) and names["classifier.2.bias"] == (3,)
    assert model.classifier[1].p == 0.2  # tensorflow/models' imagenet_mobilenetv4_conv_medium_tpu.yaml
    assert npmobilenet.build("mobilenet_v4_conv_small", width=0.25).classifier[1].p == 0.3
    small = dict(npmobilenet.build("mobilenet_v4_conv_small", width=0.25).named_parameters())
    assert small["blocks.0.conv.weight"].shape == (3, 3, 32, 8) and small["blocks.1.conv.weight"].shape == (8, 8)


# -- gradients --------------------------------------------------------------------------------------
def _randomise_block_bn(block, rng):
    for _, bn in block.modules():
        if isinstance(bn, BatchNorm):
            bn.gamma.data[:] = rng.uniform(0.5, 1.5, bn.channels)
            bn.beta.data[:] = rng.uniform(-0.5, 1.0, bn.channels)
            bn.running_mean[:] = rng.uniform(-0.2, 0.2, bn.channels)
            bn.running_var[:] = rng.uniform(0.5, 2, bn.channels)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("variant, start, mid, stride, residual", [
    ("IB", 0, 3, 1, True), ("ConvNext", 3, 0, 1, True), ("ExtraDW", 3, 5, 1, True), ("FFN", 0, 0, 1, True),
    ("IB", 0, 3, 2, False), ("ConvNext", 5, 0, 2, False), ("ExtraDW", 5, 3, 2, False),
])
def test_universal_inverted_bottleneck_gradients(variant, start, mid, stride, residual, training):
    rng = np.random.default_rng(zlib.crc32(f"{variant}{stride}{training}".encode()))
    out = 4 if residual else 6
    block = UniversalInvertedBottleneck(4, 12, out, start, mid, stride, rng=rng)
    assert block.variant == variant and block.use_residual == residual
    assert [name for name, _ in block.children()] == [
        n for n, present in (("dw_start", start), ("pw_exp", 1), ("dw_mid", mid), ("pw_proj", 1)) if present]
    _randomise_block_bn(block, rng)
    block.train(training)
    x = rng.standard_normal((2, 7, 6, 4))
    assert block(x.astype(np.float32)).shape == (2, -(-7 // stride), -(-6 // stride), out)
    check_layer_gradients(block, x, rng, coords=4, rtol=1e-3)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("stride, out", [(1, 4), (2, 4), (1, 6)])
def test_fused_inverted_bottleneck_gradients(stride, out, training):
    rng = np.random.default_rng(zlib.crc32(f"fused{stride}{out}{training}".encode()))
    block = FusedInvertedBottleneck(4, 16, out, 3, stride, rng=rng)
    assert block.use_residual == (stride == 1 and out == 4)
    assert [name for name, _ in block.children()] == ["conv_exp", "conv_pwl"]
    _randomise_block_bn(block, rng)
    block.train(training)
    check_layer_gradients(block, rng.standard_normal((2, 6, 7, 4)), rng, coords=4, rtol=1e-3)


def test_uib_needs_a_depthwise_conv_to_stride():
    with pytest.raises(ValueError, match="stride 2 needs a depthwise"):
        UniversalInvertedBottleneck(8, 16, 8, 0, 0, 2)


def _calibrate_bn(model, x, rng):
    """Random BN scale and shift; running statistics from `x`, the means then moved by up to a
    tenth of each channel's standard deviation and the variances scaled by 0.8-1.25. (test_models'
    absolute shifts of 0.1 are up to 0.1 / sqrt(eps) = 30 standard deviations for channels a ReLU
    left constant over the batch: with V4's eps of 1e-5, not V3's 1e-3, activations explode.)"""
    bns = [m for _, m in model.modules() if isinstance(m, BatchNorm)]
    momentum = {}
    for m in bns:
        m.gamma.data[:] = rng.uniform(0.5, 1.5, m.channels)
        m.beta.data[:] = rng.uniform(-0.2, 0.5, m.channels)
        momentum[id(m)], m.momentum = m.momentum, 1.0
    model.train()(x)
    for m in bns:
        m.momentum = momentum[id(m)]
        m.running_mean[:] += rng.uniform(-0.1, 0.1, m.channels) * np.sqrt(m.running_var + m.eps)
        m.running_var[:] *= rng.uniform(0.8, 1.25, m.channels)


# The parts of each block kind whose parameters the whole-model check perturbs.
PARTS = {
    UniversalInvertedBottleneck: ("dw_start", "pw_exp", "dw_mid", "pw_proj"),
    FusedInvertedBottleneck: ("conv_exp", "conv_pwl"),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("arch", V4)
def test_whole_model_gradients(arch, training):
    """d(loss)/d(input) and d(loss)/d(parameter) of the new blocks' parts, the conv rows, the head
    and the batch-normed layer after pooling, against central differences (float64).

    64x64 inputs: at 32x32 the last stage's maps are 1x1, and batch norm over 3 values per channel
    with V4's eps of 1e-5 makes the loss so curved that central differences miss by 10%."""
    rng = np.random.default_rng(zlib.crc32(f"{arch}{training}".encode()))
    net = npmobilenet.build(arch, width=0.25, num_classes=4, seed=2).astype(np.float64)
    _freeze_dropout(net)
    x = rng.standard_normal((3, 64, 64, 3))
    _calibrate_bn(net, x, rng)
    net.train(training)
    weights = rng.standard_normal((3, 4))

    # every part of the new blocks (UIB: dw_start, pw_exp, dw_mid, pw_proj; FusedIB: conv_exp,
    # conv_pwl), the conv rows, the head conv and the layer after pooling: one of each at random
    candidates = {"head": ["head"], "classifier.0": ["classifier.0"]}
    for i, block in enumerate(net.blocks):
        if isinstance(block, ConvBNAct):
            candidates.setdefault("conv row", []).append(f"blocks.{i}")
        for part in PARTS.get(type(block), ()):
            if getattr(block, part) is not None:
                candidates.setdefault(part, []).append(f"blocks.{i}.{part}")
    expected = {"head", "classifier.0", "dw_start", "pw_exp", "dw_mid", "pw_proj"}
    expected |= {"conv row"} if arch.endswith("small") else {"conv_exp", "conv_pwl"}
    assert set(candidates) == expected
    chosen = []
    for names in candidates.values():
        prefix = names[rng.integers(len(names))]
        chosen += [(f"{prefix}.conv.weight", 2), (f"{prefix}.bn.gamma", 1), (f"{prefix}.bn.beta", 1)]
    dx = check_model_gradients(net, x, weights, chosen, rng, arch)
    assert np.abs(dx).max() > 1e-3


# -- the lowered graph ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", V4)
def test_lowered_graph_computes_the_model(arch):
    rng = np.random.default_rng(zlib.crc32(arch.encode()))
    model = npmobilenet.build(arch, width=0.5, num_classes=6).astype(np.float64)
    _randomise_block_bn(model, rng)
    model.eval()
    x = rng.standard_normal((2, 36, 40, 3))
    expected = model(x)
    graph = lower(model)
    np.testing.assert_allclose(graph(x), expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
    adds = [op.name for op in graph if op.kind == "add"]
    assert adds == [f"blocks.{i}" for i, b in enumerate(model.blocks) if getattr(b, "use_residual", False)]
    folded = inference_graph(model)
    assert not any(op.kind in ("batch_norm", "activation") for op in folded)
    error = np.abs(folded(x) - expected).max() / np.abs(expected).max()
    assert error < 1e-5, error
    by_name = {op.name: op for op in folded}
    # the layer after pooling folds like any conv: linear + batch norm + ReLU as one op
    assert by_name["classifier.0"].kind == "linear" and by_name["classifier.0"].activation == "relu"
    assert by_name["classifier.0"].bias is not None
    extra_dw = next(i for i, b in enumerate(model.blocks) if getattr(b, "variant", "") == "ExtraDW")
    assert by_name[f"blocks.{extra_dw}.dw_start"].activation is None           # no activation after it
    assert by_name[f"blocks.{extra_dw}.dw_mid"].activation == "relu"


# -- options ----------------------------------------------------------------------------------------
def _structure(model):
    return [(name, p.shape) for name, p in model.named_parameters()]


@pytest.mark.parametrize("arch", V4)
def test_config_rebuilds_the_model(arch):
    model = npmobilenet.build(arch, width=0.35, num_classes=5, seed=1)
    twin = npmobilenet.build(**model.config, seed=1)
    assert _structure(twin) == _structure(model)
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(twin.eval()(x), model.eval()(x))


def test_v4_overrides_round_trip():
    arch, repeats = "mobilenet_v4_conv_small", [1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 2]  # 2 of the 4 IB blocks
    base = npmobilenet.build(arch, width=0.5, num_classes=3)
    shallower = npmobilenet.build(arch, width=0.5, num_classes=3, repeats=repeats)
    assert len(shallower.blocks) == len(base.blocks) - 2
    # a pruned expansion in every block that has one; a conv row's entry is its output width
    narrower = [b.expanded_channels - 8 * (b.kind != "conv") for b in shallower.spec.blocks]
    model = npmobilenet.build(arch, width=0.5, num_classes=3, expanded_channels=narrower, repeats=repeats,
                              stem_channels=24, head_channels=320, last_channels=640, dropout=0.1, bn_eps=1e-3,
                              padding="same")
    assert model.stem.out_channels == 24 and model.head.out_channels == 320 and model.stem.bn.eps == 1e-3
    assert model.classifier[0].out_channels == 640 and model.classifier[1].p == 0.1
    assert [b.expanded_channels for b in model.spec.blocks] == narrower
    assert model.blocks[5].pw_exp.out_channels == narrower[5] == 88
    # TensorFlow's padding on the strided 5x5 depthwise conv of the first UIB: 8 -> 4, 1 before, 2 after
    assert model.blocks[4].dw_mid.conv.same and model.blocks[4].dw_mid.conv.padding_at(8, 8) == (1, 2, 1, 2)
    again = npmobilenet.build(**model.config)
    assert _structure(again) == _structure(model)
    assert summarize(again, 64).params == again.num_parameters() == model.num_parameters()
    assert model.eval()(np.zeros((1, 33, 40, 3), np.float32)).shape == (1, 3)


def test_bad_v4_options_are_clear_errors():
    arch = "mobilenet_v4_conv_small"
    blocks = len(npmobilenet.build(arch, width=0.25).blocks)
    with pytest.raises(ValueError, match="se_channels applies to V2 and V3"):
        npmobilenet.build(arch, se_channels=[0] * blocks)
    with pytest.raises(ValueError, match=r"expanded_channels must list one width per block \(16"):
        npmobilenet.build(arch, expanded_channels=[32] * 3)
    with pytest.raises(ValueError, match=r"expanded_channels\[0\] must be 32: block 0 is a conv row"):
        npmobilenet.build(arch, expanded_channels=[40] + [64] * (blocks - 1))
    with pytest.raises(ValueError, match=r"repeats must list one int >= 1 per row .*\(15 rows\)"):
        npmobilenet.build("mobilenet_v4_conv_large", repeats=[1, 2])
    with pytest.raises(ValueError, match="dropout"):
        npmobilenet.build(arch, dropout=1.0)
    with pytest.raises(ValueError, match="mobilenet_v4_conv_small, mobilenet_v4_conv_medium, mobilenet_v4_conv_large"):
        npmobilenet.build("mobilenet_v4_conv_tiny")
