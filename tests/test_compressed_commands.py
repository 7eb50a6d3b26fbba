"""`summary` and `eval` accept compressed checkpoints (issue: compression, command line)."""
import json
import pathlib

import pytest

from npmobilenet.cli import main

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "compression" / "digits_v2_w035.npz"


@pytest.fixture(scope="module")
def int8_checkpoint(tmp_path_factory):
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("q") / "digits.int8.npz"
    assert main(["compress", "quantize", str(FIXTURE), str(out), "--data", "digits"]) == 0
    return out


def test_summary_of_float_and_int8_checkpoints(int8_checkpoint, capsys):
    assert main(["summary", str(FIXTURE), "--json"]) == 0
    float_summary = json.loads(capsys.readouterr().out)
    assert main(["summary", str(int8_checkpoint), "--json"]) == 0
    int8_summary = json.loads(capsys.readouterr().out)
    # Same network, same multiply-accumulates; int8 drops the folded batch-norm parameters.
    assert int8_summary["quantized"] and int8_summary["macs"] == float_summary["macs"] == 1_196_592
    assert int8_summary["params"] < float_summary["params"] == 408_938
    assert main(["summary", "no-such-file.npz"]) == 2


def test_eval_of_int8_checkpoint(int8_checkpoint, capsys):
    assert main(["eval", str(int8_checkpoint), "--data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "int8 mobilenet_v2" in out
    top1 = float(out.split("top-1 accuracy ")[1].split("%")[0])
    assert top1 > 94.0


def test_bench_times_compressed_checkpoints_beside_float(int8_checkpoint, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", str(int8_checkpoint), str(FIXTURE), "--batch", "1", "--resolution", "32",
            "--repeat", "2", "--no-peers", "--json", str(out)]
    assert main(args) == 0
    results = json.loads(out.read_text())["results"]
    int8, fp32 = results
    assert [r["engine"] for r in int8["rows"]] == ["npmobilenet int8", "npmobilenet fused fp32"]
    assert int8["macs"] == fp32["macs"] == 1_196_592
    assert all(r["ms"] > 0 for result in results for r in result["rows"])
    assert main(["bench", "no-such-model"]) == 2


def test_predict_with_int8_weights(int8_checkpoint, tmp_path, capsys):
    pil = pytest.importorskip("PIL.Image")
    import numpy as np

    image = tmp_path / "digit.png"
    pixels = np.zeros((40, 40, 3), np.uint8)
    pixels[8:32, 18:22] = 255
    pil.fromarray(pixels).save(image)
    assert main(["predict", str(image), "--weights", str(int8_checkpoint), "--resize", "36", "--crop", "32",
                 "--topk", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    probabilities = [entry["probability"] for entry in result["results"][0]["top"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6
