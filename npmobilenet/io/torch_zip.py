"""Read PyTorch checkpoints (`.pth`/`.pt`) with NumPy only, and without ever executing code.

`torch.save` writes a pickle. Unpickling an arbitrary pickle runs arbitrary code: a pickle may name any
importable callable (`os.system`, `builtins.eval`) and call it. This reader therefore runs Python's
unpickler with `find_class` restricted to an allow-list of the few names a checkpoint of tensors
needs, each mapped to *our own* inert stand-in, never to the real object:

    torch._utils._rebuild_tensor_v2 / _rebuild_tensor   -> a record (storage, offset, size, stride)
    torch._utils._rebuild_parameter                     -> the record it wraps
    torch.FloatStorage, torch.HalfStorage, ...          -> a storage-type marker (a dtype)
    collections.OrderedDict                             -> OrderedDict
    _codecs.encode (protocol-2 bytes, latin-1 only)     -> str.encode("latin-1")
    argparse.Namespace (timm's training checkpoints)    -> a plain record, returned as a dict

Every other global raises `UnsafeCheckpointError` naming it. Every way a pickle can reach a callable
(GLOBAL, STACK_GLOBAL, INST, OBJ, EXT1/2/4) goes through `find_class`, and pickle has no opcode for
attribute access, so nothing outside the allow-list can be called.

Two layouts are read (both as written by torch.save):
- zip (torch >= 1.6, what torchvision publishes): `<dir>/data.pkl` is the pickle; each tensor storage
  is a raw little-endian record `<dir>/data/<key>`; `<dir>/byteorder` says the byte order.
- legacy (torch < 1.6, `_use_new_zipfile_serialization=False`): a stream of pickles (magic number,
  protocol version, system info, the object, the list of storage keys) followed by each storage as an
  int64 element count and its raw bytes, in key order.

Tensors come back as C-contiguous NumPy arrays in PyTorch's own layout (no transposes here; those live
in `keymaps.py`). bfloat16 becomes float32 exactly (NumPy has no bfloat16).
"""
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

# torch storage class name -> (NumPy dtype of the stored bytes, itemsize)
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # converted to float32 after reading
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

# The first pickle of a legacy file: protocol 2, LONG1 of 10 bytes, torch's MAGIC_NUMBER.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
LEGACY_PREFIX = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC_NUMBER.to_bytes(10, "little")


class UnsafeCheckpointError(ValueError):
    """The checkpoint's pickle names an object other than tensors and plain containers."""


class CheckpointFormatError(ValueError):
    """The file is not a readable PyTorch checkpoint (truncated, corrupt, or another format)."""


# -- inert stand-ins the restricted unpickler hands to the pickle ------------------------------------
class _Inert:
    """Base of our stand-ins: a pickle may not set state on them (BUILD) or call them."""

    __slots__ = ()

    def __setstate__(self, state):
        raise UnsafeCheckpointError(f"the pickle tries to set state on a {type(self).__name__}")


