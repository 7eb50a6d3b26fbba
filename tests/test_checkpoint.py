"""Checkpoints: round trip, atomic writes under failure, and clear errors for bad files.

A small toy model (batch norm -> flatten -> dropout -> linear, built from the project's layers)
keeps these fast; the round trip on real MobileNets is at the end.
"""
import json
import os

import numpy as np
import pytest

from npmobilenet.layers import BatchNorm, Dropout, Layer, Linear, Sequential
from npmobilenet.io.checkpoint import FORMAT, load, load_checkpoint, save
from npmobilenet.training.optim import SGD, AdamW


class Flatten(Layer):
    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)


class ToyNet(Sequential):
    """x: (N, H, W, C) -> logits (N, num_classes); has decayed and exempt parameters, buffers, dropout."""

    def __init__(self, shape=(4, 4, 3), num_classes=3, seed=0, dropout=0.1):
        rng = np.random.default_rng(seed)
        h, w, c = shape
        super().__init__([BatchNorm(c), Flatten(), Dropout(dropout, np.random.default_rng([seed, 1])),
                          Linear(h * w * c, num_classes, rng=rng, init_std=0.1)])
        self.config = {"arch": "toy", "shape": list(shape), "num_classes": num_classes}


def toy_batch(n=8, shape=(4, 4, 3), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def trained_toy(steps=3):
    model = ToyNet()
    opt = AdamW(model.named_parameters(), lr=0.01)
    x, y = toy_batch()
    for _ in range(steps):
        logits = model(x)
        d = np.exp(logits - logits.max(1, keepdims=True))
        d /= d.sum(1, keepdims=True)
        d[np.arange(len(y)), y] -= 1
        model.backward(d / len(y))
        opt.step()
    return model, opt


def test_round_trip_is_bitwise(tmp_path):
    model, opt = trained_toy()
    path = tmp_path / "toy.npz"
    save(model, path, opt, epoch=3, seed=5, note="hello")
    fresh = ToyNet(seed=99)
    ckpt = load_checkpoint(path, model=fresh)
    assert ckpt.model is fresh and not fresh.training  # loaded in eval mode
    assert ckpt.epoch == 3 and ckpt.meta["seed"] == 5 and ckpt.meta["note"] == "hello"
    assert ckpt.config == model.config
    for (name, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(fresh.state_dict().items())):
        assert np.array_equal(a, b), name
    x, _ = toy_batch(seed=1)
    model.eval()
    assert np.array_equal(model(x), fresh(x))
    opt2 = AdamW(fresh.named_parameters(), lr=0.5)
    opt2.load_state_dict(ckpt.optimizer_state)
    assert opt2.steps == 3 and opt2.lr == 0.01
    for slot in opt.state:
        for name in opt.state[slot]:
            assert np.array_equal(opt.state[slot][name], opt2.state[slot][name])
    # dropout's generator continues where it was
    dropout, dropout2 = model[2], fresh[2]
    assert dropout.rng.random() == dropout2.rng.random()


def test_file_holds_plain_arrays_and_json_config(tmp_path):
    model, _ = trained_toy(1)
    path = tmp_path / "toy.npz"
    save(model, path)
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["__format__"]) == FORMAT and int(npz["__version__"]) == 1
        assert json.loads(npz["__config__"].tobytes()) == model.config
        assert "model/0.running_mean" in npz.files and "model/3.weight" in npz.files
        assert not any(k.startswith("optimizer/") for k in npz.files)
    assert load_checkpoint(path, model=ToyNet()).optimizer_state is None


def test_atomic_write_survives_a_failure_mid_save(tmp_path, monkeypatch):
    model, opt = trained_toy()
    path = tmp_path / "ckpt.npz"
    save(model, path, opt, epoch=1)
    before = path.read_bytes()

    # fail after two arrays have been written into the new file
    real_write_array = np.lib.format.write_array
    calls = {"n": 0}

    def failing_write_array(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("disk full (simulated)")
        return real_write_array(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write_array)
    model[3].weight.data += 1.0
    with pytest.raises(OSError, match="simulated"):
        save(model, path, opt, epoch=2)
    monkeypatch.undo()
    assert calls["n"] == 3
    assert path.read_bytes() == before  # the previous checkpoint is untouched
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # and no temporary file is left behind
    assert load_checkpoint(path, model=ToyNet()).epoch == 1


def test_truncated_file_gives_a_clear_error(tmp_path):
    model, opt = trained_toy()
    path = tmp_path / "ckpt.npz"
    save(model, path, opt, epoch=1)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"ckpt\.npz is truncated or corrupted"):
            load_checkpoint(path, model=ToyNet())


def test_corrupted_bytes_give_a_clear_error(tmp_path):
    model, _ = trained_toy()
    path = tmp_path / "ckpt.npz"
    save(model, path)
    data = bytearray(path.read_bytes())
    # flip bytes inside the largest array (the linear weight): the zip CRC no longer matches
    weight = model[3].weight.data.tobytes()
    at = bytes(data).find(weight[:16])
    assert at > 0
    data[at + 8: at + 12] = bytes(b ^ 0xFF for b in data[at + 8: at + 12])
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"truncated or corrupted.*(CRC|crc)"):
        load(path, model=ToyNet())
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load(path, model=ToyNet())


def test_wrong_files_give_clear_errors(tmp_path):
    model, _ = trained_toy()
    plain = tmp_path / "plain.npz"
    np.savez(plain, weight=np.ones(3))
    with pytest.raises(ValueError, match="not an npmobilenet checkpoint"):
        load(plain)
    path = tmp_path / "ckpt.npz"
    save(model, path)
    with pytest.raises(ValueError, match="holds config .* but the given model has"):
        load(path, model=ToyNet(num_classes=4))
    # arrays that do not match the config: the error lists them
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["model/3.weight"] = np.ones((5, 5), np.float32)
    del arrays["model/0.running_var"]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"(?s)does not match its config.*missing keys: 0\.running_var.*3\.weight: model expects \(48, 3\)"):
        load(path, model=ToyNet())
    arrays["__version__"] = np.array(99)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="format version 99"):
        load(path, model=ToyNet())
    # an unknown architecture in the config is named
    save(model, path)
    with pytest.raises(ValueError, match="cannot build a model from its config"):
        load(path)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")


def test_object_arrays_are_never_unpickled(tmp_path):
    model, _ = trained_toy(1)
    path = tmp_path / "ckpt.npz"
    save(model, path)
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["model/3.bias"] = np.array([object()], dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="pickled data, which is never loaded"):
        load(path, model=ToyNet())


def test_sgd_state_saved_and_restored(tmp_path):
    model = ToyNet()
    opt = SGD(model.named_parameters(), lr=0.1, nesterov=True)
    opt.state["momentum"]["3.weight"][...] = 0.25
    path = tmp_path / "sgd.npz"
    save(model, path, opt, epoch=0)
    state = load_checkpoint(path, model=ToyNet()).optimizer_state
    assert state["kind"] == "SGD" and state["steps"] == 0
    assert np.all(state["momentum/3.weight"] == 0.25)
