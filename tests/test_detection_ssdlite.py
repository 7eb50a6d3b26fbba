"""SSDLite (npmobilenet.build("ssdlite320_mobilenet_v3_large")): outputs in anchor order, the
anchors, detect(), the backward pass by finite differences, the lowered graph."""
import numpy as np
import pytest

import npmobilenet
from gradcheck import assert_close, numeric_grad, sample_indices
from npmobilenet.detection.anchors import default_boxes
from npmobilenet.graph import lower
from npmobilenet.layers import BatchNorm


def _small(seed=1, num_classes=4):
    return npmobilenet.build("ssdlite320_mobilenet_v3_large", width=0.1, num_classes=num_classes, seed=seed,
                             extra_width=0.1)


def test_shapes_anchors_and_detect():
    net = _small().eval()
    x = np.random.default_rng(0).standard_normal((2, 320, 320, 3)).astype(np.float32)
    cls_logits, bbox_regression = net(x)
    assert cls_logits.shape == (2, 3234, 4) and bbox_regression.shape == (2, 3234, 4)
    assert net.anchors.shape == (3234, 4)
    assert net.grid_sizes() == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    np.testing.assert_array_equal(net.anchors, default_boxes(net.grid_sizes(), (320, 320)))
    detections = net.detect(x)
    assert len(detections) == 2 and len(detections[0]["boxes"]) <= 300
    assert np.all(np.diff(detections[0]["scores"]) <= 0) and set(detections[0]["labels"]) <= {1, 2, 3}
    # other sizes: as many anchors as the maps have cells
    small = net(np.zeros((1, 64, 96, 3), np.float32))[0]
    assert small.shape[1] == len(net.anchors_for((64, 96))) == 6 * sum(h * w for h, w in net.grid_sizes((64, 96)))
    assert npmobilenet.build(**net.config).num_parameters() == net.num_parameters()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_whole_model_gradients(training):
    rng = np.random.default_rng(11)
    net = _small(num_classes=3).astype(np.float64)
    for name, p in net.named_parameters():
        if name.endswith(("bias", "beta")):
            p.data[...] = rng.normal(0, 0.3, p.data.shape)
    x = rng.standard_normal((2, 96, 96, 3))
    # running statistics of this input (torchvision's N(0, 0.03) weights would fade to nothing in
    # eval mode with the initial ones), by one training pass with momentum 1
    norms = [layer for _, layer in net.modules() if isinstance(layer, BatchNorm)]
    for layer in norms:
        layer.momentum = 1.0
    net.train()(x)
    for layer in norms:
        layer.momentum = 0.03
    net.train(training)
    cls, box = net(x)
    wc, wb = rng.standard_normal(cls.shape), rng.standard_normal(box.shape)

    def loss():
        c, b = net(x)
        return float(np.sum(wc * c) + np.sum(wb * b))

    net(x)
    dx = net.backward(wc, wb)
    grads = {n: p.grad.copy() for n, p in net.named_parameters()}
    for idx in sample_indices(x.shape, 3, rng):
        assert_close(dx[idx], numeric_grad(loss, x, idx, h=1e-7), f"dx{idx}", rtol=2e-3, atol=1e-6)
    params = dict(net.named_parameters())
    for name in ("classification_head.0.1.weight", "regression_head.5.0.conv.weight", "extra.3.1.conv.weight",
                 "extra.0.0.bn.gamma", "backbone.blocks.12.conv_pw.conv.weight", "backbone.blocks.14.se.reduce.weight",
                 "backbone.stem.conv.weight"):
        for idx in sample_indices(params[name].shape, 2, rng):
            assert_close(grads[name][idx], numeric_grad(loss, params[name].data, idx, h=1e-7), f"d{name}{idx}",
                         rtol=2e-3, atol=1e-6)
    assert np.abs(dx).max() > 1e-4


def test_lowered_graph_computes_the_heads():
    net = _small().eval()
    x = np.random.default_rng(1).standard_normal((1, 128, 128, 3))
    graph = lower(net)                                      # a graph of twelve outputs: the heads' maps
    assert len(graph.outputs) == 12
    assert [graph.producer(t).name for t in graph.outputs[:2]] == ["classification_head.0.1", "classification_head.1.1"]
    cls, box = net.head_outputs(graph(x))
    want_cls, want_box = net.astype(np.float64)(x)
    np.testing.assert_allclose(cls, want_cls, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(box, want_box, rtol=1e-9, atol=1e-9)
