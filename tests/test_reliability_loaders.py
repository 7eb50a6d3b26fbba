"""Issue 16, the loaders: reading a file costs time and memory bounded by what it honestly declares.

Each test is one of the hostile or careless inputs the issue found: shared pickle references,
deep or self-containing pickles, stride-0 views, zip bombs, .npz headers and stored configs that
claim huge sizes, images whose header alone says they are too large, NaN weights, image folders
with empty or single classes, 16-bit images, empty validation splits, stale temporary files.
"""
import contextlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
import zlib

import numpy as np
import pytest

import npmobilenet
from npmobilenet.io import checkpoint
from npmobilenet.io.files import atomic_savez, read_arrays, remove_stale_temporaries
from npmobilenet.io.formats import read_safetensors
from npmobilenet.io.limits import BudgetExceededError
from npmobilenet.io.torch_zip import CheckpointFormatError, load_torch_file

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@contextlib.contextmanager
def time_limit(seconds):
    """Fail (instead of hanging) when the body runs longer than `seconds`."""
    def expired(signum, frame):
        raise TimeoutError(f"took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _torch_zip(pickle_bytes, records=None, compress=zipfile.ZIP_STORED):
    """A zip laid out as torch.save lays it out, around the given pickle."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", "little")
        for key, data in (records or {}).items():
            archive.writestr(zipfile.ZipInfo(f"archive/data/{key}"), data, compress_type=compress)
    return buffer.getvalue()


def _small(obj):
    """The opcodes that push `obj` (pickle.dumps without its PROTO header and STOP)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _tensor(size, stride, numel, offset=0):
    """The opcodes of one tensor as torch.save writes it (storage key '0', float32)."""
    return b"".join([
        b"ctorch._utils\n_rebuild_tensor_v2\n(",
        b"(" + _small("storage") + b"ctorch\nFloatStorage\n" + _small("0") + _small("cpu") + _small(numel) + b"tQ",
        _small(offset), _small(tuple(size)), _small(tuple(stride)),
        b"\x89ccollections\nOrderedDict\n)Rt",
        b"R",
    ])


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- .pth: the object graph ---------------------------------------------------------------------------
def test_shared_references_stay_a_dag(tmp_path):
    # 60 levels of x = [x, x]: 2^60 leaves unrolled, 60 lists shared
    x = []
    for _ in range(60):
        x = [x, x]
    data = _torch_zip(pickle.dumps({"x": x}, protocol=2))
    assert len(data) < 2000
    with time_limit(10):
        got = load_torch_file(_write(tmp_path, "dag.pth", data))["x"]
    depth = 0
    while got:
        assert got[0] is got[1]  # still shared
        got, depth = got[0], depth + 1
    assert depth == 60


def test_one_tensor_referenced_2_to_the_30_times_is_one_array(tmp_path):
    # the tensor pushed once and memoised (BINPUT 0), then 30 levels of [x, x] built from it
    body = b"\x80\x02" + _tensor((2, 2), (2, 1), 4) + b"q\x00"
    for level in range(30):
        body += b"h" + bytes([level]) + b"h" + bytes([level]) + b"\x86q" + bytes([level + 1])  # (x, x), memoised
    body += b"."
    path = _write(tmp_path, "many.pth", _torch_zip(body, {"0": np.arange(4, dtype="<f4").tobytes()}))
    with time_limit(10):
        got = load_torch_file(path)
    leaves = set()
    stack = [got]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            leaves.add(id(item))
        elif id(item) not in leaves:
            leaves.add(id(item))
            stack.extend({id(v): v for v in item}.values())
    arrays = [got]
    while isinstance(arrays[0], tuple):
        arrays = [arrays[0][0]]
    np.testing.assert_array_equal(arrays[0], np.arange(4, dtype=np.float32).reshape(2, 2))
    assert len(leaves) == 31   # 30 tuples and one array


def test_a_list_containing_itself_is_refused(tmp_path):
    x = []
    x.append(x)
    with pytest.raises(CheckpointFormatError, match="contains itself"):
        load_torch_file(_write(tmp_path, "loop.pth", _torch_zip(pickle.dumps({"x": x}, protocol=2))))


def test_deep_nesting_is_refused_without_recursion_error(tmp_path):
    depth = 200_000
    body = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."   # EMPTY_LIST x N, APPEND x N-1
    with pytest.raises(CheckpointFormatError, match="nests containers over"):
        load_torch_file(_write(tmp_path, "deep.pth", _torch_zip(body)))


# -- .pth: tensors and storages -----------------------------------------------------------------------
@pytest.mark.parametrize("size, stride", [((6000, 6000), (0, 0)), ((6000, 6000), (0, 1)), ((3, 2), (1, 1))])
def test_views_reading_storage_elements_twice_are_refused(tmp_path, size, stride):
    # one stored float declared as a 6000 x 6000 tensor (the was 60000 x 60000: 13.4 GiB)
    numel = 1 if stride[0] == 0 and stride[1] == 0 else 6000 if stride[0] == 0 else 4
    body = b"\x80\x02}" + _small("w") + _tensor(size, stride, numel) + b"s."
    path = _write(tmp_path, "stride0.pth", _torch_zip(body, {"0": b"\x00" * 4 * numel}))
    with pytest.raises(CheckpointFormatError, match="more than once"):
        load_torch_file(path)


def test_legitimate_views_still_load(tmp_path):
    # a transpose, a slice with a step, a broadcast dimension of size 1 with stride 0
    data = np.arange(12, dtype="<f4").tobytes()
    for size, stride, offset, want in [
        ((3, 4), (1, 3), 0, np.arange(12, dtype=np.float32).reshape(4, 3).T),
        ((3,), (4,), 1, np.array([1, 5, 9], dtype=np.float32)),
        ((1, 12), (0, 1), 0, np.arange(12, dtype=np.float32)[None]),
    ]:
        body = b"\x80\x02}" + _small("w") + _tensor(size, stride, 12, offset) + b"s."
        got = load_torch_file(_write(tmp_path, "view.pth", _torch_zip(body, {"0": data})))["w"]
        np.testing.assert_array_equal(got, want)


def test_storage_member_is_decompressed_only_to_its_declared_size(tmp_path):
    # the pickle declares 4 floats; the member inflates to 64 MiB of zeros (the issue's: 2.5 GiB)
    body = b"\x80\x02}" + _small("w") + _tensor((4,), (1,), 4) + b"s."
    path = _write(tmp_path, "bomb.pth", _torch_zip(body, {"0": b"\x00" * (64 * 2 ** 20)}, zipfile.ZIP_DEFLATED))
    assert path.stat().st_size < 2 ** 20
    tracemalloc.start()
    try:
        got = load_torch_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got["w"], np.zeros(4, np.float32))
    assert peak < 8 * 2 ** 20, f"peak {peak:,} bytes while reading a 16-byte tensor"


