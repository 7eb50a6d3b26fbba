"""The restricted .pth reader: real torch.save files read exactly; malicious pickles never run."""
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from npmobilenet.io.torch_zip import (
    LEGACY_MAGIC_NUMBER, CheckpointFormatError, UnsafeCheckpointError, load_torch_file,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(FIXTURES, "torch_roundtrip_expected.npz"), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("filename", ["torch_roundtrip.pth", "torch_roundtrip_legacy.pth"])
def test_reads_torch_save_files_exactly(filename, expected):
    # Made by torch.save (zip format and the pre-1.6 legacy format) in tests/fixtures/make_fixtures.py.
    checkpoint = load_torch_file(os.path.join(FIXTURES, filename))
    assert checkpoint["epoch"] == 7 and checkpoint["arch"] == "roundtrip"
    state = checkpoint["state_dict"]
    assert set(state) == set(expected)
    for name, want in expected.items():
        got = state[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert got.flags.c_contiguous and got.flags.owndata, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    # views of one storage come back as independent arrays
    state["view_slice"][...] = -1
    np.testing.assert_array_equal(state["base"], expected["base"])
    nested = checkpoint["nested"]
    np.testing.assert_array_equal(nested[0], expected["int8"])
    assert nested[1] == (1, 2.5, "x")


def _torch_zip(pickle_bytes, records=None, prefix="archive"):
    """A zip laid out as torch.save lays it out, around the given pickle."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", pickle_bytes)
        archive.writestr(f"{prefix}/byteorder", "little")
        for key, data in (records or {}).items():
            archive.writestr(f"{prefix}/data/{key}", data)
        archive.writestr(f"{prefix}/version", "3\n")
    return buffer.getvalue()


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_refuses_os_system_payload_without_running_it(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _RunsCommand(f"touch {marker}")}, protocol=protocol)
    path = _write(tmp_path, "evil.pth", _torch_zip(payload))
    with pytest.raises(UnsafeCheckpointError, match=r"os.system|posix.system"):
        load_torch_file(path)
    assert not marker.exists()


def test_refuses_eval_and_names_it(tmp_path):
    path = _write(tmp_path, "evil.pth", _torch_zip(pickle.dumps(_CallsEval(), protocol=2)))
    with pytest.raises(UnsafeCheckpointError, match=r"(__builtin__|builtins)\.eval"):
        load_torch_file(path)


def test_refuses_hand_written_opcodes(tmp_path):
    marker = tmp_path / "pwned2"
    # GLOBAL 'os system' + MARK + string + TUPLE + REDUCE, written opcode by opcode (protocol 0)
    payload = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    with pytest.raises(UnsafeCheckpointError, match="os.system"):
        load_torch_file(_write(tmp_path, "evil.pth", _torch_zip(payload)))
    # INST opcode: builds os.system(...) without GLOBAL
    payload = b"(V" + f"touch {marker}".encode() + b"\nios\nsystem\n."
    with pytest.raises(UnsafeCheckpointError, match="os.system"):
        load_torch_file(_write(tmp_path, "evil2.pth", _torch_zip(payload)))
    # STACK_GLOBAL (protocol 4) of subprocess.Popen
    payload = b"\x80\x04\x8c\nsubprocess\x94\x8c\x05Popen\x94\x93\x94."
    with pytest.raises(UnsafeCheckpointError, match="subprocess.Popen"):
        load_torch_file(_write(tmp_path, "evil3.pth", _torch_zip(payload)))
    assert not marker.exists()


def test_refuses_lookalike_torch_globals(tmp_path):
    # only the rebuild functions are allowed, not anything else under torch
    for module, name in [("torch", "load"), ("torch._utils", "_rebuild_qtensor"), ("torch.nn", "Module"),
                         ("numpy", "frombuffer"), ("builtins", "getattr")]:
        payload = f"c{module}\n{name}\n.".encode()
        with pytest.raises(UnsafeCheckpointError, match=f"{module}.{name}"):
            load_torch_file(_write(tmp_path, "evil.pth", _torch_zip(payload)))


def test_refuses_extension_registry_lookup(tmp_path):
    import copyreg

    copyreg.add_extension("os", "system", 0x7F0001)
    try:
        payload = b"\x80\x02\x84\x01\x00\x7f\x00."  # EXT4 with code 0x7f0001
        with pytest.raises(UnsafeCheckpointError, match="os.system"):
            load_torch_file(_write(tmp_path, "evil.pth", _torch_zip(payload)))
    finally:
        copyreg.remove_extension("os", "system", 0x7F0001)


def test_refuses_malicious_legacy_file(tmp_path):
    marker = tmp_path / "pwned3"
    data = b"".join([
        pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=2),
    ])
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_torch_file(_write(tmp_path, "evil_legacy.pth", data))
    assert not marker.exists()


def _small(obj):
    """The opcodes that push `obj` (pickle.dumps without its PROTO header and STOP)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _tensor_pickle(size, stride, offset=0, numel=4, storage="FloatStorage"):
    """{'w': tensor} written opcode by opcode as torch.save writes it:
    GLOBAL _rebuild_tensor_v2, (BINPERSID ('storage', torch.<storage>, '0', 'cpu', numel),
    offset, size, stride, False, OrderedDict()) REDUCE."""
    return b"".join([
        b"\x80\x02}" + _small("w"),
        b"ctorch._utils\n_rebuild_tensor_v2\n(",
        b"(" + _small("storage") + b"ctorch\n" + storage.encode() + b"\n" + _small("0") + _small("cpu") + _small(numel) + b"tQ",
        _small(offset), _small(tuple(size)), _small(tuple(stride)),
        b"\x89ccollections\nOrderedDict\n)RtRs.",
    ])


def test_hand_made_tensor_pickle_reads(tmp_path):
    data = np.arange(4, dtype="<f4").tobytes()
    path = _write(tmp_path, "ok.pth", _torch_zip(_tensor_pickle((2, 2), (2, 1)), {"0": data}))
    np.testing.assert_array_equal(load_torch_file(path)["w"], np.arange(4, dtype=np.float32).reshape(2, 2))
    path = _write(tmp_path, "t.pth", _torch_zip(_tensor_pickle((2, 2), (1, 2)), {"0": data}))
    np.testing.assert_array_equal(load_torch_file(path)["w"], np.arange(4, dtype=np.float32).reshape(2, 2).T)


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    data = np.arange(4, dtype="<f4").tobytes()
    path = _write(tmp_path, "oob.pth", _torch_zip(_tensor_pickle((1000, 1000), (1000, 1)), {"0": data}))
    with pytest.raises(CheckpointFormatError, match="reaches element"):
        load_torch_file(path)
    path = _write(tmp_path, "neg.pth", _torch_zip(_tensor_pickle((2,), (-1,), offset=3), {"0": data}))
    with pytest.raises(CheckpointFormatError, match="stride"):
        load_torch_file(path)


def test_storage_record_shorter_than_declared_is_refused(tmp_path):
    path = _write(tmp_path, "short.pth", _torch_zip(_tensor_pickle((2, 2), (2, 1)), {"0": b"\x00" * 8}))
    with pytest.raises(CheckpointFormatError, match="truncated or corrupt"):
        load_torch_file(path)
    path = _write(tmp_path, "gone.pth", _torch_zip(_tensor_pickle((2, 2), (2, 1)), {}))
    with pytest.raises(CheckpointFormatError, match="missing"):
        load_torch_file(path)


def test_unknown_storage_type_is_refused(tmp_path):
    payload = _tensor_pickle((2,), (1,), storage="ComplexFloatStorage")
    with pytest.raises(UnsafeCheckpointError, match="torch.ComplexFloatStorage"):
        load_torch_file(_write(tmp_path, "c.pth", _torch_zip(payload, {"0": b"\x00" * 32})))


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.99])
def test_truncated_real_checkpoint_is_a_clear_error(tmp_path, keep):
    data = open(os.path.join(FIXTURES, "torch_roundtrip.pth"), "rb").read()
    path = _write(tmp_path, "cut.pth", data[: int(len(data) * keep)])
    with pytest.raises(CheckpointFormatError):
        load_torch_file(path)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9])
