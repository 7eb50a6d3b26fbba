"""`npmobilenet predict` and `io.predict.open_predictor` with LR-ASPP and SSDLite weights:
torchvision's whole pipeline, preprocessing included, reproduced on a photograph
(tests/fixtures/make_application_predict_fixtures.py), and the drawn mask, boxes and JSON."""
import json
import os

import numpy as np
import pytest

from npmobilenet.cli import main

PIL_Image = pytest.importorskip("PIL.Image")

from npmobilenet.io.images import load_image  # noqa: E402
from npmobilenet.io.predict import open_predictor, voc_palette  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
PHOTO = os.path.join(FIXTURES, "predict_photo.png")
SEG = os.path.join(FIXTURES, "tv_lraspp_w010.pth")
DET = os.path.join(FIXTURES, "tv_ssdlite_w010.safetensors")
RESIZE = 160                                   # the fixture's SemanticSegmentation(resize_size=160)


@pytest.fixture(scope="module")
def expected():
    return np.load(os.path.join(FIXTURES, "applications_predict_expected.npz"))


def test_segmentation_is_torchvisions(expected):
    predictor = open_predictor(SEG, resize=RESIZE)
    assert predictor.task == "segmentation" and predictor.labels is None      # 5 classes: no names
    mask = predictor.segment(load_image(PHOTO)[0])
    want = expected["lraspp_mask"]
    assert mask.shape == want.shape == (80, 120)
    assert np.mean(mask == want) >= 0.999                  # argmax near-ties aside, torchvision's mask


def test_detection_is_torchvisions(expected):
    predictor = open_predictor(DET, min_score=0.0)
    assert predictor.task == "detection" and predictor.size == (320, 320)
    found = predictor.detect(load_image(PHOTO)[0])
    assert len(found) == len(expected["ssdlite_scores"]) == 300
    # equal up to float32 rounding through a random-weight net (5e-4 relative; measured 1.3e-4) and
    # near-ties: the best 50 by score, boxes in the photograph's pixels
    np.testing.assert_allclose([d["score"] for d in found[:50]], expected["ssdlite_scores"][:50], rtol=5e-4)
    np.testing.assert_array_equal([d["index"] for d in found[:50]], expected["ssdlite_labels"][:50])
    np.testing.assert_allclose([d["xyxy"] for d in found[:50]], expected["ssdlite_boxes"][:50], atol=0.02)


def test_predict_draws_the_mask(tmp_path, capsys, expected):
    assert main(["predict", PHOTO, "--weights", SEG, "--resize", str(RESIZE), "--draw", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "segmentation" and report["num_classes"] == 5
    (row,) = report["results"]
    counts = np.bincount(expected["lraspp_mask"].ravel(), minlength=5) / expected["lraspp_mask"].size
    assert {c["index"]: c["fraction"] for c in row["classes"]} == pytest.approx(
        {k: v for k, v in enumerate(counts) if v > 0}, abs=2e-3)
    assert row["drawn"] == str(tmp_path / "predict_photo.mask.png") and row["size"] == [120, 80]
    drawn = np.asarray(PIL_Image.open(row["drawn"]), np.int64)
    photo = np.asarray(PIL_Image.open(PHOTO).convert("RGB"), np.int64)
    mask = open_predictor(SEG, resize=RESIZE).segment(load_image(PHOTO)[0])
    assert np.array_equal(drawn[mask == 0], photo[mask == 0])                    # background left as it is
    blended = (photo + voc_palette(5)[mask]) / 2
    assert np.abs(drawn[mask > 0] - blended[mask > 0]).max() <= 1                # half the class colour


def test_predict_draws_the_boxes_and_writes_their_json(tmp_path, capsys):
    assert main(["predict", PHOTO, "--weights", DET, "--draw", str(tmp_path), "--min-score", "0.9"]) == 0
    out = capsys.readouterr().out
    boxes = json.loads((tmp_path / "predict_photo.boxes.json").read_text())
    assert boxes["path"] == PHOTO and boxes["size"] == [120, 80]
    assert boxes["detections"] and all(d["score"] >= 0.9 for d in boxes["detections"])
    for d in boxes["detections"]:
        x0, y0, x1, y1 = d["xyxy"]
        assert 0 <= x0 <= x1 <= 120 and 0 <= y0 <= y1 <= 80 and d["label"] is None
    assert f"{len(boxes['detections'])} box(es)" in out and "drawn:" in out
    assert np.asarray(PIL_Image.open(tmp_path / "predict_photo.boxes.png")).shape == (80, 120, 3)


def test_predict_refuses_flags_that_do_not_apply(tmp_path, capsys):
    classifier = os.path.join(FIXTURES, "tv_mobilenet_v2_w025.pth")
    cases = [
        (["--weights", SEG, "--csv", str(tmp_path / "x.csv")], "--csv do(es) not apply to segmentation"),
        (["--weights", DET, "--topk", "3"], "--topk do(es) not apply to detection"),
        (["--weights", SEG, "--min-score", "0.5"], "--min-score do(es) not apply to segmentation"),
        (["--weights", DET, "--resize", "200"], "SSDLite320 takes the image at 320x320"),
        (["--weights", DET, "--crop", "200"], "crop applies to classifiers"),
        (["--weights", classifier, "--draw", str(tmp_path)], "--draw applies to segmentation and detection"),
        (["--weights", classifier, "--min-score", "0.5"], "min_score applies to detection weights"),
        (["--weights", DET, "--draw", str(tmp_path / "missing")], "not a directory"),
        (["--weights", DET, "--min-score", "2"], "--min-score must be in [0, 1]"),
    ]
    for argv, message in cases:
        assert main(["predict", PHOTO, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert list(tmp_path.iterdir()) == []


def test_registry_names_without_the_file_say_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPMOBILENET_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["predict", PHOTO, "--model", "ssdlite320_mobilenet_v3_large.COCO_V1"]) == 2
    err = capsys.readouterr().err
    assert "ssdlite320_mobilenet_v3_large_coco-a79551df.pth" in err and "npmobilenet download" in err


def test_same_names_in_two_folders_do_not_overwrite(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "photo.png").write_bytes(open(PHOTO, "rb").read())
    out = tmp_path / "out"
    out.mkdir()
    assert main(["predict", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", SEG, "--resize", "64",
                 "--draw", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["photo.mask.png", "photo_2.mask.png"]
