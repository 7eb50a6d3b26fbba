"""LR-ASPP and SSDLite exported to ONNX through the lowered graph (Sigmoid, Resize, twelve
outputs) and run by ONNX Runtime: the same numbers as our forward pass. SSDLite's graph ends at
its head maps; the reshape, concatenation and post-processing stay outside it."""
import numpy as np
import pytest

import npmobilenet
from npmobilenet.graph import Builder, Conv, Graph, Resize

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from npmobilenet.io.onnx_export import export_onnx, run_onnx  # noqa: E402


def _randomise_statistics(model, rng):
    # batch-norm statistics and biases away from their initial values, so that no term vanishes
    for name, b in model.named_buffers():
        b[...] = rng.uniform(0.5, 1.5, b.shape) if name.endswith("var") else rng.normal(0, 0.2, b.shape)
    for name, p in model.named_parameters():
        if name.endswith(("bias", "beta")):
            p.data[...] = rng.normal(0, 0.2, p.data.shape)
    return model.eval()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_lraspp_in_onnx_runtime(tmp_path):
    rng = np.random.default_rng(0)
    model = _randomise_statistics(npmobilenet.build("lraspp_mobilenet_v3_large", width=0.1, num_classes=4), rng)
    path = export_onnx(model, tmp_path / "lraspp.onnx")
    proto = onnx.load(str(path))
    kinds = {node.op_type for node in proto.graph.node}
    assert {"Sigmoid", "Resize", "Mul"} <= kinds
    (output,) = proto.graph.output
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert output.name == "logits" and dims == ["N", 4, "H", "W"]
    x = rng.standard_normal((2, 45, 61, 3)).astype(np.float32)          # odd sizes: uneven upsampling
    (theirs,) = _session(path).run(["logits"], {"input": x.transpose(0, 3, 1, 2)})
    ours = model(x)
    assert theirs.shape == (2, 4, 45, 61)
    assert np.abs(theirs.transpose(0, 2, 3, 1) - ours).max() <= 1e-4 * np.abs(ours).max()
    np.testing.assert_array_equal(run_onnx(path, x.transpose(0, 3, 1, 2)), theirs.transpose(0, 2, 3, 1))   # NHWC


def test_ssdlite_in_onnx_runtime(tmp_path):
    rng = np.random.default_rng(1)
    model = _randomise_statistics(npmobilenet.build("ssdlite320_mobilenet_v3_large", width=0.1, num_classes=5,
                                                    extra_width=0.1), rng)
    path = export_onnx(model, tmp_path / "ssdlite.onnx", input_layout="nhwc")
    outputs = [o.name for o in onnx.load(str(path)).graph.output]
    assert outputs == [f"classification_head.{i}.1" for i in range(6)] + [f"regression_head.{i}.1" for i in range(6)]
    x = rng.standard_normal((2, 320, 320, 3)).astype(np.float32)
    maps = _session(path).run(outputs, {"input": x})
    assert [m.shape[2:] for m in maps[:6]] == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    cls_logits, bbox_regression = model.head_outputs([m.transpose(0, 2, 3, 1) for m in maps])
    want_cls, want_box = model(x)
    assert cls_logits.shape == (2, 3234, 5) and bbox_regression.shape == (2, 3234, 4)
    assert np.abs(cls_logits - want_cls).max() <= 1e-4 * np.abs(want_cls).max()
    assert np.abs(bbox_regression - want_box).max() <= 1e-4 * np.abs(want_box).max()
    # run_onnx gives what the model's forward gives: the maps reassembled outside the graph
    again_cls, again_box = run_onnx(path, x)
    np.testing.assert_array_equal(again_cls, cls_logits)
    np.testing.assert_array_equal(again_box, bbox_regression)


def test_resize_to_one_pixel_samples_the_centre_as_pytorch_does(tmp_path):
    # align_corners=False reads (o + 0.5) H / Ho - 0.5: for Ho = 1 the middle of the column, which
    # is ONNX's half_pixel (pytorch_half_pixel would read row 0)
    g = Builder()
    like = g.add(Conv("column", ("input",), "depthwise", np.ones((5, 1, 3), np.float32)))   # 5xW -> 1xW
    g.add(Resize("up", ("input", like)))
    graph = Graph(g.ops, config={"arch": "resize_test"})
    x = np.random.default_rng(2).standard_normal((1, 5, 4, 3)).astype(np.float32)
    ours = graph(x)
    np.testing.assert_allclose(ours[:, 0], x[:, 2], rtol=1e-6)            # position 2.5 - 0.5 = row 2
    path = export_onnx(graph, tmp_path / "resize.onnx", input_layout="nhwc")
    (theirs,) = _session(path).run(["logits"], {"input": x})
    np.testing.assert_allclose(theirs.transpose(0, 2, 3, 1), ours, rtol=1e-6, atol=1e-6)
