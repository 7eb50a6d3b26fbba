"""Feature maps (`model.features`, `feature_info`, `backward_features`) and output_stride (strides
replaced by dilation) for every architecture."""
import numpy as np
import pytest

import npmobilenet
from npmobilenet.graph import lower
from tests.gradcheck import assert_close, numeric_grad, sample_indices

STRIDES = (32, 16, 8)

# timm 1.0's features_only channels at width 1.0 (`timm.create_model(name, features_only=True)
# .feature_info.channels()`, run in the peer environment); npmobilenet's V2 ends at its 1x1 head
# conv (1280, torchvision's features[-1]) where timm's V2 ends at the 320-channel block.
TIMM_CHANNELS = {
    "mobilenet_v1": [64, 128, 256, 512, 1024],
    "mobilenet_v2": [16, 24, 32, 96, 1280],
    "mobilenet_v3_large": [16, 24, 40, 112, 960],
    "mobilenet_v3_small": [16, 16, 24, 48, 576],
    "mobilenet_v4_conv_small": [32, 32, 64, 96, 960],
    "mobilenet_v4_conv_medium": [32, 48, 80, 160, 960],
    "mobilenet_v4_conv_large": [24, 48, 96, 192, 960],
}


def _images(n=2, size=64, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(dtype)


@pytest.mark.parametrize("arch", npmobilenet.ARCHS)
def test_feature_info_channels_at_width_one_are_timms(arch):
    info = npmobilenet.build(arch).feature_info
    assert [t.channels for t in info] == TIMM_CHANNELS[arch]
    assert [t.reduction for t in info] == [2, 4, 8, 16, 32]


@pytest.mark.parametrize("output_stride", STRIDES)
@pytest.mark.parametrize("arch", npmobilenet.ARCHS)
def test_feature_shapes_and_strides(arch, output_stride):
    model = npmobilenet.build(arch, width=0.25, output_stride=output_stride).eval()
    info = model.feature_info
    # the stage ends, with the reduction capped at the output stride (timm's with output_stride)
    assert [t.reduction for t in info] == [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
    x = _images(1, 64)
    maps = model.features(x)
    assert [m.shape for m in maps] == [(1, 64 // t.reduction, 64 // t.reduction, t.channels) for t in info]
    # the last map is the one the classifier pools
    graph = lower(model)
    pooled = [op for op in graph.ops if op.kind == "global_avg_pool"][-1]
    assert graph.shapes(x.shape)[pooled.inputs[0]] == maps[-1].shape
    # an odd input size: each map is the input's size divided by its reduction, rounded up
    odd = model.features(_images(1, 45), [0, -1])
    assert [m.shape[1] for m in odd] == [-(-45 // info[0].reduction), -(-45 // info[-1].reduction)]


def test_features_are_the_forward_pass_intermediates():
    model = npmobilenet.build("mobilenet_v2", width=0.25).eval()
    x = _images()
    maps = model.features(x, ["stem", "blocks.3", "blocks.6.conv_pw", "head"])
    stem = model.stem(x)
    y = stem
    for i in range(4):
        y = model.blocks[i](y)
    np.testing.assert_array_equal(maps[0], stem)
    np.testing.assert_array_equal(maps[1], y)
    for i in range(4, 6):
        y = model.blocks[i](y)
    np.testing.assert_array_equal(maps[2], model.blocks[6].conv_pw(y))
    # the head's map pooled and classified is the model's output
    logits = model.classifier(model.pool(maps[3]))
    np.testing.assert_allclose(logits, model(x), rtol=1e-6, atol=1e-6)


def test_named_taps_inside_a_block_and_their_info():
    # issue 13's taps: LR-ASPP's (after block 4, 1-based, and the final 1x1 conv, at output
    # stride 16) and SSDLite's (block 13's expansion, stride 16; the last map, stride 32)
    lraspp = npmobilenet.build("mobilenet_v3_large", output_stride=16)
    assert [(t.name, t.channels, t.reduction) for t in lraspp.feature_taps(["blocks.3", "head"])] == [
        ("blocks.3", 40, 8), ("head", 960, 16)]
    ssd = npmobilenet.build("mobilenet_v3_large")
    assert [(t.channels, t.reduction) for t in ssd.feature_taps(["blocks.12.conv_pw", "head"])] == [(672, 16), (960, 32)]
    small = npmobilenet.build("mobilenet_v3_large", width=0.25, output_stride=16).eval()
    low, high = small.features(_images(1, 96), ["blocks.3", "head"])
    assert low.shape[1:3] == (12, 12) and high.shape[1:3] == (6, 6)


def test_bad_taps_are_refused_by_name():
    model = npmobilenet.build("mobilenet_v3_small", width=0.25)
    x = _images(2, 64)
    for bad, words in ((["pool"], "not a module with a feature map"), (["classifier.0"], "not a module"),
                       (["blocks.99"], "not a module"), ([7], "out of range"), ([], "at least one"),
                       (["head", "head"], "more than once"), (3, "must be a list")):
        with pytest.raises(ValueError, match=words):
            model.features(x, bad)
    with pytest.raises(ValueError, match="vector"):
        model.features(x, ["blocks.0.se.reduce"])
    with pytest.raises(RuntimeError, match="before features"):
        npmobilenet.build("mobilenet_v1", width=0.25).backward_features([None])
    model.features(x, ["blocks.2", "head"])
    with pytest.raises(ValueError, match="one gradient per feature map"):
        model.backward_features([None])
    with pytest.raises(ValueError, match="shape"):
        model.backward_features([np.zeros((2, 2, 2, 1)), None])
    for option in (4, 12, 64, True):
        with pytest.raises(ValueError, match="output_stride"):
            npmobilenet.build("mobilenet_v2", output_stride=option)


@pytest.mark.parametrize("arch, taps, output_stride", [
    ("mobilenet_v3_large", ["blocks.1", "blocks.3.conv_pw", "blocks.4", "head"], 16),
    ("mobilenet_v4_conv_small", ["stem", "blocks.5.pw_exp", "blocks.8"], 8),
])
def test_backward_features_matches_finite_differences(arch, taps, output_stride):
    # train mode (batch statistics); float64; one gradient left None
    model = npmobilenet.build(arch, width=0.25, output_stride=output_stride, seed=3).astype(np.float64)
    rng = np.random.default_rng(0)
    x = _images(2, 40, dtype=np.float64)
    maps = model.features(x, taps)
    weights = [rng.standard_normal(m.shape) for m in maps]
    weights[1] = None

    def loss():
        out = model.features(x, taps)
        return float(sum(np.sum(w * m) for w, m in zip(weights, out) if w is not None))

    loss()
    dx = model.backward_features(weights)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    for idx in sample_indices(x.shape, 4, rng):
        assert_close(dx[idx], numeric_grad(loss, x, idx, h=1e-7), f"dx{idx}", rtol=2e-3, atol=1e-6)
    params = dict(model.named_parameters())
    deepest = taps[-1]
    checked = [name for name in params if name.startswith(("stem.", taps[1].rsplit(".", 1)[0] + ".", deepest + "."))]
    for name in checked:
        for idx in sample_indices(params[name].shape, 2, rng):
            assert_close(grads[name][idx], numeric_grad(loss, params[name].data, idx, h=1e-7), f"d{name}{idx}",
                         rtol=2e-3, atol=1e-6)
    # the layers after the deepest tap did not run: their gradients are zero
    assert all(not np.any(grads[name]) for name in params if name.startswith("classifier."))


def test_inner_tap_gradient_alone_starts_inside_its_block():
    # only the inner tap has a gradient: block 3's projection gets none, its expansion does
    model = npmobilenet.build("mobilenet_v2", width=0.25, seed=1).astype(np.float64)
    x = _images(2, 32, dtype=np.float64)
    inner, last = model.features(x, ["blocks.3.conv_pw", "blocks.5"])
    for p in model.parameters():
        p.grad[...] = 7.0                    # stale values must not survive
    dx = model.backward_features([np.ones_like(inner), None])
    assert np.any(dx)
    assert np.any(model.blocks[3].conv_pw.conv.weight.grad)
    assert not np.any(model.blocks[3].conv_pwl.conv.weight.grad)
    assert not np.any(model.blocks[5].conv_pw.conv.weight.grad)
    assert not np.any(model.head.conv.weight.grad)


@pytest.mark.parametrize("arch", npmobilenet.ARCHS)
def test_output_stride_dilates_the_last_stages(arch):
    base = npmobilenet.build(arch, width=0.25)
    for output_stride in (16, 8):
        model = npmobilenet.build(arch, width=0.25, output_stride=output_stride)
        assert model.config["output_stride"] == output_stride
        again = npmobilenet.build(**model.config)
        assert [b.dilation for b in again.spec.blocks] == [b.dilation for b in model.spec.blocks]
        # same parameters, same names and shapes: weights load either way
        assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
        convs = [op for op in lower(model).ops if op.kind == "conv" and op.variant != "pointwise"]
        assert all(op.stride == (1, 1) for op in convs if op.dilation != (1, 1))
        assert max(op.dilation[0] for op in convs) == 32 // output_stride
        reduction = 1
        for op in convs:
            reduction *= op.stride[0]
        assert reduction == output_stride


def test_v3_large_output_stride_16_is_torchvisions_dilated():
    # torchvision's _mobilenet_v3_conf(dilated=True): the last three blocks (C4 and after) have
    # dilation 2, the C4 block at stride 1 and without a shortcut (its table stride is 2)
    model = npmobilenet.build("mobilenet_v3_large", output_stride=16)
    assert [b.dilation for b in model.spec.blocks] == [1] * 12 + [2] * 3
    dw = model.blocks[12].conv_dw.conv
    assert dw.stride == (1, 1) and dw.dilation == (2, 2) and dw.padding == (4, 4, 4, 4)
    assert not model.blocks[12].use_residual and model.blocks[13].use_residual


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "mobilenet_v4_conv_medium"])
@pytest.mark.parametrize("output_stride", (16, 8))
def test_fused_and_graph_equal_the_dilated_model(arch, output_stride):
    from tests.test_inference_fuse import randomize_batch_norm

    model = npmobilenet.build(arch, width=0.25, output_stride=output_stride, seed=2).eval()
    randomize_batch_norm(model, np.random.default_rng(0))
    x = _images(2, 48)
    expected = model(x)
    np.testing.assert_allclose(lower(model)(x), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.fuse()(x), expected, rtol=1e-4, atol=1e-4)


def test_summary_counts_the_dilated_model():
    from npmobilenet.analysis.summary import summarize

    base = summarize(npmobilenet.build("mobilenet_v2"), 224)
    dense = summarize(npmobilenet.build("mobilenet_v2", output_stride=16), 224)
    assert dense.params == base.params
    # the last stage's depthwise and pointwise layers (and the head) now run on 14x14, not 7x7
    assert dense.macs > base.macs


def test_onnx_export_carries_the_dilation(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tests.test_inference_fuse import randomize_batch_norm
    from npmobilenet.io.onnx_export import export_onnx, run_onnx

    model = npmobilenet.build("mobilenet_v3_large", width=0.25, output_stride=8, seed=2).eval()
    randomize_batch_norm(model, np.random.default_rng(0))
    path = export_onnx(model, tmp_path / "dilated.onnx")
    dilations = {tuple(a.ints) for node in onnx.load(path).graph.node if node.op_type == "Conv"
                 for a in node.attribute if a.name == "dilations"}
    assert dilations == {(1, 1), (2, 2), (4, 4)}
    x = _images(2, 64)
    np.testing.assert_allclose(run_onnx(path, x.transpose(0, 3, 1, 2)), model(x), rtol=1e-4, atol=1e-4)
