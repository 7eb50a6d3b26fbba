"""`npmobilenet demo --quick`: the whole pipeline on one short epoch (the full run is not a unit test)."""
import re

import numpy as np
import pytest

from npmobilenet.cli import main


def test_quick_demo_end_to_end(tmp_path, capsys):
    pytest.importorskip("sklearn")
    status = main(["demo", "--quick", "--out", str(tmp_path), "--progress", "plain"])
    assert status == 0
    out = capsys.readouterr().out
    assert "epoch 1/1  train loss" in out
    assert "reloaded it, in eval mode" in out
    assert "true \\ predicted" in out
    assert "total: " in out and "multiply-accumulates" in out  # the per-layer cost summary
    for batch in (" 1", "64"):
        assert re.search(rf"inference, eval-mode model +batch {batch}: +[0-9.]+ ms per image, +\d+ images/s", out)
    # the accuracy printed is the saved checkpoint's: re-evaluate it independently
    from npmobilenet.training import augment
    from npmobilenet.io.checkpoint import load_checkpoint
    from npmobilenet.training.data import load_digits
    from npmobilenet.training.evaluation import evaluate

    ckpt = load_checkpoint(tmp_path / "mobilenet_v2_0.35_digits.npz")
    assert ckpt.epoch == 1 and ckpt.config["arch"] == "mobilenet_v2" and ckpt.config["width"] == 0.35
    _, test = load_digits(ckpt.meta["resolution"], 0.2, ckpt.meta["split_seed"])
    assert len(test) == 359
    result = evaluate(ckpt.model, test, transform=augment.Normalize(ckpt.meta["mean"], ckpt.meta["std"]))
    printed = [line for line in out.splitlines() if line.startswith("  test accuracy")][0]
    assert f"{100 * result['top1']:.2f}%" in printed
    assert int(np.trace(result["confusion"])) == int(printed.split("(")[1].split("/")[0])


def test_demo_rejects_a_too_small_resolution(capsys):
    pytest.importorskip("sklearn")
    assert main(["demo", "--resolution", "16"]) == 2
    assert "--resolution must be at least 32" in capsys.readouterr().err
