"""The lowered graph: every model describes itself as generic ops that compute exactly what the
model computes in eval mode; batch-norm folding and activation fusion keep the result."""
import zlib

import numpy as np
import pytest

import npmobilenet
from npmobilenet.graph import (
    Add, BatchNorm, Builder, Conv, Graph, Linear, fold_batch_norm, fold_scale, fuse_activations, inference_graph,
    lower,
)
from npmobilenet.layers import Layer
from test_inference_fuse import randomize_batch_norm, relative_error


@pytest.mark.parametrize("arch", npmobilenet.ARCHS)
def test_lowered_graph_computes_the_model(arch):
    rng = np.random.default_rng(zlib.crc32(arch.encode()))
    model = randomize_batch_norm(npmobilenet.build(arch, width=0.5, num_classes=7), rng).astype(np.float64).eval()
    x = rng.standard_normal((2, 40, 48, 3))
    graph = lower(model)
    expected = model(x)
    err = relative_error(graph(x), expected)
    print(f"{arch}: lowered graph {len(graph)} ops, max relative difference {err:.1e}")
    assert err < 1e-12
    # batch norm folded in float64, stored float32: float32 rounding of the weights only
    folded = inference_graph(graph)
    assert all(op.kind != "batch_norm" for op in folded)
    assert relative_error(folded(x), expected) < 1e-6
    # the shape rule of every op agrees with the values
    values = graph.run(x)
    for tensor, shape in graph.shapes(x.shape).items():
        assert values[tensor].shape == shape, tensor


def test_graph_names_ops_after_the_layers():
    model = npmobilenet.build("mobilenet_v3_small", width=0.5, num_classes=10)
    graph = lower(model)
    names = [op.name for op in graph]
    assert names[:3] == ["stem.conv", "stem.bn", "stem.act"]
    assert "blocks.0.se.reduce" in names and "blocks.2" in names          # an SE fc; a residual add
    folded = inference_graph(model)
    by_name = {op.name: op for op in folded}
    assert by_name["stem"].kind == "conv" and by_name["stem"].activation == "hardswish"
    assert by_name["blocks.2"].kind == "add" and by_name["blocks.2"].inputs == ("blocks.1.conv_pwl", "blocks.2.conv_pwl")
    assert by_name["classifier.0"].activation == "hardswish"              # an absorbed activation keeps the name
    assert folded.outputs == ("classifier.3",)
    assert graph.gate_ops() >= {"blocks.0.se.pool", "blocks.0.se.reduce", "blocks.0.se.gate"}
    assert not any(name.startswith("classifier") for name in graph.gate_ops())


def test_lowering_shares_the_models_arrays_and_folding_copies():
    model = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=3)
    graph = lower(model)
    stem = graph.ops[0]
    assert stem.weight is model.stem.conv.weight.data
    folded = fold_batch_norm(graph)
    assert folded.ops[0].weight is not stem.weight and folded.ops[0].weight.dtype == np.float32
    assert graph.ops[0] is stem and len(graph) > len(folded)        # passes return new graphs


def test_fold_scale_is_conv_then_batch_norm():
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((6, 5)), rng.standard_normal(5)
    gamma, beta, mean, var = rng.standard_normal(5), rng.standard_normal(5), rng.standard_normal(5), rng.random(5) + 0.1
    x = rng.standard_normal((4, 6))
    wf, bf = fold_scale(w, b, gamma, beta, mean, var, 1e-3)
    expected = gamma * ((x @ w + b) - mean) / np.sqrt(var + 1e-3) + beta
    assert relative_error(x @ wf + bf, expected) < 1e-6


