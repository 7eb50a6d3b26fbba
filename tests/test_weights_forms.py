"""One way of naming weights across commands: every command that reads weights takes a registry
name, a checkpoint or a foreign file, with --arch/--width/--tf checked against them (refused when
they contradict, never ignored), and --json meaning JSON on stdout."""
import hashlib
import json
import os
import shutil

import pytest

from npmobilenet.cli import main
from npmobilenet.io import hub, registry

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
DIGITS = os.path.join(FIXTURES, "compression", "digits_v2_w035.npz")
TV_V2 = os.path.join(FIXTURES, "tv_mobilenet_v2_w025.pth")


COMMANDS = [
    ["summary", DIGITS],
    ["eval", DIGITS, "--data", "digits"],
    ["compress", "prune", DIGITS, "OUT", "--fraction", "0.5"],
    ["export-onnx", DIGITS, "OUT", "--no-verify"],
    ["predict", DIGITS, "--weights", DIGITS],
    ["convert", TV_V2, "OUT.npz"],
]
FLAGS = [
    (["--width", "0.5"], "not width 0.5 (--width)"),
    (["--arch", "mobilenet_v3_small"], "not mobilenet_v3_small"),
    (["--tf"], "tf"),
]


# summary names its architecture by its positional argument: it has no --arch to contradict
@pytest.mark.parametrize("argv, flag, message", [(argv, flag, message) for argv in COMMANDS for flag, message in FLAGS
                                                 if not (argv[0] == "summary" and flag[0] == "--arch")])
def test_contradicting_flags_are_refused(argv, flag, message, tmp_path, capsys):
    if argv[0] == "convert" and flag[0] == "--width":
        message = "not width 0.5"
    argv = [str(tmp_path / ("out.npz" if a == "OUT.npz" else "out.bin")) if a.startswith("OUT") else a for a in argv]
    assert main(argv + flag) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not os.listdir(tmp_path)


def test_summary_classes_contradiction_is_refused(capsys):
    assert main(["summary", DIGITS, "--classes", "1000"]) != 0
    assert "has 10 classes, not 1000 (--classes)" in capsys.readouterr().err


def test_registry_name_works_in_every_command(tmp_path, monkeypatch, capsys):
    data = open(TV_V2, "rb").read()
    entry = registry.WeightsEntry("test_v2_w025.LOCAL", "mobilenet_v2",
                                  f"tv_v2_w025-{hashlib.sha256(data).hexdigest()[:8]}.pth",
                                  num_params=0, reported_top1=0.0, reported_top5=0.0, resize=256, width=0.25)
    monkeypatch.setitem(registry.WEIGHTS, entry.name, entry)
    monkeypatch.setenv("NPMOBILENET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    os.makedirs(tmp_path / "home" / "weights")
    shutil.copyfile(TV_V2, tmp_path / "home" / "weights" / entry.file_name)
    assert main(["summary", entry.name, "--json", "--resolution", "64"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] > 0
    assert main(["convert", entry.name, str(tmp_path / "v2.npz")]) == 0
    assert "wrote" in capsys.readouterr().out and os.path.exists(tmp_path / "v2.npz")
    assert main(["summary", entry.name, "--width", "0.5"]) != 0
    assert "not width 0.5" in capsys.readouterr().err
    assert hub.locate(entry.name) == str(tmp_path / "home" / "weights" / entry.file_name)


def test_compress_takes_a_foreign_weights_file(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = tmp_path / "q.npz"
    assert main(["compress", "quantize", TV_V2, str(out), "--data", "digits", "--calibration-images", "8"]) == 0
    assert "int8 per-channel" in capsys.readouterr().out
    from npmobilenet.io.checkpoint import load_with_meta

    model, meta = load_with_meta(str(out))
    assert model.config["arch"] == "mobilenet_v2" and meta["resolution"] == 224   # read as ImageNet's 224
    assert main(["compress", "prune", TV_V2, str(tmp_path / "p.npz"), "--fraction", "0.5"]) == 0
    assert main(["summary", str(tmp_path / "p.npz")]) == 0
