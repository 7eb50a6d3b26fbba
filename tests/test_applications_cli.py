"""The applications (LR-ASPP, SSDLite) through the command line: summary's counts, demo --task,
predict's mask and boxes."""
import json
import re

import numpy as np
import pytest

from npmobilenet.cli import main


def _summary_json(capsys, *args):
    assert main(["summary", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_summary_gives_torchvisions_counts(capsys):
    s = _summary_json(capsys, "lraspp_mobilenet_v3_large", "--resolution", "520", "--classes", "21")
    assert (s["params"], s["macs"]) == (3_221_538, 2_086_219_688)
    assert s["arch"] == "lraspp_mobilenet_v3_large" and s["resolution"] == [520, 520]
    s = _summary_json(capsys, "ssdlite320_mobilenet_v3_large", "--resolution", "320", "--classes", "91")
    assert (s["params"], s["macs"]) == (3_440_060, 583_171_904)


def test_summary_defaults_are_each_models_own(capsys):
    # no --classes: LR-ASPP's 21 (VOC), SSDLite's 91 (COCO); no --resolution: 520 and 320
    assert _summary_json(capsys, "ssdlite320_mobilenet_v3_large")["params"] == 3_440_060
    s = _summary_json(capsys, "lraspp_mobilenet_v3_large")
    assert s["params"] == 3_221_538 and s["resolution"] == [520, 520]
    # a classifier keeps its 1000 classes: the last layer is 1280 x 1000 + 1000
    s = _summary_json(capsys, "mobilenet_v3_large", "--resolution", "64")
    assert s["layers"][-1]["params"] == 1280 * 1000 + 1000
    # another class count changes the heads only: 21 -> 5 classes drop (40 + 128 + 2) x 16 parameters
    s = _summary_json(capsys, "lraspp_mobilenet_v3_large", "--classes", "5", "--resolution", "64")
    assert s["params"] == 3_221_538 - (40 + 128 + 2) * 16


def test_summary_refuses_bad_classes(capsys):
    assert main(["summary", "ssdlite320_mobilenet_v3_large", "--classes", "0"]) == 2
    err = capsys.readouterr().err
    assert "--classes must be at least 1" in err and len(err.strip().splitlines()) == 1


def test_demo_task_segmentation_writes_its_picture(tmp_path, capsys):
    pytest.importorskip("PIL")
    picture = tmp_path / "masks.png"
    assert main(["demo", "--task", "segmentation", "--quick", "--resolution", "64", "--batch-size", "8",
                 "--picture", str(picture)]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1: loss" in out and re.search(r"test mIoU \d\.\d{3} .*all-background baseline \d\.\d{3}", out)
    from PIL import Image
    assert np.asarray(Image.open(picture)).shape == (3 * 64, 8 * 64, 3)     # images, true and predicted masks


def test_demo_task_detection_writes_its_picture_under_out(tmp_path, capsys):
    pytest.importorskip("PIL")
    assert main(["demo", "--task", "detection", "--quick", "--resolution", "64", "--batch-size", "16",
                 "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"test mAP@0\.5 \d\.\d{3} .*mean-box baseline \d\.\d{3}", out)
    from PIL import Image
    assert np.asarray(Image.open(tmp_path / "run" / "detection_demo.png")).shape == (2 * 64, 8 * 2 * 64, 3)


@pytest.mark.parametrize("argv, message", [
    (["--task", "segmentation", "--progress", "plain"], "--progress applies to the classification demo"),
    (["--task", "detection", "--no-summary"], "--no-summary applies to the classification demo"),
    (["--picture", "x.png"], "--picture applies to --task segmentation or detection"),
    (["--task", "segmentation", "--picture", "x.jpg"], "--picture must name a .png file"),
    (["--task", "detection", "--picture", "/missing/dir/x.png"], "does not exist"),
    (["--task", "segmentation", "--resolution", "16"], "--resolution must be at least 32"),
    (["--task", "detection", "--epochs", "0"], "--epochs must be >= 1"),
])
def test_demo_task_refuses_what_does_not_apply(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert list(tmp_path.iterdir()) == []                    # checked before any work: nothing written


def test_demo_knows_three_tasks(capsys):
    with pytest.raises(SystemExit) as exited:              # argparse's own refusal
        main(["demo", "--task", "tracking"])
    assert exited.value.code == 2
    assert "choose from 'classification', 'segmentation', 'detection'" in capsys.readouterr().err


def test_summary_of_torchvisions_application_files(capsys):
    # a weights file: built as the file says, at the model's own default resolution
    import os

    path = os.path.join(os.path.dirname(__file__), "fixtures", "tv_ssdlite_w010.safetensors")
    s = _summary_json(capsys, path)
    assert s["arch"] == "ssdlite320_mobilenet_v3_large" and s["resolution"] == [320, 320] and s["width"] == 0.1
    assert main(["summary", path, "--classes", "91"]) == 2
    assert "has 5 classes, not 91" in capsys.readouterr().err
