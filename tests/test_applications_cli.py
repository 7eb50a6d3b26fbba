"""The applications (LR-ASPP, SSDLite) through the command line: summary's counts, demo --task,
predict's mask and boxes."""
import json

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
