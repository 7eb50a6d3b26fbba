"""Datasets held in memory as NHWC arrays, readers for images on disk, and a seeded batch loader.

- `ArrayDataset(images, labels)`: images `(N, H, W, C)` uint8 or float, integer labels `(N,)`.
- `ImageFolder(root)`: `root/<class>/*.png|jpg`, classes sorted by name (Pillow, optional extra).
- `load_cifar10(root, split)`: the CIFAR-10 binary batches (`data_batch_*.bin`) or Python
  batches (`data_batch_*`, read with a restricted unpickler that builds only dicts, lists,
  strings, numbers and plain numeric NumPy arrays; any other global is refused).
- `load_digits(resolution)`: scikit-learn's 1,797 handwritten 8x8 digits, upsampled, split.
- `BatchLoader(dataset, batch_size, shuffle, seed, transform)`: `(x, y)` batches. The order and
  the augmentation of epoch `e` come from `numpy.random.default_rng([seed, e])`, so any epoch is
  reproducible on its own: that is what makes resuming from a checkpoint exact.
"""
import codecs
import importlib
import os
import pickle
import warnings
from pathlib import Path

import numpy as np

from npmobilenet.extras import require
from npmobilenet.training import augment


class ArrayDataset:
    """Images `(N, H, W, C)` (uint8 or float) and integer labels `(N,)`, in memory.

    `(N, H, W)` images get a channel axis. `classes` names the labels (default "0", "1", ...).
    Indexing with an int, slice or index array returns `(images[i], labels[i])`.
    """

    def __init__(self, images, labels, classes=None):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C) or (N, H, W), got shape {images.shape}")
        if images.dtype != np.uint8 and images.dtype.kind != "f":
            raise TypeError(f"images must be uint8 or float, got {images.dtype}")
        if labels.dtype.kind not in "iu" or labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must be integers of shape ({images.shape[0]},), got {labels.dtype} {labels.shape}"
            )
        if labels.size and labels.min() < 0:
            raise ValueError(f"labels must be >= 0, got {labels.min()}")
        self.images = images
        self.labels = labels.astype(np.int64)
        if classes is None:
            classes = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
        self.classes = list(classes)
        if labels.size and labels.max() >= len(self.classes):
            raise ValueError(f"label {labels.max()} has no class name ({len(self.classes)} classes)")

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def image_shape(self):
        return self.images.shape[1:]

    def subset(self, indices):
        return ArrayDataset(self.images[indices], self.labels[indices], self.classes)

    def __repr__(self):
        return f"{type(self).__name__}({len(self)} images {self.image_shape} {self.images.dtype}, {self.num_classes} classes)"


