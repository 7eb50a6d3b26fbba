"""Fused inference of LR-ASPP and SSDLite: the lowered graph's resize, sigmoid gate, the add of two
classifiers and twelve outputs run by the op table, equal to the unfused models."""
import numba
import numpy as np
import pytest

import npmobilenet
from npmobilenet.detection.postprocess import postprocess_detections
from npmobilenet.detection.ssdlite import FusedSSDLite
from npmobilenet.graph import Builder, ChannelScale, Conv, Graph, GlobalAvgPool, Linear
from npmobilenet.inference import FusedMobileNet
from npmobilenet.inference.compile import fused_layers
from test_inference_fuse import randomize_batch_norm, relative_error


def _randomised(arch, width, num_classes, seed):
    rng = np.random.default_rng(seed)
    model = randomize_batch_norm(npmobilenet.build(arch, width=width, num_classes=num_classes, seed=seed), rng)
    for _, layer in model.modules():       # biases far from their zero initialisation too
        bias = getattr(layer, "bias", None)
        if bias is not None and hasattr(bias, "data"):
            bias.data[...] = rng.standard_normal(bias.data.shape) * 0.5
    return model.eval()


def test_lraspp_fused_equals_unfused_at_odd_sizes():
    model = _randomised("lraspp_mobilenet_v3_large", 0.35, 5, 1)
    fused = model.fuse()
    assert isinstance(fused, FusedMobileNet)
    kinds = [layer.kind for layer in fused.layers]
    assert kinds.count("resize") == 2 and fused.layers[-1].kind == "resize"
    gated = [layer for layer in fused.layers if layer.kind == "resize" and layer.gated]
    assert len(gated) == 1                              # x * sigmoid gate, applied as the resize reads x
    assert any(layer.kind == "linear" and layer.activation == "sigmoid" for layer in fused.layers)
    rng = np.random.default_rng(2)
    for shape in ((2, 97, 83, 3), (1, 64, 70, 3)):
        x = rng.standard_normal(shape).astype(np.float32)
        expected = model(x)
        y = fused(x)
        assert y.shape == expected.shape == shape[:3] + (5,)
        assert relative_error(y, expected) < 1e-5
    # bitwise the same on any thread count
    outputs = [fused.set_threads(t, adaptive=False)(x) for t in range(1, numba.config.NUMBA_NUM_THREADS + 1)]
    assert all(np.array_equal(outputs[0], y) for y in outputs)


def test_lraspp_fused_batch_in_chunks():
    model = _randomised("lraspp_mobilenet_v3_large", 0.35, 3, 3)
    fused = model.fuse()
    fused.chunk_pixels = 40 * 48                       # one image per chunk: the worker-plan path
    x = np.random.default_rng(4).standard_normal((3, 40, 48, 3)).astype(np.float32)
    assert fused.chunk_images(3, 40, 48) == 1
    assert relative_error(fused(x), model(x)) < 1e-5


def test_ssdlite_fused_equals_unfused_and_detects_alike():
    model = _randomised("ssdlite320_mobilenet_v3_large", 0.35, 4, 5)
    fused = model.fuse()
    assert isinstance(fused, FusedSSDLite) and len(fused.network.outputs) == 12
    x = np.random.default_rng(6).standard_normal((2, 128, 96, 3)).astype(np.float32)
    cls_logits, bbox_regression = fused(x)
    want_cls, want_box = model(x)
    assert cls_logits.shape == want_cls.shape and bbox_regression.shape == want_box.shape
    assert relative_error(cls_logits, want_cls) < 1e-5 and relative_error(bbox_regression, want_box) < 1e-5
    # detect: the anchors from the fused maps' sizes are the model's; the same post-processing
    found = fused.detect(x, score_threshold=0.2)
    np.testing.assert_array_equal(fused._anchors[(128, 96)], model.anchors_for((128, 96)))
    again = postprocess_detections(cls_logits, bbox_regression, model.anchors_for((128, 96)), (128, 96),
                                   score_threshold=0.2)
    for a, b in zip(found, again):
        for key in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(a[key], b[key])
    # the batch in chunks: every one of the twelve outputs filled
    fused.network.chunk_pixels = 128 * 96
    chunked = fused(x)
    assert relative_error(chunked[0], want_cls) < 1e-5 and relative_error(chunked[1], want_box) < 1e-5


def test_fused_models_refuse_training_and_report_memory():
    model = _randomised("ssdlite320_mobilenet_v3_large", 0.35, 3, 7)
    fused = model.fuse(threads=1)
    assert fused.threads == 1 and "FusedSSDLite" in repr(fused)
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    fused(np.zeros((1, 64, 64, 3), np.float32))
    assert fused.activation_bytes == npmobilenet.inference.planned_peak_bytes(model, 64)


def test_a_channel_scale_with_no_place_to_run_is_named():
    rng = np.random.default_rng(8)
    g = Builder()
    f = g.add(Conv("features", ("input",), "pointwise", rng.standard_normal((3, 4)).astype(np.float32)))
    s = g.add(GlobalAvgPool("pool", (f,)))
    s = g.add(Linear("gate", (s,), rng.standard_normal((4, 4)).astype(np.float32), None))
    y = g.add(ChannelScale("scaled", (f, s)))
    g.add(Conv("head", (y,), "pointwise", rng.standard_normal((4, 2)).astype(np.float32)))
    with pytest.raises(NotImplementedError, match="channel_scale op scaled"):
        fused_layers(Graph(g.ops))