def test_truncated_legacy_checkpoint_is_a_clear_error(tmp_path, keep):
    data = open(os.path.join(FIXTURES, "torch_roundtrip_legacy.pth"), "rb").read()
    path = _write(tmp_path, "cut.pth", data[: int(len(data) * keep)])
    with pytest.raises(CheckpointFormatError):
        load_torch_file(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointFormatError, match="neither a zip nor"):
        load_torch_file(_write(tmp_path, "text.pth", b"hello, this is not a checkpoint"))
    with pytest.raises(CheckpointFormatError, match="data.pkl"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("readme.txt", "hi")
        load_torch_file(_write(tmp_path, "other.zip", buffer.getvalue()))
    with pytest.raises(CheckpointFormatError, match="TorchScript"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("m/data.pkl", pickle.dumps({}))
            archive.writestr("m/constants.pkl", pickle.dumps(()))
        load_torch_file(_write(tmp_path, "script.pt", buffer.getvalue()))


def test_training_arguments_namespace_reads_as_a_dict(tmp_path):
    # timm's CheckpointSaver stores its argparse.Namespace next to the state dict
    import argparse

    payload = pickle.dumps({"args": argparse.Namespace(model="mobilenetv3_large_100", lr=0.1), "epoch": 4}, protocol=2)
    got = load_torch_file(_write(tmp_path, "train.pth", _torch_zip(payload)))
    assert got == {"args": {"model": "mobilenetv3_large_100", "lr": 0.1}, "epoch": 4}
    # but a Namespace cannot smuggle anything: its fields go through the same restricted unpickler
    payload = pickle.dumps({"args": argparse.Namespace(hook=_RunsCommand("true"))}, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_torch_file(_write(tmp_path, "train2.pth", _torch_zip(payload)))