class StorageType(_Inert):
    """Marker for `torch.FloatStorage` etc.: only names a dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]

    def __repr__(self):
        return f"torch.{self.name}"


class Storage(_Inert):
    """One storage (a flat buffer of `numel` elements); `.array` is filled when its bytes are read."""

    __slots__ = ("storage_type", "key", "numel", "array")

    def __init__(self, storage_type, key, numel):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel
        self.array = None


class Namespace:
    """Stand-in for argparse.Namespace (timm saves its training arguments in checkpoints): it only
    accepts a dict of plain values as its state, and is read back as that dict."""

    __slots__ = ("fields",)

    def __init__(self, *args, **kwargs):
        if args or kwargs:
            raise UnsafeCheckpointError("argparse.Namespace built with arguments; refusing")
        self.fields = {}

    def __setstate__(self, state):
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise UnsafeCheckpointError("argparse.Namespace with a state that is not a dict of names")
        self.fields = dict(state)


class TensorRecord(_Inert):
    """What `torch._utils._rebuild_tensor_v2` would rebuild: a strided view of a storage."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def to_numpy(self):
        """The tensor as a C-contiguous array of its own (a copy, so views of one storage stay apart)."""
        flat = self.storage.array
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=flat.dtype)
        if not self.size:  # a 0-d tensor (as_strided cannot make one)
            return np.array(flat[self.offset], dtype=flat.dtype)
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:],
            shape=self.size,
            strides=tuple(st * itemsize for st in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view).copy()


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # Validate everything: these arguments come from the file, and as_strided trusts its input.
    if not isinstance(storage, Storage):
        raise UnsafeCheckpointError(f"tensor rebuild expects a storage, got {type(storage).__name__}")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise CheckpointFormatError(f"bad tensor storage offset {storage_offset!r}")
    if not isinstance(size, tuple) or not all(_is_int(s) and s >= 0 for s in size):
        raise CheckpointFormatError(f"bad tensor size {size!r}")
    if not isinstance(stride, tuple) or len(stride) != len(size) or not all(_is_int(s) and s >= 0 for s in stride):
        raise CheckpointFormatError(f"bad tensor stride {stride!r} for size {size!r}")
    if all(s > 0 for s in size):
        last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= storage.numel:
            raise CheckpointFormatError(
                f"tensor of size {size} (stride {stride}, offset {storage_offset}) reaches element {last} "
                f"of a storage with {storage.numel} elements"
            )
    return TensorRecord(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if backward_hooks is not None and not isinstance(backward_hooks, dict):
        raise UnsafeCheckpointError("tensor rebuild got backward hooks that are not an empty dict")
    if backward_hooks:
        raise UnsafeCheckpointError("the checkpoint carries tensor backward hooks (code); refusing")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, TensorRecord):
        raise UnsafeCheckpointError(f"parameter rebuild expects a tensor, got {type(data).__name__}")
    if backward_hooks:
        raise UnsafeCheckpointError("the checkpoint carries parameter backward hooks (code); refusing")
    return data