def test_passes_leave_what_they_cannot_fold():
    rng = np.random.default_rng(2)
    g = Builder()
    w = rng.standard_normal((4, 4)).astype(np.float32)
    bn = dict(gamma=np.ones(4), beta=np.zeros(4), mean=np.zeros(4), var=np.ones(4), eps=1e-5)
    a = g.add(Conv("a", ("input",), "pointwise", w))
    s = g.add(Add("sum", (a, a)))                                 # the conv has two readers
    g.add(BatchNorm("bn", (s,), **bn))                            # after an add: nothing to fold into
    graph = Graph(g.ops)
    folded = fuse_activations(fold_batch_norm(graph))
    assert [op.kind for op in folded] == ["conv", "add", "batch_norm"]
    x = rng.standard_normal((1, 3, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(folded(x), graph(x), rtol=1e-6)


def test_shapes_and_errors_name_the_layer():
    graph = lower(npmobilenet.build("mobilenet_v3_small", width=0.25))
    with pytest.raises(ValueError, match="stem.conv expects 3 channels"):
        graph.shapes((1, 64, 64, 4))
    with pytest.raises(ValueError, match="tensors no earlier op writes"):
        Builder().add(Linear("fc", ("nowhere",), np.zeros((2, 2))))

    class Scale(Layer):
        pass

    model = npmobilenet.build("mobilenet_v2", width=0.25)
    model.blocks.append(Scale())
    with pytest.raises(TypeError, match=r"blocks\.17 \(Scale\) has no lowering"):
        lower(model)


def test_dropout_is_the_identity_and_training_mode_does_not_matter():
    model = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=4)
    kinds = [op.kind for op in lower(model)][-2:]
    assert kinds == ["global_avg_pool", "linear"]
    x = np.random.default_rng(3).standard_normal((1, 32, 32, 3)).astype(np.float32)
    assert np.array_equal(lower(model.train())(x), lower(model.eval())(x))


def test_resize_samples_as_pytorch_does():
    # bilinear, align_corners=False: output o reads (o + 0.5) * H / Ho - 0.5, clamped at 0
    from npmobilenet.graph import Resize

    a, b = 1.0, 5.0
    x = np.array([a, b]).reshape(1, 1, 2, 1)
    g = Builder(inputs=("input", "like"))
    g.add(Resize("up", ("input", "like")))
    graph = Graph(g.ops, inputs=("input", "like"))
    values = graph.ops[0].output_shape(x.shape, (1, 1, 4, 1))
    assert values == (1, 1, 4, 1)
    from npmobilenet.graph.evaluate import resize

    y = resize(graph.ops[0], x, np.zeros((1, 1, 4, 1)))
    np.testing.assert_allclose(y.ravel(), [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b])
    x = np.random.default_rng(5).standard_normal((2, 5, 7, 3))
    np.testing.assert_allclose(resize(graph.ops[0], x, x), x)            # the same size: the identity


def _two_headed_graph(rng):
    """A segmentation-style head beside a classifier: a mask resized to the input and scores."""
    from npmobilenet.graph import Activation, GlobalAvgPool, Resize

    g = Builder()
    f = g.add(Conv("features", ("input",), "standard", rng.standard_normal((3, 3, 3, 8)).astype(np.float32),
                   rng.standard_normal(8).astype(np.float32), stride=(2, 2), padding=(1, 1, 1, 1)))
    f = g.add(Activation("features.act", (f,), "relu"))
    m = g.add(Conv("mask", (f,), "pointwise", rng.standard_normal((8, 2)).astype(np.float32)))
    m = g.add(Resize("mask.up", (m, "input")))
    s = g.add(GlobalAvgPool("pool", (f,)))
    s = g.add(Linear("scores", (s,), rng.standard_normal((8, 4)).astype(np.float32), np.zeros(4, np.float32)))
    return Graph(g.ops, outputs=(m, s))


def test_a_graph_of_two_outputs_with_a_resize_evaluates_and_exports():
    # the applications' heads (bilinear upsampling, several outputs) are ops of the same graph:
    # the reference evaluates them and ONNX export writes them, with no walker of their own
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import tempfile

    from npmobilenet.io.onnx_export import export_onnx

    rng = np.random.default_rng(6)
    graph = _two_headed_graph(rng)
    x = rng.standard_normal((2, 33, 40, 3)).astype(np.float32)
    mask, scores = graph(x)
    assert mask.shape == (2, 33, 40, 2) and scores.shape == (2, 4)
    assert graph.shapes(x.shape)[graph.outputs[0]] == mask.shape
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(graph, f"{tmp}/heads.onnx", input_layout="nhwc")
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        theirs = session.run(list(graph.outputs), {"input": x})
    np.testing.assert_allclose(theirs[0].transpose(0, 2, 3, 1), mask, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(theirs[1], scores, rtol=1e-4, atol=1e-4)
    # fused inference runs it too: a resize kernel, both outputs kept to the end of the plan
    from npmobilenet.graph import fuse_activations
    from npmobilenet.inference import FusedMobileNet
    from npmobilenet.inference.compile import fused_layers

    fused_graph = fuse_activations(graph)
    fused = FusedMobileNet(fused_layers(fused_graph), {}, outputs=fused_graph.outputs)
    fused_mask, fused_scores = fused(x.astype(np.float32))
    np.testing.assert_allclose(fused_mask, mask, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused_scores, scores, rtol=1e-4, atol=1e-4)


def test_sigmoid_activation_is_in_the_op_set():
    # LR-ASPP's gate (V3 paper, sec. 6.3): 1 / (1 + exp(-x)), finite at any magnitude
    from npmobilenet.graph import ACTIVATION_FUNCTIONS, Activation

    assert "sigmoid" in ACTIVATION_FUNCTIONS
    g = Builder()
    g.add(Activation("gate", ("input",), "sigmoid"))
    x = np.array([-800.0, -30.0, -1.0, 0.0, 2.0, 30.0, 800.0]).reshape(1, 1, 7, 1)
    with np.errstate(over="raise"):
        y = Graph(g.ops)(x).ravel()
    want = [0.0, np.exp(-30.0) / (1 + np.exp(-30.0)), 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-2.0)),
            1 / (1 + np.exp(-30.0)), 1.0]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="activation must be one of"):
        Activation("gate", ("input",), "swish")


def test_lower_takes_the_tuple_of_outputs_a_model_returns():
    rng = np.random.default_rng(8)

    class TwoHeads(Layer):
        def lower(self, graph, x, name):
            a = graph.add(Conv("a", (x,), "pointwise", rng.standard_normal((3, 2)).astype(np.float32)))
            b = graph.add(Conv("b", (x,), "pointwise", rng.standard_normal((3, 5)).astype(np.float32)))
            return (b, a)

    graph = lower(TwoHeads())
    assert graph.outputs == ("b", "a")
    x = rng.standard_normal((1, 4, 4, 3))
    b, a = graph(x)
    np.testing.assert_allclose(a, x @ graph.ops[0].weight, rtol=1e-12)
    assert b.shape == (1, 4, 4, 5)
