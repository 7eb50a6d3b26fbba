"""Compression of a trained model: the digits fixture (made by
tests/fixtures/compression/make_digits_model.py) quantized to int8 within a point of float, checked
against ONNX Runtime's own int8 quantization, and the `compress` command end to end."""
import os

import numpy as np
import pytest

pytest.importorskip("sklearn")

from npmobilenet import cli  # noqa: E402
from npmobilenet.compression import qmodel as qformat  # noqa: E402
from npmobilenet.io import checkpoint
from npmobilenet.compression.quantize import quantize  # noqa: E402
from npmobilenet.training import load_digits  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "compression", "digits_v2_w035.npz")


@pytest.fixture(scope="module")
def trained():
    model = checkpoint.load(FIXTURE)
    train_set, test_set = load_digits(32, 0.2, 0)
    rng = np.random.default_rng(0)
    calibration = train_set.images[np.sort(rng.permutation(len(train_set))[:128])]
    float_pred = model(test_set.images).argmax(1)
    return model, calibration, test_set.images, test_set.labels, float_pred


@pytest.fixture(scope="module")
def int8_pred(trained):
    model, calibration, images, _, _ = trained
    qmodel = quantize(model, calibration, per_channel=True)
    return qmodel(images).argmax(1)


def test_int8_per_channel_is_within_one_point_of_float(trained, int8_pred):
    _, _, _, labels, float_pred = trained
    float_top1 = (float_pred == labels).mean()
    int8_top1 = (int8_pred == labels).mean()
    assert float_top1 > 0.9  # the fixture is a trained model
    assert abs(int8_top1 - float_top1) <= 0.01, (float_top1, int8_top1)
    assert (int8_pred == float_pred).mean() >= 0.97


def test_agrees_with_onnx_runtime_static_int8(trained, int8_pred, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from npmobilenet.compression.peer import onnxruntime_static_int8

    model, calibration, images, labels, float_pred = trained
    ort_pred = onnxruntime_static_int8(model, calibration, str(tmp_path))(images).argmax(1)
    # two independent int8 implementations of the same model: both close to float and to each other
    assert (ort_pred == float_pred).mean() >= 0.97
    assert (ort_pred == int8_pred).mean() >= 0.96
    assert abs((ort_pred == labels).mean() - (int8_pred == labels).mean()) <= 0.015


def test_compress_command_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "q.npz")
    code = cli.main(["compress", "quantize", FIXTURE, out, "--data", "digits", "--calibration-images", "32"])
    assert code == 0
    text = capsys.readouterr().out
    assert "int8 per-channel" in text and "smaller" in text
    qmodel = qformat.load_quantized(out)
    assert qmodel.info["calibration_images"] == 32 and qmodel.info["meta"]["resolution"] == 32

    pruned = str(tmp_path / "p.npz")
    assert cli.main(["compress", "prune", FIXTURE, pruned, "--fraction", "0.5"]) == 0
    assert "expanded_channels" in checkpoint.load(pruned).config
    factored = str(tmp_path / "f.npz")
    assert cli.main(["compress", "factorize", FIXTURE, factored, "--rank", "head=16"]) == 0
    assert checkpoint.load(factored).config["factorized"]["head"] == 16
    # the quantizer takes compressed float models too
    assert cli.main(["compress", "quantize", pruned, out, "--data", "digits", "--calibration-images", "16"]) == 0

    capsys.readouterr()
    assert cli.main(["compress", "prune", FIXTURE, pruned, "--fraction", "1.0"]) == 2
    assert "every channel" in capsys.readouterr().err
    assert cli.main(["compress", "factorize", FIXTURE, factored, "--rank", "head=999"]) == 2
    assert "not allowed" in capsys.readouterr().err
    assert cli.main(["compress", "quantize", out, str(tmp_path / "qq.npz"), "--data", "digits"]) == 2
    assert "already an int8 quantized checkpoint" in capsys.readouterr().err
