"""`npmobilenet predict` and its preprocessing, checked against independent computations:
torchvision's own transforms (saved by tests/fixtures/make_fixtures.py) and a from-scratch NumPy
re-derivation of Pillow's antialiased bilinear resize, on a real photograph shipped by scikit-learn."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import npmobilenet  # noqa: E402
from npmobilenet.cli import main  # noqa: E402
from npmobilenet.io.images import (  # noqa: E402
    IMAGENET_MEAN, IMAGENET_STD, Preprocess, load_batch, load_image, preprocess_image,
)
from npmobilenet.io.predict import Predictor, imagenet_classes, iter_image_paths, open_predictor, softmax, top_k  # noqa: E402
from npmobilenet.io import checkpoint  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


# -- an independent resize: Pillow's algorithm re-derived in NumPy ----------------------------------
def _bilinear_weights(in_size, out_size):
    """Pillow's antialiased triangle filter (Resample.c): support widens with the scale when shrinking;
    coefficients in 22-bit fixed point."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale
    rows = []
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        x = (np.arange(lo, hi) - center + 0.5) / filter_scale
        k = np.clip(1.0 - np.abs(x), 0.0, None)
        k /= k.sum()
        fixed = np.where(k < 0, np.trunc(k * (1 << 22) - 0.5), np.trunc(k * (1 << 22) + 0.5)).astype(np.int64)
        rows.append((lo, fixed))
    return rows


def _resample_axis(pixels, out_size, axis):
    pixels = np.moveaxis(pixels, axis, 0).astype(np.int64)
    out = np.empty((out_size,) + pixels.shape[1:], dtype=np.uint8)
    for i, (lo, k) in enumerate(_bilinear_weights(pixels.shape[0], out_size)):
        acc = np.tensordot(k, pixels[lo:lo + len(k)], axes=(0, 0)) + (1 << 21)
        out[i] = np.clip(acc >> 22, 0, 255)
    return np.moveaxis(out, 0, axis)


def numpy_preprocess(pixels, resize, crop):
    """Shorter side to `resize` (horizontal pass, then vertical, as Pillow), centre crop, normalise."""
    h, w, _ = pixels.shape
    new_w, new_h = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    out = pixels
    if new_w != w:
        out = _resample_axis(out, new_w, axis=1)
    if new_h != h:
        out = _resample_axis(out, new_h, axis=0)
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    out = out[top:top + crop, left:left + crop]
    return out, (out / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


def china_jpg():
    sklearn = pytest.importorskip("sklearn")
    path = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", "china.jpg")
    if not os.path.exists(path):
        pytest.skip("scikit-learn's sample image is not installed")
    return path


def test_preprocessing_matches_torchvision_transforms():
    with np.load(os.path.join(FIXTURES, "preprocess_expected.npz"), allow_pickle=False) as npz:
        expected = {k: npz[k] for k in npz.files}
    for name in ("landscape", "portrait"):
        resize, crop = (int(v) for v in expected[f"{name}/config"])
        config = Preprocess(resize=resize, crop=crop)
        image, note = load_image(os.path.join(FIXTURES, f"preprocess_{name}.png"))
        assert note is None
        x = preprocess_image(image, config)
        assert x.shape == (crop, crop, 3) and x.dtype == np.float32
        # torchvision's Resize/CenterCrop/ToTensor output, stored as the exact uint8 pixels
        pixels = np.round((x * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN)) * 255).astype(int)
        diff = np.abs(pixels - expected[f"{name}/pixels"])
        print(f"{name}: max pixel difference from torchvision {diff.max()}, fraction exact {(diff == 0).mean():.4f}")
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # exact with the fixture's Pillow
        # and torchvision's Normalize, in float32
        want = expected[f"{name}/normalised_nchw"][0].transpose(1, 2, 0)
        got = x if name == "portrait" else x[::16, ::16]
        np.testing.assert_allclose(got, want, atol=1.01 / 255 / 0.224 if diff.max() else 1e-6)


