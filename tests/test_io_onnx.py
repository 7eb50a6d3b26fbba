"""ONNX export: every architecture's graph passes onnx.checker (full) and, run in ONNX Runtime,
matches npmobilenet's logits; the graph uses the standard operators the issue names."""
import collections
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import npmobilenet  # noqa: E402
from npmobilenet.cli import main  # noqa: E402
from npmobilenet.io.onnx_export import build_onnx, export_onnx, run_onnx  # noqa: E402
from npmobilenet.io.weights import from_weights  # noqa: E402
from npmobilenet.layers import Layer  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# one library-made model per architecture: realistic weights and batch-norm statistics, logits O(1-100)
PER_ARCH = {
    "mobilenet_v1": "timm_mobilenetv1_w010.safetensors",
    "mobilenet_v2": "tv_mobilenet_v2_w025.pth",
    "mobilenet_v3_large": "tv_mobilenet_v3_large_w020.safetensors",
    "mobilenet_v3_small": "tv_mobilenet_v3_small_w035.pth",
}


def run_int8_onnx(path, x):
    """run_onnx for an int8 QDQ graph. On an x86 CPU without VNNI, ONNX Runtime's fused int8
    kernels saturate (`compression/peer.py`; V3-Small's logits 30 int8 steps from ours on the
    Zen 3 machine): there the graph runs as written, its Q/DQ pairs not fused into integer
    kernels (`run_onnx(fuse=False)`: 6 steps), which is what the export is checked against."""
    from npmobilenet.compression.peer import saturating_int8_cpu

    return run_onnx(path, x, fuse=not saturating_int8_cpu())


@pytest.fixture(scope="module", params=sorted(PER_ARCH))
def model(request):
    return from_weights(os.path.join(FIXTURES, PER_ARCH[request.param]))


def assert_logits_match(ours, theirs, label):
    scale = max(1.0, float(np.abs(ours).max()))
    diff = float(np.abs(ours - theirs).max())
    print(f"{label}: max |diff| {diff:.2e} at logit scale {scale:.1f}")
    assert diff <= 1e-4 * scale, f"{label}: ONNX Runtime differs by {diff} (scale {scale})"
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))


def test_exported_graph_checks_and_matches(model, tmp_path):
    path = export_onnx(model, tmp_path / "model.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    rng = np.random.default_rng(0)
    for size in (224, 161):  # any H, W: the spatial dims are symbolic
        x = rng.standard_normal((2, size, size, 3)).astype(np.float32)
        assert_logits_match(model(x), run_onnx(path, x.transpose(0, 3, 1, 2)), f"{model.config['arch']} {size}")


def test_graph_uses_the_standard_operators(model):
    proto = build_onnx(model)
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    arch = model.config["arch"]
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    blocks = list(model.blocks)
    assert sum(g > 1 for g in groups) == len(blocks)  # one depthwise Conv (group = channels) per block
    assert ops["BatchNormalization"] == 0  # folded
    assert ops["Add"] == sum(getattr(b, "use_residual", False) for b in blocks)
    assert ops["Gemm"] == (2 if arch.startswith("mobilenet_v3") else 1)
    se_blocks = sum(getattr(b, "se", None) is not None for b in blocks)
    assert ops["Mul"] == se_blocks and ops["HardSigmoid"] == se_blocks
    assert ops["GlobalAveragePool"] == 1 + se_blocks
    if arch.startswith("mobilenet_v3"):
        assert ops["HardSwish"] > 0 and ops["Relu"] > 0 and ops["Clip"] == 0
    else:
        assert ops["Clip"] > 0 and ops["HardSwish"] == 0  # ReLU6 = Clip(0, 6)
    inputs = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in inputs] == ["N", 3, "H", "W"]


def test_unfolded_batchnorm_nhwc_input_and_fixed_batch(tmp_path):
    model = from_weights(os.path.join(FIXTURES, PER_ARCH["mobilenet_v3_small"]))
    path = export_onnx(model, tmp_path / "nhwc.onnx", batch=3, input_layout="nhwc", fold_batchnorm=False)
    proto = onnx.load(path)
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    assert ops["BatchNormalization"] == sum(1 for _, layer in model.modules() if type(layer).__name__ == "BatchNorm")
    assert proto.graph.node[0].op_type == "Transpose"
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [3, 0, 0, 3]
    x = np.random.default_rng(1).standard_normal((3, 97, 131, 3)).astype(np.float32)
    assert_logits_match(model(x), run_onnx(path, x), "v3 small, BatchNormalization, NHWC")
    with pytest.raises(Exception):
        run_onnx(path, x[:2])  # the batch is fixed at 3