def as_dataset(data):
    """An `ArrayDataset` from a dataset or an `(images, labels)` pair."""
    if isinstance(data, ArrayDataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return ArrayDataset(*data)
    raise TypeError(f"data must be an ArrayDataset or an (images, labels) pair, got {type(data).__name__}")


def stratified_split(labels, test_fraction, seed=0):
    """`(train_indices, test_indices)` holding out `test_fraction` of every class.

    Each class contributes `round(count * test_fraction)` examples to the test side, chosen by a
    generator seeded with `seed`; both index arrays come back sorted.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[: int(round(len(members) * test_fraction))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(labels.shape[0]), test)
    return train, test


# -- image folders ------------------------------------------------------------------------------
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _image_files(directory, extensions):
    return sorted(f for f in directory.iterdir() if f.suffix.lower() in extensions and f.is_file())


class ImageFolder(ArrayDataset):
    """Every image under `root/<class name>/`, loaded into memory as uint8 RGB `(N, H, W, 3)`.

    Classes are the sub-directory names sorted, labels their indices; files are read in sorted
    order. A class folder without images is left out, with a warning; fewer than two classes is
    an error (there is nothing to tell apart). Images are read and converted to 8-bit RGB as
    `predict` reads them (`npmobilenet.io.images.load_image`: 16-bit scaled, sizes checked before
    decoding). Images must share one size unless `size` is given (then each is resized bilinearly).
    """

    def __init__(self, root, size=None, extensions=IMAGE_EXTENSIONS):
        require("PIL.Image", "reading an image folder")
        from npmobilenet.io.images import load_image

        root = Path(os.path.expanduser(os.fspath(root)))
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not folders:
            raise ValueError(f"{root} has no class sub-directories (expected root/<class>/*.png)")
        files_of = {name: _image_files(root / name, extensions) for name in folders}
        empty = [name for name in folders if not files_of[name]]
        if empty:
            warnings.warn(f"{root}: class folder(s) without {'/'.join(extensions)} images left out: {', '.join(empty)}",
                          UserWarning, stacklevel=2)
        classes = [name for name in folders if files_of[name]]
        if len(classes) == 1:
            raise ValueError(f"{root} has images of one class only ({classes[0]}); a classifier needs at least two "
                             "class folders with images")
        images, labels = [], []
        for label, name in enumerate(classes):
            for f in files_of[name]:
                image, _ = load_image(f)
                array = np.asarray(image, dtype=np.uint8)
                if size is not None:
                    array = augment.resize(array[None], size)[0]
                elif images and array.shape != images[0].shape:
                    raise ValueError(
                        f"{f} is {array.shape[1]}x{array.shape[0]} but {images[0].shape[1]}x{images[0].shape[0]} "
                        "came first: pass size= to resize every image"
                    )
                images.append(array)
                labels.append(label)
        if not images:
            raise ValueError(f"no {'/'.join(extensions)} images under {root}/<class>/")
        super().__init__(np.stack(images), np.array(labels, dtype=np.int64), classes)
        self.root = root


# -- CIFAR-10 ------------------------------------------------------------------------------------
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_CIFAR_RECORD = 1 + 32 * 32 * 3  # label byte, then 1024 red, 1024 green, 1024 blue bytes (row-major)


def _cifar_dir(root):
    root = Path(os.path.expanduser(os.fspath(root)))
    for candidate in (root, root / "cifar-10-batches-bin", root / "cifar-10-batches-py"):
        if candidate.is_dir() and (any(candidate.glob("data_batch_*")) or any(candidate.glob("test_batch*"))):
            return candidate
    raise FileNotFoundError(
        f"no CIFAR-10 batches under {root} (expected data_batch_*.bin / test_batch.bin, or the python "
        "data_batch_* / test_batch files, in it or in cifar-10-batches-bin/ or cifar-10-batches-py/)"
    )


def _chw_rows_to_nhwc(rows):
    """CIFAR's `(N, 3072)` rows (channel planes, then rows) -> `(N, 32, 32, 3)` uint8."""
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def read_cifar10_binary(path):
    """One binary batch file -> `(images (N, 32, 32, 3) uint8, labels (N,) int64)`."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of {_CIFAR_RECORD}-byte CIFAR-10 records "
            "(truncated or not a CIFAR-10 binary batch?)"
        )
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: label {labels.max()} is out of range for CIFAR-10 (is this CIFAR-100?)")
    return _chw_rows_to_nhwc(records[:, 1:]), labels


def _numpy_private(module_names, attr):
    for name in module_names:
        try:
            return getattr(importlib.import_module(name), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {attr}")


def _allowed_pickle_globals():
    """The only callables a CIFAR-10 python batch may reference, each guarded against misuse."""
    reconstruct = _numpy_private(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")
    frombuffer = _numpy_private(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")

    def safe_dtype(*args, **kwargs):
        dtype = np.dtype(*args, **kwargs)
        if dtype.hasobject:
            raise pickle.UnpicklingError("refusing an object dtype in a CIFAR-10 batch")
        return dtype

    def safe_reconstruct(subtype, shape, dtype):
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError(f"refusing to reconstruct {subtype!r}: only numpy.ndarray is allowed")
        return reconstruct(subtype, shape, safe_dtype(dtype))

    def safe_frombuffer(buf, dtype, shape, order):
        return frombuffer(buf, safe_dtype(dtype), shape, order)

    def safe_encode(text, encoding="utf-8"):
        # Python 3 writes bytes at pickle protocol 2 as _codecs.encode(str, "latin1")
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError("refusing _codecs.encode other than str -> latin1 bytes")
        return codecs.encode(text, encoding)

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): safe_dtype,
        ("_codecs", "encode"): safe_encode,
        ("builtins", "bytearray"): bytearray,
        ("__builtin__", "bytearray"): bytearray,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = safe_reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = safe_frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings, bytes, numbers and plain numeric NumPy arrays only.

    Every global a pickle names goes through `find_class`; this one resolves nothing but the few
    NumPy array constructors (which refuse object dtypes and ndarray subclasses) and refuses the
    rest, so loading a hostile file cannot call `os.system` or any other function.
    """

    def __init__(self, file):
        super().__init__(file, encoding="bytes")
        self._allowed = _allowed_pickle_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load the global {module}.{name}: a CIFAR-10 batch holds only arrays, "
                "lists, strings and numbers"
            ) from None


