"""`npmobilenet predict` trusts its checkpoint: a digits model (trained at 32x32 on [0, 1] pixels, no
ImageNet statistics) predicted from PNG files of the held-out digits reaches the accuracy `npmobilenet
eval` reports on the same split, because predict uses the stored resolution and normalisation."""
import csv
import json
import os
import re

import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("sklearn")
from PIL import Image  # noqa: E402

from npmobilenet.cli import main  # noqa: E402
from npmobilenet.io.predict import open_predictor  # noqa: E402
from npmobilenet.training.data import load_digits  # noqa: E402

CHECKPOINT = os.path.join(os.path.dirname(__file__), "fixtures", "compression", "digits_v2_w035.npz")


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    """The held-out digits (`eval --data digits`'s split) as 8-bit RGB PNGs, DIR/<label>/<i>.png."""
    root = tmp_path_factory.mktemp("digits")
    _, test = load_digits(32, test_fraction=0.2, seed=0)
    for i, (image, label) in enumerate(zip(test.images, test.labels)):
        os.makedirs(root / str(label), exist_ok=True)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(root / str(label) / f"{i:03d}.png")
    return root, len(test)


def _eval_top1(capsys):
    assert main(["eval", CHECKPOINT, "--data", "digits"]) == 0
    out = capsys.readouterr().out
    return float(re.search(r"top-1 accuracy ([\d.]+)%", out).group(1))


def test_predict_reaches_eval_accuracy_from_png_files(digit_pngs, tmp_path, capsys):
    root, count = digit_pngs
    predictor = open_predictor(CHECKPOINT)
    p = predictor.preprocess
    assert (p.resize, p.crop, p.mean, p.std) == (32, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))   # as stored
    eval_top1 = _eval_top1(capsys)
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(root), "--weights", CHECKPOINT, "--topk", "1", "--csv", str(out), "--threads", "1"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == count
    correct = sum(int(r["index"]) == int(os.path.basename(os.path.dirname(r["path"]))) for r in rows)
    predict_top1 = 100 * correct / count
    print(f"eval: {eval_top1:.2f}%, predict from PNG files: {predict_top1:.2f}% ({correct}/{count})")
    # the PNGs round pixels to 8 bits: at most one image of the 360 may change its answer
    assert abs(predict_top1 - eval_top1) <= 100 / count + 1e-9
    assert predict_top1 > 90


def test_flags_override_and_contradictions_are_refused(digit_pngs, capsys):
    root, _ = digit_pngs
    image = str(root / "3" / sorted(os.listdir(root / "3"))[0])
    assert main(["predict", image, "--weights", CHECKPOINT, "--json", "--resize", "40", "--crop", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["preprocess"]["resize"] == 40 and report["preprocess"]["crop"] == 32
    assert report["preprocess"]["mean"] == [0.0, 0.0, 0.0]                       # the rest still the checkpoint's
    assert main(["predict", image, "--weights", CHECKPOINT, "--arch", "mobilenet_v3_small"]) != 0
    assert "holds mobilenet_v2 weights, not mobilenet_v3_small" in capsys.readouterr().err
    assert main(["predict", image, "--weights", CHECKPOINT, "--width", "1.0"]) != 0
    assert "holds a width-0.35 mobilenet_v2, not width 1" in capsys.readouterr().err


def test_dask_engine_flags_without_the_engine_are_refused(digit_pngs, tmp_path, capsys):
    pytest.importorskip("dask")
    root, _ = digit_pngs
    image = str(root / "3" / sorted(os.listdir(root / "3"))[0])
    for extra in (["--out", str(tmp_path / "r.parquet")], ["--workers", "2"], ["--resume"]):
        assert main(["predict", image, "--weights", CHECKPOINT, *extra]) == 2
        err = capsys.readouterr().err
        assert "belong(s) to --engine dask" in err and err.count("\n") == 1, err
    assert not (tmp_path / "r.parquet").exists()