def test_declared_storages_beyond_the_byte_cap_are_refused_before_reading(tmp_path):
    body = b"\x80\x02}" + _small("w") + _tensor((1000,), (1,), 1000) + b"s."
    path = _write(tmp_path, "big.pth", _torch_zip(body, {"0": b"\x00" * 4000}))
    with pytest.raises(BudgetExceededError, match="over the 1,000-byte limit"):
        load_torch_file(path, max_bytes=1000)
    assert load_torch_file(path, max_bytes=4000)["w"].shape == (1000,)


# -- .npz -------------------------------------------------------------------------------------------------
def _npz_with_header(path, shape, data=b"\x00" * 64, dtype="<f4"):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("huge.npy", header.getvalue() + data)
    return path


def test_npz_header_claiming_36_tib_is_refused_before_allocating(tmp_path):
    path = _npz_with_header(tmp_path / "huge.npz", (10 ** 7, 10 ** 6))
    with pytest.raises(BudgetExceededError, match="huge.*40,000,000,000,000 bytes"):
        read_arrays(path)
    with pytest.raises(ValueError):
        npmobilenet.load(path)


def test_npz_header_that_its_zip_entry_does_not_hold_is_refused(tmp_path):
    path = _npz_with_header(tmp_path / "liar.npz", (1000, 1000))      # 4 MB declared, 64 bytes stored
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="truncated or corrupted.*declares"):
            read_arrays(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 ** 20


def _saved_model(tmp_path, name="m.npz", **meta):
    model = npmobilenet.build("mobilenet_v2", 0.35, num_classes=10)
    path = tmp_path / name
    checkpoint.save(model, path, epoch=3, **meta)
    return model, path


def _with_config(path, out, **changes):
    with np.load(path) as npz:
        arrays = dict(npz)
    config = json.loads(arrays["__config__"].tobytes())
    config.update(changes)
    arrays["__config__"] = np.frombuffer(json.dumps(config).encode(), np.uint8)
    np.savez(out, **arrays)
    return out


@pytest.mark.parametrize("changes, message", [
    (dict(num_classes=10 ** 9), "num_classes=1000000000"),
    (dict(width=200), "width=200"),
    (dict(width=3.0), "at least .* parameters, but the file stores"),
    (dict(expanded_channels=[60000] * 17), "at least .* parameters, but the file stores"),
    (dict(repeats=[1, 1, 2, 3, 4, 3, 10 ** 9]), "repeats="),
])
def test_stored_config_is_checked_before_the_model_is_built(tmp_path, changes, message, monkeypatch):
    _, path = _saved_model(tmp_path)
    bad = _with_config(path, tmp_path / "bad.npz", **changes)
    built = []
    import npmobilenet.compression.structure as structure

    monkeypatch.setattr(structure, "build", lambda config: built.append(config))
    with pytest.raises(ValueError, match=message):
        npmobilenet.load(bad)
    assert not built


# -- safetensors ------------------------------------------------------------------------------------------
def _safetensors(header, data):
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


def test_safetensors_tensors_sharing_bytes_are_refused(tmp_path):
    entry = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    path = _write(tmp_path, "alias.safetensors", _safetensors({"a": entry, "b": entry}, b"\x00" * 16))
    with pytest.raises(ValueError, match="share bytes"):
        read_safetensors(path)


def test_safetensors_shape_overflowing_int64_is_refused(tmp_path):
    # 2^32 x 2^32 elements: int64's product wraps to 0, which a 0-byte range would "fit"
    entry = {"dtype": "F32", "shape": [2 ** 32, 2 ** 32], "data_offsets": [0, 0]}
    path = _write(tmp_path, "wrap.safetensors", _safetensors({"a": entry}, b""))
    with pytest.raises(ValueError, match="does not fit its byte range"):
        read_safetensors(path)


def test_safetensors_beyond_the_byte_cap_is_refused(tmp_path):
    entry = {"dtype": "F32", "shape": [256], "data_offsets": [0, 1024]}
    path = _write(tmp_path, "big.safetensors", _safetensors({"a": entry}, b"\x00" * 1024))
    with pytest.raises(BudgetExceededError):
        read_safetensors(path, max_bytes=1000)
    assert read_safetensors(path)["a"].shape == (256,)


# -- non-finite weights -----------------------------------------------------------------------------------
def test_nan_weights_are_named_on_load(tmp_path):
    model, path = _saved_model(tmp_path)
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["model/classifier.1.weight"] = arrays["model/classifier.1.weight"].copy()
    arrays["model/classifier.1.weight"][0, 0] = np.nan
    arrays["model/blocks.2.conv_pwl.bn.running_var"] = np.full_like(arrays["model/blocks.2.conv_pwl.bn.running_var"], np.inf)
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.warns(RuntimeWarning, match=r"nan.npz: non-finite weights .* 2 array\(s\)") as record:
        npmobilenet.load(tmp_path / "nan.npz")
    message = str(record[0].message)
    assert "classifier.1.weight" in message and "blocks.2.conv_pwl.bn.running_var" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        npmobilenet.load(path)   # a finite file loads silently


# -- images -----------------------------------------------------------------------------------------------
def _png_with_size(path, width, height):
    """A valid 1x1 grayscale PNG whose IHDR claims width x height (the pixels are never decoded)."""
    Image = pytest.importorskip("PIL.Image")
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[ihdr + 17: ihdr + 21] = zlib.crc32(bytes(data[ihdr: ihdr + 17])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def test_degenerate_image_is_refused_from_its_header(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from npmobilenet.io.images import load_batch, load_image

    path = tmp_path / "line.png"
    Image.new("RGB", (50000, 1)).save(path)
    assert path.stat().st_size < 1000
    with time_limit(5):
        with pytest.raises(ValueError, match=r"line.png is 50000x1 pixels, one side over 64 times the other"):
            load_image(path)
        with pytest.raises(ValueError, match="one side over"):
            load_batch([path])


def test_decompression_bomb_is_a_value_error(tmp_path):
    pytest.importorskip("PIL.Image")
    from npmobilenet.io.images import load_image

    with pytest.raises(ValueError, match=r"bomb.png .*(too large|pixels)"):
        load_image(_png_with_size(tmp_path / "bomb.png", 20000, 20000))
    with pytest.raises(ValueError, match=r"9000x9000 = 81,000,000 pixels"):   # under Pillow's limit, over ours
        load_image(_png_with_size(tmp_path / "big.png", 9000, 9000))


# -- image folders and splits -----------------------------------------------------------------------------
def _folder(root, counts, size=(8, 8), mode="RGB", value=128):
    Image = pytest.importorskip("PIL.Image")
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new(mode, size, value).save(root / name / f"{i}.png")
    return root


def test_empty_class_folder_is_left_out_with_a_warning(tmp_path):
    from npmobilenet.training.data import ImageFolder

    root = _folder(tmp_path / "data", {"cat": 2, "dog": 2, "empty": 0})
    with pytest.warns(UserWarning, match="left out: empty"):
        folder = ImageFolder(root)
    assert folder.classes == ["cat", "dog"] and len(folder) == 4 and folder.num_classes == 2


def test_one_class_folder_is_refused(tmp_path):
    from npmobilenet.training.data import ImageFolder, datasets_from_spec

    root = _folder(tmp_path / "data", {"cat": 4})
    with pytest.raises(ValueError, match="one class only .*at least two"):
        ImageFolder(root)
    with pytest.raises(ValueError, match="one class only"):
        datasets_from_spec(str(root))


def test_16_bit_images_are_scaled_as_predict_scales_them(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from npmobilenet.io.images import load_image
    from npmobilenet.training.data import ImageFolder

    root = tmp_path / "data"
    for name, value in (("dark", 1000), ("bright", 60000)):
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), value, np.uint16)).save(root / name / "x.png")
    folder = ImageFolder(root)
    for label, name in enumerate(folder.classes):
        predicted = np.asarray(load_image(root / name / "x.png")[0])
        np.testing.assert_array_equal(folder.images[folder.labels == label][0], predicted)
    assert set(np.unique(folder.images)) == {round(1000 / 257), round(60000 / 257)}


def test_empty_validation_split_is_refused_before_loading_a_model(tmp_path):
    from npmobilenet.training.data import datasets_from_spec

    root = _folder(tmp_path / "data", {"a": 2, "b": 2})     # 10% of 2 images rounds to none
    with pytest.raises(ValueError, match="leaves no validation images"):
        datasets_from_spec(str(root), val_fraction=0.1)
    train, val = datasets_from_spec(str(root), val_fraction=0.5)
    assert len(train) == 2 and len(val) == 2


def test_cifar_path_expands_the_home_directory(tmp_path, monkeypatch):
    from npmobilenet.training.data import datasets_from_spec

    home = tmp_path / "home"
    (home / "cifar").mkdir(parents=True)
    records = np.zeros((3, 3073), np.uint8)
    records[:, 0] = [0, 1, 2]
    records.tofile(home / "cifar" / "data_batch_1.bin")
    monkeypatch.setenv("HOME", str(home))
    train, val = datasets_from_spec("cifar10:~/cifar")
    assert len(train) == 3 and val is None


# -- temporary files ----------------------------------------------------------------------------------------
def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_are_removed_at_the_next_save(tmp_path):
    path = tmp_path / "ckpt.npz"
    stale = tmp_path / f".ckpt.npz.npmobilenet-{_dead_pid()}-abc123.tmp"
    running = tmp_path / f".ckpt.npz.npmobilenet-{os.getpid()}-def456.tmp"
    other = tmp_path / ".ckpt.npz.someone-else.tmp"
    for f in (stale, running, other):
        f.write_bytes(b"partial")
    atomic_savez(path, {"a": np.arange(3)})
    assert not stale.exists() and running.exists() and other.exists()
    assert remove_stale_temporaries(path) == []


def test_a_save_killed_midway_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    path = tmp_path / "ckpt.npz"
    script = f"""
import os, signal, numpy as np
from npmobilenet.io.files import atomic_write
def write(f):
    f.write(b"half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write({str(path)!r}, write)
"""
    status = subprocess.run([sys.executable, "-c", script], capture_output=True).returncode
    assert status == -signal.SIGKILL
    left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(left) == 1 and not path.exists()
    atomic_savez(path, {"a": np.arange(3)})
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    np.testing.assert_array_equal(read_arrays(path)["a"], np.arange(3))


def test_a_tensor_as_a_dict_key_is_refused(tmp_path):
    body = b"\x80\x02}" + _tensor((4,), (1,), 4) + _small(1) + b"s."
    path = _write(tmp_path, "key.pth", _torch_zip(body, {"0": b"\x00" * 16}))
    with pytest.raises(CheckpointFormatError, match="tensor as a dict key"):
        load_torch_file(path)
