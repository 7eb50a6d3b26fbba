"""Issue 16, the command line: no command destroys its input, outputs are checked before any work,
and every expected error is one line on stderr with exit status 2 (never a traceback)."""
import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import npmobilenet
from npmobilenet.cli import COMMANDS, error_message, main
from npmobilenet.io import checkpoint

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "compression", "digits_v2_w035.npz")
META = dict(resolution=32, mean=[0.1, 0.2, 0.3], std=[0.9, 0.8, 0.7], classes=[str(i) for i in range(10)],
            data="digits", val_fraction=0.1, split_seed=0)


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "x.npz"
    shutil.copy(FIXTURE, path)
    return path


def _one_line_error(capsys, command, *fragments):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"npmobilenet {command}: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# -- no command overwrites its input ---------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["compress", "quantize", "{ckpt}", "{out}", "--data", "digits"],
    ["compress", "factorize", "{ckpt}", "{out}"],
    ["compress", "prune", "{ckpt}", "{out}", "--fraction", "0.5"],
    ["export-onnx", "{ckpt}", "{out}"],
    ["convert", "{ckpt}", "{out}"],
])
@pytest.mark.parametrize("same", ["same path", "another spelling", "hard link"])
def test_output_equal_to_the_input_is_refused_before_any_work(argv, same, ckpt, tmp_path, capsys, monkeypatch):
    before = ckpt.read_bytes()
    out = {"same path": str(ckpt), "another spelling": os.path.join(str(tmp_path), ".", "x.npz"),
           "hard link": str(tmp_path / "link.npz")}[same]
    if same == "hard link":
        os.link(ckpt, out)
    calls = []
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda *a, **k: calls.append(a))
    assert main([a.format(ckpt=ckpt, out=out) for a in argv]) == 2
    _one_line_error(capsys, argv[0], "would destroy the input")
    assert ckpt.read_bytes() == before and not calls
    assert sorted(os.listdir(tmp_path)) == sorted(["x.npz"] + (["link.npz"] if same == "hard link" else []))


def test_convert_keeps_every_piece_of_metadata(tmp_path, capsys):
    model = npmobilenet.build("mobilenet_v2", 0.35, num_classes=10)
    src = tmp_path / "trained.npz"
    checkpoint.save(model, src, epoch=4, **META, history=[{"epoch": 4, "val_acc": 0.9666}])
    assert main(["convert", str(src), str(tmp_path / "copy.npz")]) == 0
    kept = checkpoint.load_checkpoint(tmp_path / "copy.npz")
    for key, value in META.items():
        assert kept.meta[key] == value, key
    assert kept.epoch == 4 and kept.meta["history"] == [{"epoch": 4, "val_acc": 0.9666}]
    assert kept.meta["source"] == "trained.npz"


# -- outputs checked before any work ------------------------------------------------------------------------
@pytest.mark.parametrize("make_out, fragment", [
    (lambda d: str(d), "is a directory"),
    (lambda d: str(d / "missing" / "out.npz"), "does not exist"),
    (lambda d: str(d / ("n" * 300 + ".npz")), "longer than the file system's"),
])
@pytest.mark.parametrize("command", [["compress", "prune"], ["export-onnx"], ["convert"]])
def test_unwritable_outputs_are_one_line_errors_before_work(command, make_out, fragment, ckpt, tmp_path, capsys,
                                                            monkeypatch):
    calls = []
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda *a, **k: calls.append(a))
    extra = ["--fraction", "0.5"] if command[0] == "compress" else []
    assert main([*command, str(ckpt), make_out(tmp_path), *extra]) == 2
    _one_line_error(capsys, command[0], fragment)
    assert not calls


def test_read_only_output_directory_is_refused(ckpt, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # root writes any directory whatever its mode: let os.access answer as for another user
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(locked)
                            else real_access(p, mode, **kw))
    try:
        assert main(["compress", "prune", str(ckpt), str(locked / "out.npz"), "--fraction", "0.5"]) == 2
    finally:
        locked.chmod(0o755)
    _one_line_error(capsys, "compress", "not writable")


def test_full_disk_is_a_one_line_error_and_leaves_nothing(ckpt, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    out = tmp_path / "out.npz"
    assert main(["compress", "prune", str(ckpt), str(out), "--fraction", "0.25"]) == 2
    _one_line_error(capsys, "compress", "no space left on the device")
    assert sorted(os.listdir(tmp_path)) == ["x.npz"]


# -- arguments ----------------------------------------------------------------------------------------------
def test_summary_resolution_zero_is_refused(capsys):
    assert main(["summary", "mobilenet_v2", "--resolution", "0"]) == 2
    _one_line_error(capsys, "summary", "--resolution must be at least 32, got 0")


def test_empty_validation_split_fails_before_training(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(tmp_path / "data" / name / f"{i}.png")
    status = main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "m.npz"), "--epochs", "1",
                   "--arch", "mobilenet_v3_small", "--width", "0.1"])
    assert status == 2
    captured = capsys.readouterr()
    assert "leaves no validation images" in captured.err and "training" not in captured.out
    assert not (tmp_path / "m.npz").exists()


def test_decompression_bomb_given_to_predict_is_not_a_traceback(tmp_path, capsys):
    pytest.importorskip("PIL.Image")
    from tests.test_reliability_loaders import _png_with_size

    bomb = _png_with_size(tmp_path / "bomb.png", 20000, 20000)
    weights = os.path.join(os.path.dirname(__file__), "fixtures", "tv_mobilenet_v3_small_w035.pth")
    assert main(["predict", str(bomb), "--weights", weights]) != 0   # raises nothing: no traceback
    err = capsys.readouterr().err
    assert "bomb.png" in err and "too large" in err and "Traceback" not in err


# -- the handler itself -------------------------------------------------------------------------------------
def test_multi_line_messages_become_one_line():
    assert error_message(ValueError("file does not fit\n  missing: a\n  unexpected: b")) == \
        "file does not fit missing: a unexpected: b"
    assert error_message(PermissionError(errno.EACCES, "Permission denied", "/x/y.npz")) == "/x/y.npz: Permission denied"


def test_missing_extra_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert main(["demo", "--quick"]) == 2
    _one_line_error(capsys, "demo", "pip install")


def test_keyboard_interrupt_is_one_line_and_130(capsys, monkeypatch):
    import npmobilenet.cli.summary as summary

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(summary, "run", interrupted)
    assert main(["summary", "mobilenet_v2"]) == 130
    assert capsys.readouterr().err.strip() == "npmobilenet summary: interrupted"


def test_debug_shows_the_traceback(monkeypatch):
    with pytest.raises(ValueError, match="--resolution must be at least 32"):
        main(["--debug", "summary", "mobilenet_v2", "--resolution", "8"])
    monkeypatch.setenv("NPMOBILENET_DEBUG", "1")
    with pytest.raises(ValueError, match="--resolution must be at least 32"):
        main(["summary", "mobilenet_v2", "--resolution", "8"])


def test_version_and_the_download_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"npmobilenet {npmobilenet.__version__}"
    assert COMMANDS["download"] == ("npmobilenet.cli.download", "fetch pretrained weights by name into the weights cache")


def test_closed_pipe_ends_quietly():
    # `npmobilenet summary mobilenet_v2 | head -1`, with the reader gone before the first write
    proc = subprocess.Popen([sys.executable, "-m", "npmobilenet", "summary", "mobilenet_v2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert err == "", err
    assert proc.returncode == 141
