"""The segmentation and detection demos end to end at a tiny size (one short epoch): they train,
score the held-out split against their baselines, and write the picture."""
import numpy as np
import pytest

from npmobilenet.training import demo_tasks

TINY = dict(train_images=16, test_images=8, epochs=1, batch_size=8)


def test_segmentation_demo(tmp_path):
    pytest.importorskip("PIL")
    lines = []
    result = demo_tasks.run_task("segmentation", dict(TINY, resolution=64), picture=tmp_path / "seg.png", log=lines.append)
    assert 0 <= result["miou"] <= 1 and 0 < result["baseline_miou"] < 0.3   # background's IoU / 4 classes
    assert set(result["per_class"]) == set(demo_tasks.CLASSES)
    assert any(line.startswith("test mIoU") for line in lines)
    from PIL import Image
    picture = np.asarray(Image.open(tmp_path / "seg.png"))
    assert picture.shape == (3 * 64, 8 * 64, 3)


def test_detection_demo(tmp_path):
    pytest.importorskip("PIL")
    lines = []
    result = demo_tasks.run_task("detection", dict(TINY, resolution=96), picture=tmp_path / "det.png", log=lines.append)
    assert 0 <= result["map50"] <= 1 and 0 <= result["baseline_map50"] < 0.2
    assert any(line.startswith("test mAP@0.5") for line in lines)
    from PIL import Image
    assert np.asarray(Image.open(tmp_path / "det.png")).shape == (2 * 96, 8 * 2 * 96, 3)


def test_unknown_task():
    with pytest.raises(ValueError, match="task must be one of segmentation, detection"):
        demo_tasks.run_task("classification")
