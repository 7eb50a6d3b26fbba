"""The training loop on a toy model: history, determinism, exact resume, NaN detection, progress.

The real MobileNets are trained in the last tests (overfitting a tiny batch, the digits).
"""
import numpy as np
import pytest

from npmobilenet.training import loop
from npmobilenet.io.checkpoint import load_checkpoint
from npmobilenet.training.data import ArrayDataset
from npmobilenet.training.loop import NonFiniteLossError, train
from npmobilenet.training.optim import SGD, AdamW
from npmobilenet.training.schedule import CosineLR

from test_checkpoint import ToyNet


def toy_data(n=48, seed=0):
    """Separable data: the class is the argmax of three fixed projections of the image."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4, 4, 3)).astype(np.float32)
    w = np.random.default_rng(123).standard_normal((48, 3))
    return ArrayDataset(x, (x.reshape(n, -1) @ w).argmax(axis=1))


def run(epochs, checkpoint=None, resume=None, seed=0):
    model = ToyNet(dropout=0.2)
    opt = AdamW(model.named_parameters(), lr=0.02, weight_decay=0.01)
    schedule = CosineLR.from_epochs(0.02, epochs=4, steps_per_epoch=6, warmup_epochs=1)
    history = train(model, toy_data(), toy_data(16, seed=1), epochs, opt, schedule, batch_size=8, seed=seed,
                    label_smoothing=0.1, checkpoint=checkpoint, resume=resume, progress="none")
    return model, history


def test_history_and_learning():
    model, history = run(4)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    for h in history:
        assert set(h) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_second"}
        assert h["seconds"] > 0 and 0 <= h["val_acc"] <= 1
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["lr"] < history[1]["lr"]  # the cosine decays


def test_same_seed_same_result():
    m1, h1 = run(2)
    m2, h2 = run(2)
    assert [h["train_loss"] for h in h1] == [h["train_loss"] for h in h2]
    for (name, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert np.array_equal(a, b), name
    _, h3 = run(2, seed=1)
    assert h3[0]["train_loss"] != h1[0]["train_loss"]


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full, full_history = run(4, checkpoint=tmp_path / "full.npz")
    part = tmp_path / "part.npz"
    run(2, checkpoint=part)
    assert load_checkpoint(part, model=ToyNet()).epoch == 2
    resumed, resumed_history = run(4, checkpoint=part, resume=part)
    assert len(resumed_history) == 4
    for a, b in zip(full_history, resumed_history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-7)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6, abs=1e-7)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)
    assert load_checkpoint(part, model=ToyNet()).epoch == 4


def test_nan_loss_names_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    calls = {"n": 0}
    real = loop.softmax_cross_entropy_forward

    def nan_at_step_9(logits, labels, smoothing):
        calls["n"] += 1
        loss, cache = real(logits, labels, smoothing)
        return (float("nan") if calls["n"] == 9 else loss), cache

    monkeypatch.setattr(loop, "softmax_cross_entropy_forward", nan_at_step_9)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, batch 3/6 \(step 9") as info:
        run(4, checkpoint=path)
    assert (info.value.epoch, info.value.batch) == (2, 3)
    assert "ckpt.npz (after epoch 1), left intact" in str(info.value)
    assert load_checkpoint(path, model=ToyNet()).epoch == 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_huge_learning_rate_is_caught(tmp_path):
    model = ToyNet(dropout=0.0)
    opt = SGD(model.named_parameters(), lr=1e30, momentum=0.9)
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf) at epoch \d+, batch \d+/6"):
        train(model, toy_data(), None, 5, opt, batch_size=8, progress="none")


def test_plain_progress_lines(capsys):
    model = ToyNet()
    train(model, toy_data(), toy_data(16, 1), 2, AdamW(model.named_parameters(), lr=0.01), batch_size=8,
          progress="plain")
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert out[0].startswith("epoch 1/2  train loss") and "val loss" in out[0] and "img/s" in out[0]
    assert "left" in out[0] and out[1].endswith("left 0:00")


def test_tqdm_progress_bar():
    pytest.importorskip("tqdm")
    import io

    stream = io.StringIO()
    display = loop.Progress("tqdm", stream=stream)
    display.start_epoch(1, 2, 3)
    for batch in range(1, 4):
        display.update(batch, 0.5, 0.75, 123.0, 65.0)
    # running stats with the time left (tqdm redraws at most every 0.1 s, so read the postfix)
    assert display._bar.postfix == "loss 0.5000 acc  75.0%    123 img/s left 1:05"
    display.end_epoch({"train_loss": 0.5, "train_acc": 0.75, "lr": 0.1, "images_per_second": 123, "seconds": 1.0}, 3.0)
    text = stream.getvalue()
    assert "epoch 1/2" in text and "3/3" in text
    assert "train loss 0.5000 acc  75.0%" in text and "left 0:03" in text


def test_bad_arguments():
    model = ToyNet()
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train(model, toy_data(), None, 0)
    with pytest.raises(TypeError, match="ArrayDataset or an"):
        train(model, [1, 2, 3], None, 1)


# -- the real models ----------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """Tiny tensors: one Numba thread is fastest and immune to a busy machine."""
    from npmobilenet.config import get_num_threads, set_num_threads

    previous = get_num_threads()
    set_num_threads(1)
    yield
    set_num_threads(previous)


@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_every_architecture_overfits_a_tiny_batch(arch, one_thread):
    import npmobilenet
    from npmobilenet.training.loss import softmax_cross_entropy

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 32, 3)).astype(np.float32)
    y = np.arange(8) % 4
    model = npmobilenet.build(arch, width=0.25, num_classes=4, seed=0, dropout=0.0)
    opt = AdamW(model.named_parameters(), lr=0.01, weight_decay=0.0)
    schedule = CosineLR(0.01, total_steps=30, warmup_steps=3)
    losses = []
    for step in range(30):
        opt.lr = schedule.lr_at(step)
        logits = model(x)
        loss, dlogits = softmax_cross_entropy(logits, y)
        model.backward(dlogits)
        opt.step()
        losses.append(loss)
    print(arch, "loss", losses[0], "->", losses[-1])
    assert losses[0] > 1.0  # starts near log(4)
    assert losses[-1] < 0.01  # memorised (batch statistics, as trained)
    assert np.array_equal(model(x).argmax(axis=1), y)


def test_training_loss_decreases_on_the_digits(one_thread):
    pytest.importorskip("sklearn")
    import npmobilenet
    from npmobilenet.training.data import load_digits

    train_set, _ = load_digits(32)
    subset = train_set.subset(np.arange(320))
    model = npmobilenet.build("mobilenet_v2", width=0.25, num_classes=10, seed=0)
    history = train(model, subset, None, 3, AdamW(model.named_parameters(), lr=0.005, weight_decay=0.0),
                    batch_size=32, seed=0, progress="none")
    losses = [h["train_loss"] for h in history]
    print("digits train loss per epoch (10 steps each):", losses)
    assert losses[2] < losses[0] - 0.3
    assert history[2]["train_acc"] > 0.2  # chance is 0.1


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_checkpoint_round_trip_of_a_real_model_is_bitwise(arch, tmp_path, one_thread):
    import npmobilenet
    from npmobilenet.io.checkpoint import load, save
    from npmobilenet.training.loss import softmax_cross_entropy

    model = npmobilenet.build(arch, width=0.25, num_classes=5, seed=3)
    opt = SGD(model.named_parameters(), lr=0.05, nesterov=True)
    x = np.random.default_rng(1).standard_normal((4, 32, 32, 3)).astype(np.float32)
    for _ in range(2):  # move the weights and the running statistics off their initial values
        _, d = softmax_cross_entropy(model(x), np.arange(4))
        model.backward(d)
        opt.step()
    save(model, tmp_path / "m.npz", opt, epoch=1)
    reloaded = load(tmp_path / "m.npz")  # rebuilt from the stored config by npmobilenet.build
    assert type(reloaded) is type(model) and reloaded.config == model.config and not reloaded.training
    model.eval()
    assert np.array_equal(model(x), reloaded(x))


def test_resume_of_a_real_model_matches_the_uninterrupted_run(tmp_path, one_thread):
    import npmobilenet

    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.random((96, 32, 32, 3)).astype(np.float32), np.arange(96) % 3)

    def run_v2(epochs, checkpoint, resume=None):
        model = npmobilenet.build("mobilenet_v2", width=0.25, num_classes=3, seed=0)  # dropout 0.2 in the head
        opt = SGD(model.named_parameters(), lr=0.05, nesterov=True, weight_decay=4e-5)
        schedule = CosineLR.from_epochs(0.05, epochs=2, steps_per_epoch=3, warmup_epochs=1)
        history = train(model, data, None, epochs, opt, schedule, batch_size=32, seed=3, checkpoint=checkpoint,
                        resume=resume, progress="none")
        return model, history

    full, full_history = run_v2(2, tmp_path / "full.npz")
    run_v2(1, tmp_path / "part.npz")
    resumed, resumed_history = run_v2(2, tmp_path / "part.npz", resume=tmp_path / "part.npz")
    assert [h["train_loss"] for h in resumed_history] == pytest.approx([h["train_loss"] for h in full_history], rel=1e-6)
    x = data.images[:4]
    full.eval()
    resumed.eval()
    np.testing.assert_allclose(full(x), resumed(x), rtol=1e-5, atol=1e-6)
