"""LR-ASPP (npmobilenet.build("lraspp_mobilenet_v3_large")): shapes at any size, the backward
pass through the head, the resizes and the dilated backbone by finite differences, the lowered
graph against the forward pass, and rebuilding from config."""
import numpy as np
import pytest

import npmobilenet
from gradcheck import check_model_gradients
from npmobilenet.graph import lower


def _small(seed=1):
    return npmobilenet.build("lraspp_mobilenet_v3_large", width=0.1, num_classes=3, seed=seed)


def _randomise_heads(net, rng):
    # biases and batch-norm statistics away from their initial values, so that no term vanishes
    for name, p in net.named_parameters():
        if name.endswith(("bias", "beta")):
            p.data[...] = rng.normal(0, 0.3, p.data.shape)
    for name, b in net.named_buffers():
        b[...] = rng.uniform(0.5, 1.5, b.shape) if name.endswith("var") else rng.normal(0, 0.2, b.shape)


def test_shapes_at_odd_sizes_and_config():
    net = _small().eval()
    for shape in ((1, 33, 47, 3), (2, 64, 64, 3)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        y = net(x)
        assert y.shape == shape[:3] + (3,) and y.dtype == np.float32
        assert net.predict(x).shape == shape[:3]
    assert [t.reduction for t in net.backbone.feature_info] == [8, 16]        # output stride 16
    again = npmobilenet.build(**net.config)
    assert again.num_parameters() == net.num_parameters() and again.config == net.config
    with pytest.raises(ValueError, match="at least 32x32"):
        net(np.zeros((1, 16, 16, 3), np.float32))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_whole_model_gradients(training):
    rng = np.random.default_rng(7)
    net = _small().astype(np.float64)
    _randomise_heads(net, rng)
    net.train(training)
    x = rng.standard_normal((2, 35, 33, 3))
    weights = rng.standard_normal((2, 35, 33, 3))
    names = [n for n, _ in net.named_parameters()]
    chosen = [(n, 2) for n in names if n.startswith("classifier.")]
    chosen += [(n, 2) for n in ("backbone.blocks.3.conv_dw.conv.weight", "backbone.blocks.14.conv_dw.conv.weight",
                                "backbone.head.conv.weight", "backbone.stem.bn.gamma")]
    dx = check_model_gradients(net, x, weights, chosen, rng, "lraspp")
    assert np.abs(dx).max() > 1e-4


def test_lowered_graph_computes_the_model():
    net = _small().eval()
    _randomise_heads(net, np.random.default_rng(3))
    x = np.random.default_rng(1).standard_normal((1, 41, 37, 3))
    graph = lower(net)
    assert [op.kind for op in graph.ops].count("resize") == 2
    np.testing.assert_allclose(graph(x), net.astype(np.float64)(x), rtol=1e-9, atol=1e-9)
