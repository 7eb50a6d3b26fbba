"""The quantized checkpoint: bit-exact round trip, ~4x smaller than float, no pickle, versioned,
and the float/int8 mix-ups named."""
import json
import os

import numpy as np
import pytest

import npmobilenet
from npmobilenet.io.files import atomic_savez
from npmobilenet.compression import qmodel as qformat
from npmobilenet.io import checkpoint
from npmobilenet.compression.quantize import quantize
from npmobilenet.io.checkpoint import save


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    model = npmobilenet.build("mobilenet_v3_small", width=0.5, num_classes=10).eval()
    qmodel = quantize(model, images)
    d = tmp_path_factory.mktemp("ckpt")
    float_path, int8_path = str(d / "float.npz"), str(d / "int8.npz")
    save(model, float_path)
    qmodel.save(int8_path)
    return model, qmodel, images, float_path, int8_path


def test_round_trip_is_bit_exact(models):
    _, qmodel, images, _, int8_path = models
    loaded = qformat.load_quantized(int8_path)
    xq = qmodel.quantize_input(images)
    assert np.array_equal(loaded.run(xq), qmodel.run(xq))
    assert loaded.tensors == qmodel.tensors and loaded.info == qmodel.info and loaded.config == qmodel.config
    assert isinstance(checkpoint.load(int8_path), type(qmodel))


def test_int8_checkpoint_is_about_4x_smaller(models):
    _, _, _, float_path, int8_path = models
    ratio = os.path.getsize(float_path) / os.path.getsize(int8_path)
    assert 3.4 < ratio < 4.2, ratio


def test_file_is_plain_arrays_with_format_and_version(models):
    _, qmodel, _, _, int8_path = models
    with np.load(int8_path, allow_pickle=False) as npz:
        assert str(npz["__format__"]) == "npmobilenet.quantized"
        assert int(npz["__version__"]) == 1
        graph = json.loads(npz["__graph__"].tobytes().decode())
        assert npz["weight"].dtype == np.int8 and npz["bias"].dtype == np.int32
        assert npz["weight"].size == sum(op.weight.size for op in qmodel.ops if op.kind == "conv")
    assert len(graph["ops"]) == len(qmodel.ops)


def test_float_and_int8_mixups_are_named(models):
    _, _, _, float_path, int8_path = models
    with pytest.raises(ValueError, match="is a float npmobilenet checkpoint, not an int8"):
        qformat.load_quantized(float_path)
    with pytest.raises(ValueError, match="is an int8 quantized checkpoint, not a float one"):
        checkpoint.load_checkpoint(int8_path)
    assert qformat.is_quantized(int8_path) and not qformat.is_quantized(float_path)


def test_bad_files_are_named(models, tmp_path):
    _, qmodel, _, _, int8_path = models
    arrays = qformat.quantized_arrays(qmodel)

    newer = tmp_path / "newer.npz"
    np.savez(newer, **dict(arrays, __version__=np.array(99, np.int64)))
    with pytest.raises(ValueError, match="format version 99"):
        qformat.load_quantized(newer)

    broken = tmp_path / "broken.npz"
    np.savez(broken, **dict(arrays, weight=arrays["weight"][:-10]))
    with pytest.raises(ValueError, match="inconsistent.*outside"):
        qformat.load_quantized(broken)

    wrong_dtype = tmp_path / "dtype.npz"
    np.savez(wrong_dtype, **dict(arrays, weight=arrays["weight"].astype(np.float32)))
    with pytest.raises(ValueError, match="weight must be int8"):
        qformat.load_quantized(wrong_dtype)

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __format__=np.array(["npmobilenet.quantized", None], dtype=object))
    with pytest.raises(ValueError, match="pickled"):
        qformat.load_quantized(pickled)

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(open(int8_path, "rb").read()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        qformat.load_quantized(truncated)

    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a quantized npmobilenet checkpoint"):
        qformat.load_quantized(other)
    with pytest.raises(FileNotFoundError):
        qformat.load_quantized(tmp_path / "missing.npz")


def test_save_is_atomic(models, tmp_path):
    _, qmodel, _, _, _ = models
    path = tmp_path / "q.npz"
    qmodel.save(path)
    before = path.read_bytes()

    class Boom(Exception):
        pass

    bad = {"__format__": np.array("x")}

    def fail(*_args, **_kwargs):
        raise Boom

    original = np.savez
    try:
        np.savez = fail
        with pytest.raises(Boom):
            atomic_savez(path, bad)
    finally:
        np.savez = original
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.npz"]