def restricted_load(path):
    """Read a pickle file with `RestrictedUnpickler` (dict keys may be bytes, as Python 2 wrote them)."""
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except pickle.UnpicklingError:
            raise
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def _key(d, name):
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    raise ValueError(f"CIFAR-10 batch has no {name!r} entry (keys: {sorted(map(str, d))})")


def read_cifar10_python(path):
    """One python batch file -> `(images (N, 32, 32, 3) uint8, labels (N,) int64)`."""
    try:
        batch = restricted_load(path)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: a CIFAR-10 python batch is a dict, got {type(batch).__name__}")
    data = np.asarray(_key(batch, "data"))
    labels = np.asarray(_key(batch, "labels"), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: expected data uint8 (N, 3072) and N labels, got data {data.dtype} {data.shape}, "
            f"labels {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9")
    return _chw_rows_to_nhwc(data), labels


def load_cifar10(root, split="train"):
    """CIFAR-10 from `root` as an `ArrayDataset` of uint8 `(N, 32, 32, 3)` images.

    `split` is "train" (every `data_batch_*` present) or "test" (`test_batch`). Binary (`.bin`)
    batches are preferred when both formats are present.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = _cifar_dir(root)
    stem = "data_batch_*" if split == "train" else "test_batch*"
    binary = sorted(directory.glob(stem + ".bin"))
    python = sorted(f for f in directory.glob(stem) if f.suffix == "" and f.is_file())
    if binary:
        parts = [read_cifar10_binary(f) for f in binary]
    elif python:
        parts = [read_cifar10_python(f) for f in python]
    else:
        raise FileNotFoundError(f"no CIFAR-10 {split} batches ({stem}) in {directory}")
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset(images, labels, CIFAR10_CLASSES)


# -- scikit-learn's digits ----------------------------------------------------------------------
def load_digits(resolution=32, test_fraction=0.2, seed=0):
    """scikit-learn's handwritten digits as `(train, test)` ArrayDatasets.

    1,797 real 8x8 scans (17 grey levels, 0-16) of the digits 0-9: the test set of UCI's
    "optdigits", written by 13 people. Pixels are scaled to [0, 1], upsampled bilinearly to
    `resolution` x `resolution` and repeated over three channels (the models take RGB);
    `test_fraction` of every class is held out with `seed`.
    Images come back float32 `(N, resolution, resolution, 3)`.
    """
    datasets = require("sklearn.datasets", "the digits dataset")
    bunch = datasets.load_digits()
    images = (bunch.images.astype(np.float32) / np.float32(16.0))[..., None]  # (1797, 8, 8, 1)
    if resolution != 8:
        images = augment.resize(images, resolution)
    images = np.ascontiguousarray(np.repeat(images, 3, axis=3))
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    classes = [str(c) for c in bunch.target_names]
    return ArrayDataset(images[train_idx], labels[train_idx], classes), ArrayDataset(
        images[test_idx], labels[test_idx], classes
    )


# -- batching ----------------------------------------------------------------------------------
class BatchLoader:
    """`(x, y)` batches of a dataset: x float32 `(B, H, W, C)` after `transform`, y int64 `(B,)`.

    `batches(epoch)` draws the order (when `shuffle`) and the augmentation randomness of that
    epoch from `numpy.random.default_rng([seed, epoch])`. `transform(x, rng)` maps a raw batch
    (uint8 or float) to float; without one, uint8 is scaled to [0, 1]. `drop_last` drops a final
    short batch (batch norm on a handful of images is noisy). Iterating the loader itself runs
    epoch 0, 1, 2, ... on successive iterations.
    """

    def __init__(self, dataset, batch_size, shuffle=False, seed=0, transform=None, drop_last=False):
        self.dataset = as_dataset(dataset)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.transform = transform
        self.drop_last = bool(drop_last) and len(self.dataset) >= batch_size
        self._epoch = 0

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, epoch=0):
        rng = np.random.default_rng([self.seed, int(epoch)])
        n = len(self.dataset)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            x, y = self.dataset[index]
            x = self.transform(x, rng) if self.transform is not None else x
            if x.dtype == np.uint8:
                x = augment.to_float(x)
            yield np.ascontiguousarray(x, dtype=np.float32), y

    def __iter__(self):
        epoch, self._epoch = self._epoch, self._epoch + 1
        return self.batches(epoch)


def datasets_from_spec(spec, resolution=None, val_fraction=0.1, split_seed=0):
    """`(train, val)` datasets from a command-line `--data` value.

    - "digits": scikit-learn's digits at `resolution` (default 32), the stratified 20% test split
      as `val` (seed `split_seed`).
    - "cifar10:DIR": the training batches and the test batch (resized if `resolution` is not 32).
    - "DIR": an image folder. With `DIR/train/` and `DIR/val/` (or `DIR/test/`) those are used;
      otherwise `val_fraction` of every class of `DIR/<class>/` is held out (seed `split_seed`).
      Images are resized to `resolution` when given.
    `val` is None when there is nothing to validate on.
    """
    spec = str(spec)
    if val_fraction is None or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"the validation fraction must be in [0, 1), got {val_fraction!r}")
    if spec == "digits":
        return load_digits(resolution or 32, 0.2, split_seed)
    if spec.startswith("cifar10:"):
        root = spec[len("cifar10:"):]
        train = load_cifar10(root, "train")
        try:
            val = load_cifar10(root, "test")
        except FileNotFoundError:
            val = None
        if resolution and resolution != 32:
            train = ArrayDataset(augment.resize(train.images, resolution), train.labels, train.classes)
            val = val and ArrayDataset(augment.resize(val.images, resolution), val.labels, val.classes)
        return train, val
    root = Path(os.path.expanduser(spec))
    if not root.is_dir():
        raise FileNotFoundError(f"--data {spec!r} is neither 'digits', 'cifar10:DIR' nor a directory")
    if (root / "train").is_dir():
        train = ImageFolder(root / "train", size=resolution)
        for name in ("val", "test"):
            if (root / name).is_dir():
                val = ImageFolder(root / name, size=resolution)
                if val.classes != train.classes:
                    raise ValueError(f"{root / name} has classes {val.classes}, but {root / 'train'} has {train.classes}")
                return train, val
        return train, None
    everything = ImageFolder(root, size=resolution)
    if not val_fraction:
        return everything, None
    train_idx, val_idx = stratified_split(everything.labels, val_fraction, split_seed)
    if val_idx.size == 0:
        counts = np.bincount(everything.labels, minlength=everything.num_classes)
        raise ValueError(f"holding out {val_fraction:g} of each class of {root} leaves no validation images (the "
                         f"classes have {counts.min()} to {counts.max()} images); raise the validation fraction "
                         f"(--val-fraction), add images, or give {root}/train/ and {root}/val/")
    return everything.subset(train_idx), everything.subset(val_idx)
