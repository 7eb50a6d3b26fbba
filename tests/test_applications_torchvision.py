"""LR-ASPP and SSDLite against torchvision: exact parameter and MAC counts of the full models,
and torchvision's outputs from its own weights (tests/fixtures/make_application_fixtures.py:
random weights, randomised batch-norm statistics, reduced widths, LR-ASPP at an odd size)."""
import os

import numpy as np
import pytest

import npmobilenet
from npmobilenet.analysis.summary import summarize
from npmobilenet.application_weights import detect_application, from_application_weights

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def model_input(shape, seed):
    # as make_application_fixtures.py makes it
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def expected():
    return np.load(os.path.join(FIXTURES, "applications_expected.npz"))


def test_parameter_counts_are_torchvisions():
    assert npmobilenet.build("lraspp_mobilenet_v3_large", num_classes=21).num_parameters() == 3_221_538
    assert npmobilenet.build("ssdlite320_mobilenet_v3_large", num_classes=91).num_parameters() == 3_440_060


def test_ssdlite_summary_counts():
    s = summarize(npmobilenet.build("ssdlite320_mobilenet_v3_large", num_classes=91), 320)
    assert (s.params, s.macs) == (3_440_060, 583_171_904)


def test_lraspp_summary_counts():
    s = summarize(npmobilenet.build("lraspp_mobilenet_v3_large", num_classes=21), 520)
    assert (s.params, s.macs) == (3_221_538, 2_086_219_688)


def test_lraspp_matches_torchvision(expected):
    path = os.path.join(FIXTURES, "tv_lraspp_w010.pth")
    model = from_application_weights(path)
    assert model.arch == "lraspp_mobilenet_v3_large" and model.config["width"] == 0.1 and model.num_classes == 5
    x = model_input((1, 97, 83, 3), 1)
    logits = model(x)
    assert logits.shape == (1, 97, 83, 5)
    want = expected["lraspp_logits"]
    assert np.abs(logits - want).max() <= 1e-4 * np.abs(want).max()


def test_ssdlite_matches_torchvision(expected):
    path = os.path.join(FIXTURES, "tv_ssdlite_w010.safetensors")
    model = from_application_weights(path)
    assert model.arch == "ssdlite320_mobilenet_v3_large" and model.num_classes == 5
    assert model.config["width"] == 0.1 and model.config["extra_width"] == 0.1
    x = model_input((1, 320, 320, 3), 2)
    cls_logits, bbox_regression = model(x)
    for ours, key in ((cls_logits, "ssdlite_cls_logits"), (bbox_regression, "ssdlite_bbox_regression")):
        want = expected[key]
        assert ours.shape == want.shape
        assert np.abs(ours - want).max() <= 1e-4 * np.abs(want).max(), key
    detections = model.detect(x)[0]
    n = len(expected["ssdlite_scores_0"])
    assert len(detections["scores"]) == n
    # equal up to float rounding of near-ties: compare the best 100 by score
    np.testing.assert_allclose(detections["scores"][:100], expected["ssdlite_scores_0"][:100], rtol=1e-4)
    np.testing.assert_array_equal(detections["labels"][:100], expected["ssdlite_labels_0"][:100])
    np.testing.assert_allclose(detections["boxes"][:100], expected["ssdlite_boxes_0"][:100], atol=1e-2)


def test_recognised_by_keys_and_refused_clearly():
    assert detect_application(["classifier.low_classifier.weight", "backbone.0.0.weight"]) == "lraspp_mobilenet_v3_large"
    assert detect_application(["features.0.0.weight"]) is None
    with pytest.raises(ValueError, match="holds ssdlite320_mobilenet_v3_large weights, not lraspp"):
        from_application_weights(os.path.join(FIXTURES, "tv_ssdlite_w010.safetensors"), arch="lraspp_mobilenet_v3_large")
    with pytest.raises(ValueError, match="has 5 classes, not 21"):
        from_application_weights(os.path.join(FIXTURES, "tv_lraspp_w010.pth"), num_classes=21)


def test_from_weights_recognises_the_applications(expected):
    # npmobilenet.io.from_weights(path): the one loader for any weights file knows these two too
    from npmobilenet.io import from_weights

    seg = from_weights(os.path.join(FIXTURES, "tv_lraspp_w010.pth"))
    assert seg.arch == "lraspp_mobilenet_v3_large" and seg.num_classes == 5 and not seg.training
    want = expected["lraspp_logits"]
    assert np.abs(seg(model_input((1, 97, 83, 3), 1)) - want).max() <= 1e-4 * np.abs(want).max()
    path = os.path.join(FIXTURES, "tv_ssdlite_w010.safetensors")
    det = from_weights(path, arch="ssdlite320_mobilenet_v3_large", width=0.1, num_classes=5)
    cls_logits, _ = det(model_input((1, 320, 320, 3), 2))
    want = expected["ssdlite_cls_logits"]
    assert np.abs(cls_logits - want).max() <= 1e-4 * np.abs(want).max()
    with pytest.raises(ValueError, match=r"tv_ssdlite_w010.safetensors: the file holds ssdlite320_mobilenet_v3_large weights, not mobilenet_v3_large"):
        from_weights(path, arch="mobilenet_v3_large")
    with pytest.raises(ValueError, match="holds a width-0.1 ssdlite320_mobilenet_v3_large, not width 0.5"):
        from_weights(path, width=0.5)
    with pytest.raises(ValueError, match="has 5 classes, not 91"):
        from_weights(path, num_classes=91)
    with pytest.raises(ValueError, match="variant='tf' is timm's"):
        from_weights(path, variant="tf")