def test_preprocessing_of_a_real_photograph_matches_numpy_rederivation():
    path = china_jpg()
    image, note = load_image(path)
    assert note is None and image.size == (640, 427)
    x = preprocess_image(image)
    pixels, want = numpy_preprocess(np.asarray(image), 256, 224)
    ours = np.round((x * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN)) * 255).astype(int)
    diff = np.abs(ours - pixels.astype(int))
    print(f"china.jpg: max pixel difference from the NumPy re-derivation {diff.max()}, exact {(diff == 0).mean():.4f}")
    assert x.shape == (224, 224, 3)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    np.testing.assert_allclose(x, want, atol=1.01 / 255 / 0.224)


def test_preprocess_validates_its_recipe():
    with pytest.raises(ValueError, match="crop"):
        Preprocess(resize=100, crop=224)
    with pytest.raises(ValueError, match="std"):
        Preprocess(std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(interpolation="cubic-ish")


# -- conversions and bad input -----------------------------------------------------------------------
def _photo(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:90, 0:120]
    pixels = np.stack([x * 2, y * 2, (x + y)], axis=2) + rng.integers(0, 20, (90, 120, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def test_grayscale_rgba_palette_are_converted_and_said(tmp_path):
    rgb = _photo(tmp_path)
    gray = Image.fromarray(rgb).convert("L")
    gray.save(tmp_path / "gray.png")
    Image.fromarray(np.asarray(gray)).convert("RGB").save(tmp_path / "gray_as_rgb.png")
    rgba = np.concatenate([rgb, np.full((90, 120, 1), 77, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray((np.asarray(gray).astype(np.uint16) * 257)).save(tmp_path / "gray16.png")

    notes = []
    batch = load_batch([tmp_path / n for n in ("gray.png", "gray_as_rgb.png", "rgba.png", "rgb.png", "gray16.png")],
                       Preprocess(64, 56), notes)
    said = {os.path.basename(p): n for p, n in notes}
    assert "grayscale (L) image converted to RGB" in said["gray.png"]
    assert "alpha channel dropped" in said["rgba.png"]
    assert "16" in said["gray16.png"] and "scaled to 8 bits" in said["gray16.png"]
    assert "gray_as_rgb.png" not in said and "rgb.png" not in said
    np.testing.assert_array_equal(batch[0], batch[1])  # grayscale = its channel repeated
    np.testing.assert_array_equal(batch[2], batch[3])  # alpha dropped, colours kept
    np.testing.assert_array_equal(batch[4], batch[0])  # 16-bit scaled exactly (x * 257 / 257)
    assert "palette image converted to RGB" in load_image(tmp_path / "palette.png")[1]


def test_bad_images_are_clear_errors(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image at all")
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        load_image(tmp_path / "notes.jpg")
    Image.fromarray(_photo(tmp_path)).save(tmp_path / "whole.jpg", quality=90)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_image(tmp_path / "cut.jpg")
    Image.fromarray(_photo(tmp_path)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "absent.png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path)  # a directory


# -- the command ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory):
    """A 1000-class model (tiny width) saved as an npmobilenet checkpoint."""
    model = npmobilenet.build("mobilenet_v3_small", width=0.1, num_classes=1000, seed=3)
    path = str(tmp_path_factory.mktemp("weights") / "v3s_imagenet.npz")
    checkpoint.save(model, path)
    return path


def test_imagenet_class_names():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"


def test_predict_labels_with_imagenet_names_and_batches(imagenet_checkpoint, tmp_path):
    path = china_jpg()
    Image.fromarray(_photo(tmp_path)).save(tmp_path / "synthetic.png")
    images = [path, str(tmp_path / "synthetic.png")]
    model = checkpoint.load(imagenet_checkpoint)
    predictor = Predictor(model, Preprocess(), imagenet_classes())
    results = predictor.predict_files(images, topk=3)
    assert results == predictor.predict_files(images, topk=3, batch_size=1)  # batching changes nothing
    names = imagenet_classes()
    logits = model(load_batch(images))
    for result, row in zip(results, logits):
        assert result["error"] is None
        assert [t["index"] for t in result["top"]] == np.argsort(-row, kind="stable")[:3].tolist()
        assert [t["rank"] for t in result["top"]] == [1, 2, 3]
        assert all(t["label"] == names[t["index"]] for t in result["top"])
        probabilities = [t["probability"] for t in result["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
        np.testing.assert_allclose(probabilities[0], softmax(row[None])[0].max(), rtol=1e-6)


def test_open_predictor_fuses_and_agrees_with_the_model(imagenet_checkpoint, tmp_path):
    Image.fromarray(_photo(tmp_path)).save(tmp_path / "rgb.png")
    predictor = open_predictor(imagenet_checkpoint, threads=1)
    assert type(predictor.model).__name__ == "FusedMobileNet" and predictor.labels == imagenet_classes()
    assert predictor.preprocess == Preprocess()       # no stored resolution: ImageNet's
    assert predictor.warm_up() > 0
    x = load_batch([tmp_path / "rgb.png"])
    expected = softmax(checkpoint.load(imagenet_checkpoint)(x))
    np.testing.assert_allclose(predictor.predict_arrays(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="non-finite"):
        predictor.predict_arrays(np.full((1, 224, 224, 3), np.nan, np.float32))


def test_unreadable_images_give_error_rows_in_order(imagenet_checkpoint, tmp_path):
    Image.fromarray(_photo(tmp_path)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("not an image")
    Image.fromarray(_photo(tmp_path)).save(tmp_path / "c.png")
    predictor = open_predictor(imagenet_checkpoint, batch_size=2)
    rows = predictor.predict_files([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "missing.png",
                                    tmp_path / "c.png"], topk=2)
    assert [os.path.basename(r["path"]) for r in rows] == ["a.png", "b.png", "missing.png", "c.png"]
    assert rows[0]["error"] is None and rows[3]["error"] is None and rows[0]["top"] == rows[3]["top"]
    assert "not an image Pillow can read" in rows[1]["error"] and rows[1]["top"] == []
    assert "does not exist" in rows[2]["error"] and "\n" not in rows[2]["error"]


def test_iter_image_paths_walks_sorted_and_lazily(tmp_path):
    for name in ("b/z.png", "b/y.JPG", "a.jpeg", "b/notes.txt", ".hidden/x.png", "c/d/e.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    root = str(tmp_path)
    walked = [os.path.relpath(p, root) for p in iter_image_paths(root)]
    assert walked == ["a.jpeg", "b/y.JPG", "b/z.png", "c/d/e.webp"]
    assert [os.path.relpath(p, root) for p in iter_image_paths(os.path.join(root, "**", "*.png"))] == ["b/z.png"]
    assert [os.path.relpath(p, root) for p in iter_image_paths(os.path.join(root, "*", "*"))] == [
        "b/notes.txt", "b/y.JPG", "b/z.png", "c/d/e.webp"]          # a glob's files as matched, directories walked
    given = [os.path.join(root, "b", "notes.txt"), os.path.join(root, "absent.png")]
    assert list(iter_image_paths(given)) == given                   # files as given, even non-images
    with pytest.raises(ValueError, match="matches no file"):
        list(iter_image_paths(os.path.join(root, "*.gif")))
    lazy = iter_image_paths([root, os.path.join(root, "*.gif")])
    assert os.path.basename(next(lazy)) == "a.jpeg"                  # nothing listed ahead of need


def test_predict_command_text_and_json(imagenet_checkpoint, tmp_path, capsys):
    Image.fromarray(_photo(tmp_path)).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(_photo(tmp_path)).save(tmp_path / "rgb.png")
    assert main(["predict", str(tmp_path), "--weights", imagenet_checkpoint, "--topk", "2"]) == 0
    captured = capsys.readouterr()
    assert "gray.png: grayscale (L) image converted to RGB" in captured.err
    lines = captured.out.splitlines()
    assert lines[0].endswith("gray.png") and lines[3].endswith("rgb.png")
    ranked = [line for line in lines if line.startswith("   1  ") or line.startswith("   2  ")]
    assert len(ranked) == 4 and len({len(line) for line in ranked[:2]}) == 1   # aligned
    assert "mobilenet_v3_small width 0.1, 1000 classes: 2 image(s) in" in captured.out
    assert main(["predict", str(tmp_path / "rgb.png"), "--weights", imagenet_checkpoint, "--json", "--topk", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["arch"] == "mobilenet_v3_small" and len(report["results"][0]["top"]) == 4
    top = report["results"][0]["top"][0]
    assert top["rank"] == 1 and top["label"] == imagenet_classes()[top["index"]]
    assert report["time"]["images"] == 1 and report["time"]["predict_s"] > 0


def test_predict_command_csv(imagenet_checkpoint, tmp_path, capsys):
    import csv

    Image.fromarray(_photo(tmp_path)).save(tmp_path / "rgb.png")
    (tmp_path / "bad.png").write_text("hello")
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "rgb.png"), str(tmp_path / "bad.png"), "--weights", imagenet_checkpoint,
                 "--topk", "3", "--csv", str(out)]) == 1          # one image failed: said, and the exit status
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows[:3]] == ["1", "2", "3"] and rows[0]["path"].endswith("rgb.png")
    assert rows[0]["label"] == imagenet_classes()[int(rows[0]["index"])] and 0 < float(rows[0]["probability"]) <= 1
    assert rows[3]["path"].endswith("bad.png") and "not an image" in rows[3]["error"]
    assert "bad.png" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "rgb.png"), "--weights", imagenet_checkpoint, "--csv", imagenet_checkpoint]) != 0
    assert "would destroy the input" in capsys.readouterr().err


def test_predict_command_errors(imagenet_checkpoint, tmp_path, capsys):
    Image.fromarray(_photo(tmp_path)).save(tmp_path / "rgb.png")
    (tmp_path / "notes.png").write_text("hello")
    assert main(["predict", str(tmp_path / "notes.png"), "--weights", imagenet_checkpoint]) == 1   # an image failed: its row says why
    assert "notes.png is not an image Pillow can read" in capsys.readouterr().err
    # weights for another architecture or width: the mismatch is named
    fixture = os.path.join(FIXTURES, "tv_mobilenet_v3_small_w035.pth")
    assert main(["predict", str(tmp_path / "rgb.png"), "--weights", fixture, "--arch", "mobilenet_v2"]) != 0
    assert "holds mobilenet_v3_small weights (torchvision naming), not mobilenet_v2" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "rgb.png"), "--weights", fixture, "--width", "1.0"]) != 0
    assert "holds a width-0.35 mobilenet_v3_small, not width 1" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "rgb.png"), "--weights", imagenet_checkpoint, "--arch", "mobilenet_v2"]) != 0
    assert "holds mobilenet_v3_small weights" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "rgb.png"), "--weights", imagenet_checkpoint, "--width", "0.5"]) != 0
    assert "holds a width-0.1 mobilenet_v3_small, not width 0.5" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "rgb.png"), "--weights", imagenet_checkpoint, "--tf"]) != 0
    assert "--tf applies to timm" in capsys.readouterr().err
    # a 10-class model without labels prints class indices; wrong label count is refused
    assert main(["predict", str(tmp_path / "rgb.png"), "--weights", fixture, "--topk", "1"]) == 0
    assert "class " in capsys.readouterr().out
    (tmp_path / "labels.txt").write_text("a\nb\n")
    assert main(["predict", str(tmp_path / "rgb.png"), "--weights", fixture, "--labels", str(tmp_path / "labels.txt")]) != 0
    assert "2 labels given for a model with 10 classes" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "*.gif"), "--weights", fixture]) != 0
    assert "matches no file" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "rgb.png"), "--model", "mobilenet_v9.IMAGENET1K_V1"]) != 0
    assert "unknown weights name 'mobilenet_v9.IMAGENET1K_V1'" in capsys.readouterr().err


def test_top_k_and_softmax():
    p = softmax(np.array([[1.0, 3.0, 2.0, 3.0]], np.float32))
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    assert top_k(p, 3).tolist() == [[1, 3, 2]]
    assert top_k(p, 10).shape == (1, 4)
