"""Datasets, readers, the batch loader and augmentation, on tiny arrays and files written here."""
import os
import pickle

import numpy as np
import pytest

from npmobilenet.training import augment
from npmobilenet.training.data import (
    ArrayDataset, BatchLoader, ImageFolder, load_cifar10, read_cifar10_python, restricted_load, stratified_split,
)


def images(n=6, h=5, w=4, c=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, c)).astype(dtype)


# -- augmentation ---------------------------------------------------------------------------------
def test_flip_is_an_exact_mirror():
    x = images()
    out = augment.horizontal_flip(x, np.random.default_rng(0), p=1.0)
    assert np.array_equal(out, x[:, :, ::-1, :]) and out.dtype == np.uint8
    assert np.array_equal(augment.horizontal_flip(x, np.random.default_rng(0), p=0.0), x)
    half = augment.horizontal_flip(x, np.random.default_rng(3), p=0.5)
    for i in range(len(x)):  # each image is either itself or its mirror
        assert np.array_equal(half[i], x[i]) or np.array_equal(half[i], x[i, :, ::-1])


def test_random_crop_with_padding_is_a_window_of_the_padded_image():
    x = images(n=8, h=6, w=6)
    pad = 2
    out = augment.random_crop(x, 6, pad, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = set()
    for i in range(len(x)):
        found = [(t, l) for t in range(2 * pad + 1) for l in range(2 * pad + 1)
                 if np.array_equal(out[i], padded[i, t:t + 6, l:l + 6])]
        assert found, f"crop {i} is not a 6x6 window of the padded image"
        offsets.add(found[0])
    assert len(offsets) > 1  # the offsets do vary
    assert np.array_equal(augment.random_crop(x, 6, 0, np.random.default_rng(0)), x)  # no padding: identity


def test_random_resized_crop_boxes_stay_inside():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = augment.random_resized_crop_box(20, 30, rng, scale=(0.08, 1.0))
        assert 0 <= top and top + h <= 20 and 0 <= left and left + w <= 30 and h >= 1 and w >= 1
    # a scale the image cannot satisfy falls back to a centred crop with the ratio clamped
    assert augment.random_resized_crop_box(10, 40, rng, scale=(5.0, 6.0), ratio=(0.75, 4 / 3)) == (0, 13, 10, 13)
    out = augment.random_resized_crop(images(n=3, h=12, w=12), 8, rng)
    assert out.shape == (3, 8, 8, 3) and out.dtype == np.uint8


def test_resize_matches_pillow_when_upsampling():
    Image = pytest.importorskip("PIL.Image")
    a = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    pil = np.asarray(Image.fromarray(a, mode="F").resize((32, 32), Image.BILINEAR))
    ours = augment.resize(a[None, :, :, None], 32)[0, :, :, 0]
    assert np.abs(pil - ours).max() < 1e-5


def test_resize_properties():
    m = augment.interpolation_matrix(8, 32)
    assert np.allclose(m.sum(axis=1), 1.0)  # a weighted average: constants stay constant
    x = np.full((1, 4, 4, 2), 7.0, np.float32)
    assert np.allclose(augment.resize(x, (9, 5)), 7.0)
    # nearest, 2x up: every pixel becomes a 2x2 block
    x = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)
    assert np.array_equal(augment.resize(x, 4, "nearest")[0, :, :, 0], np.kron(x[0, :, :, 0], np.ones((2, 2))))
    # bilinear, 2x up with half-pixel centres: 0.75/0.25 blends between neighbours
    row = augment.resize(np.array([0.0, 4.0], np.float32).reshape(1, 1, 2, 1), (1, 4))[0, 0, :, 0]
    assert np.allclose(row, [0.0, 1.0, 3.0, 4.0])
    assert augment.resize(images(), (10, 8)).dtype == np.uint8


def test_normalize_per_channel():
    x = images(n=4, h=3, w=3, c=3)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    out = augment.normalize(x, mean, std)
    assert out.dtype == np.float32
    for c in range(3):
        assert np.allclose(out[..., c], (x[..., c] / 255.0 - mean[c]) / std[c], atol=1e-6)
    m, s = augment.channel_stats(out)
    z = augment.normalize(out, m, s)
    assert np.allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-5) and np.allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-4)
    with pytest.raises(ValueError, match="std must be > 0"):
        augment.normalize(x, mean, [1, 0, 1])