def _latin1_encode(text, encoding="latin1"):
    # Protocol-2 pickles store bytes as _codecs.encode(str, "latin1"); allow that and nothing else.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("_codecs", "encode"): _latin1_encode,
    ("argparse", "Namespace"): Namespace,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `ALLOWED_GLOBALS` and torch storage types; see the module doc."""

    def __init__(self, file, storages, legacy=False):
        super().__init__(file, encoding="utf-8")
        self._storages = storages  # key -> Storage, shared across the file
        self._legacy = legacy

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(
                f"refusing to load the global '{module}.{name}': a weights file may only hold tensors and "
                f"plain containers (this file would run code, or build arbitrary objects, when loaded by "
                f"torch.load); re-save it as a state_dict of tensors or as .safetensors"
            )
        return found

    def persistent_load(self, pid):
        # zip:    ('storage', storage_type, key, location, numel)
        # legacy: ('storage', storage_type, root_key, location, numel, view_metadata)
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r:.80} (only tensor storages are allowed)")
        expected = 6 if self._legacy else 5
        if len(pid) != expected:
            raise CheckpointFormatError(f"storage id has {len(pid)} fields, expected {expected}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise UnsafeCheckpointError(f"storage id names {storage_type!r:.80}, not a torch storage type")
        if isinstance(key, bytes):
            key = key.decode("ascii")
        if not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise CheckpointFormatError(f"bad storage id {pid!r:.120}")
        if self._legacy and pid[5] is not None:
            raise CheckpointFormatError("legacy storage views are not supported; re-save the file with torch>=1.6")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = Storage(storage_type, key, numel)
        elif storage.storage_type.name != storage_type.name or storage.numel != numel:
            raise CheckpointFormatError(f"storage {key} is declared twice with different types or sizes")
        return storage


# -- the two file layouts ---------------------------------------------------------------------------
def _unpickle(data, storages, legacy=False):
    try:
        return RestrictedUnpickler(io.BytesIO(data) if isinstance(data, bytes) else data, storages, legacy).load()
    except (UnsafeCheckpointError, CheckpointFormatError):
        raise
    except Exception as exc:  # a malformed pickle: EOFError, UnpicklingError, TypeError from a bad REDUCE...
        raise CheckpointFormatError(f"cannot read the checkpoint's pickle ({type(exc).__name__}: {exc})") from None


def _storage_array(storage, raw, byteorder):
    dtype = storage.storage_type.dtype
    expected = storage.numel * dtype.itemsize
    if len(raw) < expected:
        raise CheckpointFormatError(
            f"storage {storage.key} holds {len(raw)} bytes, expected {expected} "
            f"({storage.numel} x {storage.storage_type.name}): the file is truncated or corrupt"
        )
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<" if byteorder == "little" else ">"), count=storage.numel)
    if storage.storage_type.name == "BFloat16Storage":
        # bfloat16 is the top half of a float32: shift into place, exact.
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _read_zip(path):
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise CheckpointFormatError(f"{path}: not a readable zip checkpoint ({exc}); the file may be truncated") from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if any(n.endswith("/constants.pkl") for n in names):
            raise CheckpointFormatError(
                f"{path} is a TorchScript archive, not a checkpoint of tensors; save model.state_dict() instead"
            )
        if len(pickles) != 1:
            raise CheckpointFormatError(f"{path}: zip file without exactly one <dir>/data.pkl; not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            byteorder = archive.read(prefix + "byteorder").decode("ascii").strip() if prefix + "byteorder" in names else "little"
            if byteorder not in ("little", "big"):
                raise CheckpointFormatError(f"{path}: unknown byte order {byteorder!r}")
            storages = {}
            obj = _unpickle(archive.read(pickles[0]), storages)
            for key, storage in storages.items():
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise CheckpointFormatError(f"{path}: storage record {record} is missing")
                storage.array = _storage_array(storage, archive.read(record), byteorder)
        except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as exc:
            raise CheckpointFormatError(f"{path}: corrupt or truncated zip checkpoint ({exc})") from None
    return obj


def _read_legacy(path):
    with open(path, "rb") as f:
        storages = {}
        magic = _unpickle(f, storages, legacy=True)
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointFormatError(f"{path}: bad magic number; not a torch.save file")
        version = _unpickle(f, storages, legacy=True)
        if version != LEGACY_PROTOCOL_VERSION:
            raise CheckpointFormatError(f"{path}: unsupported legacy protocol version {version!r}")
        sys_info = _unpickle(f, storages, legacy=True)
        byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
        obj = _unpickle(f, storages, legacy=True)
        keys = _unpickle(f, storages, legacy=True)
        if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
            raise CheckpointFormatError(f"{path}: the storage key list does not match the tensors")
        fmt = "<q" if byteorder == "little" else ">q"
        for key in keys:
            storage = storages[str(key)]
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointFormatError(f"{path}: truncated before storage {key}")
            (numel,) = struct.unpack(fmt, head)
            if numel != storage.numel:
                raise CheckpointFormatError(f"{path}: storage {key} has {numel} elements, expected {storage.numel}")
            raw = f.read(numel * storage.storage_type.dtype.itemsize)
            storage.array = _storage_array(storage, raw, byteorder)
    return obj


def _materialise(obj):
    """Replace every TensorRecord in nested dicts/lists/tuples by its NumPy array."""
    if isinstance(obj, TensorRecord):
        return obj.to_numpy()
    if isinstance(obj, Namespace):
        return {k: _materialise(v) for k, v in obj.fields.items()}
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    if isinstance(obj, _Inert):
        raise UnsafeCheckpointError(f"the checkpoint holds a bare {type(obj).__name__}, not a tensor")
    return obj


def load_torch_file(path):
    """Read a `torch.save` file without torch: nested dicts/lists with NumPy arrays for tensors.

    Raises `UnsafeCheckpointError` if the pickle names anything but tensors and plain containers,
    `CheckpointFormatError` if the file is truncated, corrupt or not a torch.save file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_PREFIX))
    if head[:4] == b"PK\x03\x04":
        obj = _read_zip(path)
    elif head == LEGACY_PREFIX:
        obj = _read_legacy(path)
    elif head[:2] == b"PK" or zipfile.is_zipfile(path):
        obj = _read_zip(path)
    else:
        raise CheckpointFormatError(
            f"{path}: neither a zip nor a legacy torch.save file (first bytes {head[:8]!r}); "
            f"if it is a tar-format checkpoint from torch < 0.4, re-save it with a recent torch"
        )
    return _materialise(obj)
