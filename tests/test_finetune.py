"""Fine-tuning: `reset_classifier`, a frozen backbone (linear probe), and `train --init`."""
import os

import numpy as np
import pytest

import npmobilenet
from npmobilenet import ops
from npmobilenet.cli import main
from npmobilenet.training.loop import train
from npmobilenet.training.optim import AdamW

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TV_V2 = os.path.join(FIXTURES, "tv_mobilenet_v2_w025.pth")  # torchvision's layout, 1000 classes


def _tiny_set(n=16, size=32, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.standard_normal((n, size, size, 3)).astype(np.float32) + labels[:, None, None, None]
    return images, labels


def _last_layer_prefix(model):
    return f"classifier.{len(model.classifier) - 1}."


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v4_conv_small"])
def test_reset_classifier_keeps_everything_else(arch, tmp_path):
    model = npmobilenet.build(arch, width=0.25, num_classes=1000, seed=1)
    before = model.state_dict()
    model.reset_classifier(7, seed=5)
    after = model.state_dict()
    last = _last_layer_prefix(model)
    assert after[last + "weight"].shape[1] == 7 and after[last + "bias"].shape == (7,)
    assert set(after) == set(before)
    for key in before:
        if not key.startswith(last):
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert model.num_classes == 7 and model.config["num_classes"] == 7
    assert model(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 7)
    # seeded, initialised as build() does (N(0, 0.01^2), bias 0)
    again = npmobilenet.build(arch, width=0.25, seed=1).reset_classifier(7, seed=5)
    np.testing.assert_array_equal(again.state_dict()[last + "weight"], after[last + "weight"])
    assert 0.005 < after[last + "weight"].std() < 0.02 and not after[last + "bias"].any()
    # the config follows: saved and reloaded with 7 classes
    path = str(tmp_path / "reset.npz")
    npmobilenet.save(model, path)
    loaded = npmobilenet.load(path)
    assert loaded.num_classes == 7
    np.testing.assert_array_equal(loaded.state_dict()[last + "weight"], after[last + "weight"])
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(0)


def test_fine_tuning_trains_every_layer_with_the_new_classifier():
    model = npmobilenet.build("mobilenet_v2", width=0.25, seed=0).reset_classifier(3)
    before = model.state_dict()
    train(model, _tiny_set(), None, 1, AdamW(model.named_trainable_parameters(), lr=1e-2), batch_size=8,
          progress="none")
    after = model.state_dict()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert {k for k, _ in model.named_parameters()} <= changed          # every parameter updated
    assert "blocks.0.conv_dw.bn.running_mean" in changed                 # batch statistics tracked


def test_frozen_backbone_is_bit_identical_and_gets_no_gradient(monkeypatch):
    model = npmobilenet.build("mobilenet_v3_small", width=0.25, seed=0).reset_classifier(3).freeze_backbone()
    trainable = [name for name, _ in model.named_trainable_parameters()]
    assert trainable == [_last_layer_prefix(model) + "weight", _last_layer_prefix(model) + "bias"]
    calls = []
    for op in ("conv2d_backward", "depthwise_conv2d_backward", "pointwise_conv2d_backward"):
        original = getattr(ops, op)
        monkeypatch.setattr(ops, op, lambda *a, _op=op, _f=original, **k: calls.append(_op) or _f(*a, **k))
    before = model.state_dict()
    history = train(model, _tiny_set(), None, 2, AdamW(model.named_trainable_parameters(), lr=1e-2),
                    batch_size=8, progress="none")
    after = model.state_dict()
    last = _last_layer_prefix(model)
    for key in before:
        if key.startswith(last):
            assert not np.array_equal(before[key], after[key]), key     # the classifier learned
        else:
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)  # weights and running statistics
    assert calls == []                                                  # no convolution's backward ran
    assert all(not p.grad.any() for name, p in model.named_parameters() if not name.startswith(last))
    assert history[-1]["train_loss"] < history[0]["train_loss"] + 1.0
    # training mode keeps the frozen layers in eval mode; unfreezing restores them
    model.train()
    assert model.classifier[len(model.classifier) - 1].training and not model.blocks[0].conv_dw.bn.training
    model.freeze_backbone(False).train()
    assert model.blocks[0].conv_dw.bn.training
    assert len(model.named_trainable_parameters()) == len(model.parameters())


def test_train_command_fine_tunes_a_torchvision_file(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = str(tmp_path / "probe.npz")
    args = ["train", "--data", "digits", "--init", TV_V2, "--classes", "10", "--epochs", "1", "--batch-size", "64",
            "--progress", "none", "--threads", "1", "--out", out]
    assert main(args + ["--freeze-backbone"]) == 0
    text = capsys.readouterr().out
    assert f"from {TV_V2}, new classifier" in text and "trained (backbone frozen)" in text
    init = npmobilenet.from_weights(TV_V2).state_dict()
    probe = npmobilenet.load(out)
    assert probe.num_classes == 10 and probe.config["arch"] == "mobilenet_v2"
    state = probe.state_dict()
    last = _last_layer_prefix(probe)
    for key, value in state.items():
        if not key.startswith(last):
            np.testing.assert_array_equal(value, init[key], err_msg=key)
    # without freezing every layer moves
    tuned = str(tmp_path / "tuned.npz")
    assert main(args[:-1] + [tuned]) == 0
    state = npmobilenet.load(tuned).state_dict()
    assert not np.array_equal(state["stem.conv.weight"], init["stem.conv.weight"])
    # from an npmobilenet checkpoint, whose class count differs
    assert main(["train", "--data", "digits", "--init", out, "--epochs", "1", "--batch-size", "64", "--progress",
                 "none", "--threads", "1", "--out", str(tmp_path / "again.npz")]) == 0


@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--out", "/missing/dir/x.npz"], "does not exist"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--freeze-backbone"], "--freeze-backbone needs --init"),
    (["--classes", "3"], "--classes applies with --init"),
    (["--init", TV_V2, "--out", TV_V2], "destroy the input"),
    (["--lr", "-1"], "--lr must be > 0"),
])
def test_train_command_refuses_bad_arguments_before_any_work(extra, words, tmp_path, capsys, monkeypatch):
    import npmobilenet.training.data as data

    def no_work(*args, **kwargs):
        raise AssertionError("the data were read before the arguments were checked")

    monkeypatch.setattr(data, "datasets_from_spec", no_work)
    args = ["train", "--data", "digits", "--out", str(tmp_path / "x.npz"), "--progress", "none"]
    assert main(args + extra) != 0
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_train_command_refuses_weights_that_contradict_the_flags(tmp_path, capsys):
    pytest.importorskip("sklearn")
    base = ["train", "--data", "digits", "--init", TV_V2, "--out", str(tmp_path / "x.npz"), "--progress", "none"]
    assert main(base + ["--classes", "3"]) != 0
    assert "does not match the data, which has 10 classes" in capsys.readouterr().err
    assert main(base + ["--arch", "mobilenet_v3_small"]) != 0
    assert "holds mobilenet_v2 weights, not mobilenet_v3_small" in capsys.readouterr().err
    assert main(base[:3] + ["--init", str(tmp_path / "none.pth"), "--out", str(tmp_path / "x.npz")]) != 0
    assert "none.pth: no such file" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