def test_compose_and_preprocessing():
    x = images(n=2, h=4, w=4)
    pipeline = augment.Compose([augment.RandomCrop(4, 1), augment.RandomHorizontalFlip(), augment.ToFloat()])
    out = pipeline(x, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == (2, 4, 4, 3) and out.max() <= 1.0
    pre = augment.preprocessing(8, [0.5] * 3, [0.5] * 3)
    assert pre(x).shape == (2, 8, 8, 3)


# -- datasets and loader ---------------------------------------------------------------------------
def test_array_dataset_and_loader_are_seeded():
    data = ArrayDataset(images(n=10), np.arange(10) % 3)
    assert data.num_classes == 3 and len(data) == 10
    loader = BatchLoader(data, 4, shuffle=True, seed=7)
    assert len(loader) == 3
    epoch0 = list(loader.batches(0))
    again = list(BatchLoader(data, 4, shuffle=True, seed=7).batches(0))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(epoch0, again))
    assert epoch0[0][0].dtype == np.float32 and epoch0[0][0].max() <= 1.0
    assert [len(y) for _, y in epoch0] == [4, 4, 2]
    seen = np.concatenate([y for _, y in epoch0])
    assert sorted(seen.tolist()) == sorted(data.labels.tolist())  # a permutation of the whole set
    # another epoch, another order (drawn from default_rng([seed, epoch]))
    assert not np.array_equal(np.concatenate([x for x, _ in loader.batches(1)]), np.concatenate([x for x, _ in epoch0]))
    # iterating the loader walks through epochs 0, 1, ...
    assert np.array_equal(next(iter(loader))[0], epoch0[0][0])
    assert len(BatchLoader(data, 4, shuffle=True, drop_last=True)) == 2


def test_stratified_split():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 100
    assert np.bincount(labels[test]).tolist() == [2, 4, 6, 8]
    again = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(again[1], test)


def test_image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    written = {}
    for cls in ("zebra", "ant"):  # classes come back sorted: ant = 0, zebra = 1
        (tmp_path / cls).mkdir()
        for i in range(2):
            a = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
            written[(cls, i)] = a
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    data = ImageFolder(tmp_path)
    assert data.classes == ["ant", "zebra"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(data.images[0], written[("ant", 0)])
    assert np.array_equal(data.images[3], written[("zebra", 1)])
    assert ImageFolder(tmp_path, size=8).images.shape == (4, 8, 8, 3)
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "ant" / "odd.png")
    with pytest.raises(ValueError, match="pass size="):
        ImageFolder(tmp_path)


# -- CIFAR-10 ---------------------------------------------------------------------------------------
def cifar_records(n, seed):
    rng = np.random.default_rng(seed)
    nhwc = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    # on disk: label byte, then the red plane, green plane, blue plane, each 32 rows of 32
    rows = nhwc.transpose(0, 3, 1, 2).reshape(n, 3072)
    return nhwc, labels, rows


def test_cifar10_binary(tmp_path):
    parts = [cifar_records(3, 1), cifar_records(2, 2)]
    for i, (_, labels, rows) in enumerate(parts, start=1):
        np.concatenate([labels[:, None], rows], axis=1).tofile(tmp_path / f"data_batch_{i}.bin")
    nhwc, labels, rows = cifar_records(4, 3)
    np.concatenate([labels[:, None], rows], axis=1).tofile(tmp_path / "test_batch.bin")
    train = load_cifar10(tmp_path, "train")
    assert train.images.shape == (5, 32, 32, 3) and train.classes[0] == "airplane"
    assert np.array_equal(train.images, np.concatenate([parts[0][0], parts[1][0]]))
    assert train.labels.tolist() == np.concatenate([parts[0][1], parts[1][1]]).tolist()
    test = load_cifar10(tmp_path, "test")
    assert np.array_equal(test.images, nhwc) and test.labels.tolist() == labels.tolist()
    with open(tmp_path / "test_batch.bin", "ab") as f:
        f.write(b"\x01\x02")
    with pytest.raises(ValueError, match="not a whole number of 3073-byte"):
        load_cifar10(tmp_path, "test")


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_python_batches(tmp_path, protocol):
    nhwc, labels, rows = cifar_records(3, 4)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": labels.tolist(), b"data": rows,
             b"filenames": [b"a.png", b"b.png", b"c.png"]}
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with open(d / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    test = load_cifar10(tmp_path, "test")
    assert np.array_equal(test.images, nhwc) and test.labels.tolist() == labels.tolist()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": _Exploit(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load the global (posix|nt|os)\.system"):
        restricted_load(path)
    with pytest.raises(ValueError, match="refusing"):
        read_cifar10_python(path)
    # object arrays are refused even though numpy's own constructors are allowed
    with open(path, "wb") as f:
        pickle.dump({b"data": np.array([None, 1], dtype=object)}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="object dtype"):
        restricted_load(path)