def test_export_onnx_command(tmp_path, capsys):
    out = str(tmp_path / "v2.onnx")
    assert main(["export-onnx", os.path.join(FIXTURES, PER_ARCH["mobilenet_v2"]), out, "--batch", "2"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "opset 17, input 2x3xHxW (NCHW)" in text and "verified in ONNX Runtime" in text
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert main(["export-onnx", os.path.join(FIXTURES, PER_ARCH["mobilenet_v2"]), out, "--batch", "zero"]) == 2
    assert "--batch must be 'dynamic' or a positive int" in capsys.readouterr().err


def test_export_refuses_what_it_cannot_express(tmp_path):
    model = npmobilenet.build("mobilenet_v2", width=0.1, num_classes=3)

    class Mystery(Layer):
        def forward(self, x):
            return x

    model.classifier.add_child("0", Mystery())
    with pytest.raises(TypeError, match="Mystery"):
        export_onnx(model, tmp_path / "x.onnx")
    assert not os.path.exists(tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset"):
        build_onnx(npmobilenet.build("mobilenet_v2", width=0.1, num_classes=3), opset=11)
    with pytest.raises(ValueError, match="batch"):
        build_onnx(npmobilenet.build("mobilenet_v2", width=0.1, num_classes=3), batch=0)


def test_tensorflow_padding_exports_as_same_upper(tmp_path):
    # timm's tf_mobilenetv3_small at width 0.1 (random weights, made by timm): 'same' padding,
    # which ONNX Runtime resolves per input size as we do
    model = from_weights(os.path.join(FIXTURES, "timm_tf_mobilenetv3_small_w010.safetensors"), variant="tf")
    path = export_onnx(model, tmp_path / "tf.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    pads = [a.s for node in proto.graph.node if node.op_type == "Conv" for a in node.attribute if a.name == "auto_pad"]
    assert pads and set(pads) == {b"SAME_UPPER"}
    rng = np.random.default_rng(1)
    for h, w in ((224, 224), (161, 130)):
        x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
        assert_logits_match(model(x), run_onnx(path, x.transpose(0, 3, 1, 2)), f"tf {h}x{w}")


def test_int8_model_exports_in_qdq_form_and_agrees_with_ours(tmp_path):
    # the trained digits model (fixture), quantized per channel; its int8 graph in QDQ form
    from npmobilenet.training import load_digits

    model = npmobilenet.load(os.path.join(FIXTURES, "compression", "digits_v2_w035.npz"))
    train, test = load_digits(32)
    qmodel = npmobilenet.quantize(model, train.images[:128])
    path = export_onnx(qmodel, tmp_path / "int8.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    assert ops["QuantizeLinear"] == len(qmodel.ops) + 1 and ops["DequantizeLinear"] >= ops["QuantizeLinear"]
    # every weight is stored as int8 (biases int32), none as float
    int8 = onnx.TensorProto.INT8
    weights = [t for t in proto.graph.initializer if t.name.endswith(".weight.quantized")]
    assert weights and all(t.data_type == int8 for t in weights)
    assert not [t for t in proto.graph.initializer if t.dims and len(t.dims) >= 2 and t.data_type == onnx.TensorProto.FLOAT]
    x = test.images[:200]
    ours, theirs = qmodel(x), run_int8_onnx(path, x.transpose(0, 3, 1, 2))
    step = qmodel.tensors[qmodel.output][0]
    # ONNX Runtime requantizes with a float multiplier, we with its fixed-point form: a step here
    # and there, carried through the network, never more than a few output steps
    assert np.abs(ours - theirs).max() <= 16 * step
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.97


@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v3_small", "mobilenet_v4_conv_medium"])
def test_int8_qdq_export_of_every_op_kind(arch, tmp_path, capsys):
    # V1 (clamps only) and V3 (hard-swish tables, SE: mean, linear, gate, channel scale; residual adds)
    model = npmobilenet.build(arch, width=0.35, num_classes=10).eval()
    images = np.random.default_rng(2).uniform(0, 1, (8, 48, 48, 3)).astype(np.float32)
    qmodel = npmobilenet.quantize(model, images)
    path = export_onnx(qmodel, tmp_path / "int8.onnx", input_layout="nhwc")
    ours, theirs = qmodel(images), run_int8_onnx(path, images)
    assert np.abs(ours - theirs).max() <= 16 * qmodel.tensors[qmodel.output][0]
    # and from the command line, from the int8 checkpoint
    qmodel.save(str(tmp_path / "int8.npz"))
    assert main(["export-onnx", str(tmp_path / "int8.npz"), str(tmp_path / "cli.onnx")]) == 0
    out = capsys.readouterr().out
    assert "int8 in QDQ form" in out and "verified in ONNX Runtime" in out
    from npmobilenet.compression.peer import saturating_int8_cpu

    assert ("the QDQ graph run unfused" in out) == saturating_int8_cpu()


@pytest.mark.parametrize("arch", ["mobilenet_v4_conv_small", "mobilenet_v4_conv_medium", "mobilenet_v4_conv_large"])
@pytest.mark.parametrize("fold", [True, False])
def test_v4_exports_through_the_graph(arch, fold, tmp_path):
    # V4's blocks (universal inverted bottleneck, fused IB, conv rows) and its head (a 1x1 conv
    # without bias after pooling, batch norm on the pooled vector) reach ONNX as the graph's ops
    from npmobilenet.layers import BatchNorm

    model = npmobilenet.build(arch, width=0.25, num_classes=10, seed=3)
    rng = np.random.default_rng(4)
    for _, layer in model.modules():
        if isinstance(layer, BatchNorm):
            layer.running_mean[...] = rng.standard_normal(layer.channels) * 0.2
            layer.running_var[...] = rng.random(layer.channels) + 0.5
            layer.gamma.data[...] = rng.random(layer.channels) + 0.5
    model.eval()
    path = export_onnx(model, tmp_path / "v4.onnx", fold_batchnorm=fold)
    proto = onnx.load(path)
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    assert ops["BatchNormalization"] == (0 if fold else sum(isinstance(m, BatchNorm) for _, m in model.modules()))
    assert ops["Gemm"] == 2 and ops["Mul"] == 0 and ops["Add"] == sum(
        1 for b in model.blocks if getattr(b, "use_residual", False))
    for size in (224, 161):
        x = rng.standard_normal((2, size, size, 3)).astype(np.float32)
        assert_logits_match(model(x), run_onnx(path, x.transpose(0, 3, 1, 2)), f"{arch} {size}")
