"""`npmobilenet train` and `npmobilenet eval` on the digits, a tiny image folder and a tiny CIFAR-10."""
import numpy as np
import pytest

from npmobilenet.cli import main

TINY = ["--arch", "mobilenet_v2", "--width", "0.25", "--batch-size", "64", "--progress", "plain", "--threads", "1"]


def test_train_resume_and_eval_on_the_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = str(tmp_path / "digits.npz")
    assert main(["train", "--data", "digits", "--epochs", "1", "--out", out, *TINY]) == 0
    text = capsys.readouterr().out
    assert "1438 training, 359 validation images at 32x32, 10 classes" in text
    assert "epoch 1/1  train loss" in text and f"saved {out} after epoch 1" in text
    assert main(["train", "--data", "digits", "--epochs", "2", "--out", out, "--resume", out, *TINY]) == 0
    text = capsys.readouterr().out
    assert "epoch 2/2" in text and "epoch 1/" not in text  # continued, not restarted
    from npmobilenet.io.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out)
    assert ckpt.epoch == 2 and len(ckpt.meta["history"]) == 2 and ckpt.optimizer_state["kind"] == "AdamW"
    assert main(["eval", out, "--data", "digits"]) == 0
    text = capsys.readouterr().out
    assert "359 images" in text and "top-1 accuracy" in text and "top-5 accuracy" in text
    assert "true \\ predicted" in text
    top1 = float(text.split("top-1 accuracy ")[1].split("%")[0])
    assert abs(top1 - 100 * ckpt.meta["history"][-1]["val_acc"]) < 0.006  # eval repeats train's validation (printed to 0.01%)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_in_the_train_command_is_reported(tmp_path, capsys):
    pytest.importorskip("sklearn")
    status = main(["train", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "x.npz"),
                   "--optimizer", "sgd", "--lr", "1e30", "--schedule", "constant", *TINY])
    assert status == 1
    err = capsys.readouterr().err
    assert "loss is" in err and "at epoch 1, batch" in err and "none written yet" in err
    assert not (tmp_path / "x.npz").exists()


def test_train_and_eval_an_image_folder(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "eel"]):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(10):
            a = np.clip(rng.normal(60 + 60 * c, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / "imgs" / name / f"{i}.png")
    out = str(tmp_path / "f.npz")
    assert main(["train", "--data", str(tmp_path / "imgs"), "--resolution", "32", "--epochs", "1",
                 "--val-fraction", "0.2", "--out", out, *TINY[:-4], "--batch-size", "8", "--progress", "none"]) == 0
    assert "24 training, 6 validation images at 32x32, 3 classes" in capsys.readouterr().out
    assert main(["eval", out, "--data", str(tmp_path / "imgs")]) == 0
    text = capsys.readouterr().out
    assert "6 images" in text and " cat " in text


def test_train_on_cifar10_binary_batches(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1.bin", 20), ("test_batch.bin", 10)):
        records = rng.integers(0, 256, (n, 3073)).astype(np.uint8)
        records[:, 0] = np.arange(n) % 10
        records.tofile(tmp_path / name)
    out = str(tmp_path / "c.npz")
    assert main(["train", "--data", f"cifar10:{tmp_path}", "--epochs", "1", "--out", out, "--arch", "mobilenet_v3_small",
                 "--width", "0.25", "--batch-size", "10", "--progress", "none", "--threads", "1"]) == 0
    assert "20 training, 10 validation images at 32x32, 10 classes" in capsys.readouterr().out
    assert main(["eval", out, "--data", f"cifar10:{tmp_path}"]) == 0
    assert "airplane" in capsys.readouterr().out
