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

Reading costs what the file declares, within `limits`: the pickle is read whole only below
MAX_PICKLE_BYTES; its object graph is walked without recursion, each object once (a pickle sharing
references, `x = [x, x]` sixty times over, stays a DAG: a tensor referenced 2^30 times is one array),
at most MAX_NESTING containers deep, and a container holding itself is refused; a tensor must be a
view whose elements are distinct elements of its storage (stride 0 and overlapping views are
refused); each storage record is read (decompressed) only up to the size the pickle declares for
it; and the storages together, and the arrays made from them, must each stay within `max_bytes`.
"""
import collections
import io
import os
import pickle
import reprlib
import struct
import zipfile

import numpy as np

from npmobilenet.io.limits import MAX_NESTING, MAX_PICKLE_BYTES, BudgetExceededError, ByteBudget

MAX_DIMS = 64          # NumPy's limit on an array's dimensions
MAX_DIM_SIZE = 2 ** 62

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


def _short(obj):
    """A bounded repr of something from the file (its nesting and length cut)."""
    return reprlib.repr(obj)


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
        raise CheckpointFormatError(f"bad tensor storage offset {_short(storage_offset)}")
    if not isinstance(size, tuple) or len(size) > MAX_DIMS or not all(_is_int(s) and 0 <= s < MAX_DIM_SIZE for s in size):
        raise CheckpointFormatError(f"bad tensor size {_short(size)}")
    if not isinstance(stride, tuple) or len(stride) != len(size) or not all(_is_int(s) and 0 <= s < MAX_DIM_SIZE for s in stride):
        raise CheckpointFormatError(f"bad tensor stride {_short(stride)} for size {_short(size)}")
    if all(s > 0 for s in size):
        last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= storage.numel:
            raise CheckpointFormatError(
                f"tensor of size {size} (stride {stride}, offset {storage_offset}) reaches element {last} "
                f"of a storage with {storage.numel} elements"
            )
        if _overlaps(size, stride):
            raise CheckpointFormatError(
                f"tensor of size {size} with stride {stride} reads some storage elements more than once "
                f"(stride 0 or overlapping rows); a state dict's tensors do not, and such a view can declare "
                f"a huge tensor over a few stored values: re-save the tensors with .contiguous()"
            )
    return TensorRecord(storage, storage_offset, size, stride)


def _overlaps(size, stride):
    """True unless every element of the view is a distinct storage element: with the dimensions
    of more than one element sorted by stride, each stride must pass the span of those before it
    (contiguous tensors, transposes and slices do; stride 0 and overlapping windows do not)."""
    span = 0
    for st, n in sorted((st, n) for n, st in zip(size, stride) if n > 1):
        if st <= span:
            return True
        span += (n - 1) * st
    return False


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
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {_short(encoding)}")
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
            raise UnsafeCheckpointError(f"unexpected persistent id {_short(pid)} (only tensor storages are allowed)")
        expected = 6 if self._legacy else 5
        if len(pid) != expected:
            raise CheckpointFormatError(f"storage id has {len(pid)} fields, expected {expected}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise UnsafeCheckpointError(f"storage id names {_short(storage_type)}, not a torch storage type")
        if isinstance(key, bytes):
            key = key.decode("ascii")
        if not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise CheckpointFormatError(f"bad storage id {_short(pid)}")
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
    except MemoryError:
        raise CheckpointFormatError("the checkpoint's pickle asks for more memory than there is") from None
    except Exception as exc:  # a malformed pickle: EOFError, UnpicklingError, TypeError from a bad REDUCE...
        raise CheckpointFormatError(f"cannot read the checkpoint's pickle ({type(exc).__name__}: "
                                    f"{_short(str(exc))})") from None


def _charge_storages(storages, budget):
    """Every storage's declared bytes against the budget, before any is read."""
    for key, storage in storages.items():
        budget.take(storage.numel * storage.storage_type.dtype.itemsize,
                    f"storage {key} ({storage.numel:,} x {storage.storage_type.name})")


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


def _read_member(archive, name, limit):
    """At most `limit` bytes of zip member `name`: a member that inflates beyond what the file
    declares for it is never decompressed past that."""
    with archive.open(name) as member:
        return member.read(limit)


def _read_zip(path, budget):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
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
            byteorder = "little"
            if prefix + "byteorder" in names:
                byteorder = _read_member(archive, prefix + "byteorder", 16).decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointFormatError(f"{path}: unknown byte order {byteorder!r}")
            data = _read_member(archive, pickles[0], MAX_PICKLE_BYTES + 1)
            if len(data) > MAX_PICKLE_BYTES:
                raise CheckpointFormatError(f"{path}: its pickle is over {MAX_PICKLE_BYTES:,} bytes; a state dict's "
                                            "is kilobytes (its tensors are stored beside it)")
            storages = {}
            obj = _unpickle(data, storages)
            del data
            _charge_storages(storages, budget)
            for key, storage in storages.items():
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise CheckpointFormatError(f"{path}: storage record {record} is missing")
                expected = storage.numel * storage.storage_type.dtype.itemsize
                storage.array = _storage_array(storage, _read_member(archive, record, expected), byteorder)
        except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile, NotImplementedError, ValueError) as exc:
            if isinstance(exc, (CheckpointFormatError, UnsafeCheckpointError, BudgetExceededError)):
                raise
            raise CheckpointFormatError(f"{path}: corrupt or truncated zip checkpoint ({exc})") from None
    return obj


def _read_legacy(path, budget):
    with open(path, "rb") as f:
        storages = {}
        magic = _unpickle(f, storages, legacy=True)
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointFormatError(f"{path}: bad magic number; not a torch.save file")
        version = _unpickle(f, storages, legacy=True)
        if version != LEGACY_PROTOCOL_VERSION:
            raise CheckpointFormatError(f"{path}: unsupported legacy protocol version {_short(version)}")
        sys_info = _unpickle(f, storages, legacy=True)
        byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
        obj = _unpickle(f, storages, legacy=True)
        keys = _unpickle(f, storages, legacy=True)
        if not isinstance(keys, list) or not all(isinstance(k, (str, int)) for k in keys) \
                or set(map(str, keys)) != set(storages):
            raise CheckpointFormatError(f"{path}: the storage key list does not match the tensors")
        _charge_storages(storages, budget)
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


# -- from the unpickled objects to plain containers of arrays -------------------------------------------
def _children(obj):
    """The objects `obj` holds that `_materialise` rebuilds, or None for a leaf."""
    if isinstance(obj, dict):
        if any(isinstance(k, _Inert) for k in obj):
            raise CheckpointFormatError("the checkpoint uses a tensor as a dict key; a state dict's keys are names")
        return list(obj.values())
    if isinstance(obj, Namespace):
        return list(obj.fields.values())
    if isinstance(obj, (list, tuple)):
        return obj
    return None


def _rebuilt(obj, done):
    """`obj` with each child replaced by what it became (`done`: id -> result)."""
    if isinstance(obj, Namespace):
        return {k: done[id(v)] for k, v in obj.fields.items()}
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, done[id(v)]) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: done[id(v)] for k, v in obj.items()}
    if isinstance(obj, list):
        return [done[id(v)] for v in obj]
    return tuple(done[id(v)] for v in obj)


def _leaf(obj, budget):
    if isinstance(obj, TensorRecord):
        budget.take(int(np.prod(obj.size, dtype=object)) * obj.storage.array.dtype.itemsize,
                    f"a tensor of size {obj.size}")
        return obj.to_numpy()
    if isinstance(obj, _Inert):
        raise UnsafeCheckpointError(f"the checkpoint holds a bare {type(obj).__name__}, not a tensor")
    if isinstance(obj, (set, frozenset)) and any(isinstance(v, _Inert) for v in obj):
        raise CheckpointFormatError("the checkpoint holds tensors in a set; a state dict keeps them in a dict")
    return obj


def _materialise(root, budget):
    """Replace every TensorRecord in nested dicts/lists/tuples by its NumPy array.

    Walked with an explicit stack, each object once (shared objects stay shared, so a DAG costs
    its size, not its unrolled size), at most MAX_NESTING deep; a container inside itself is refused.
    """
    done = {}       # id(object) -> what it became
    open_ = set()   # ids of the containers on the current path
    stack = [(root, 0, False)]
    while stack:
        obj, depth, children_done = stack.pop()
        key = id(obj)
        if children_done:
            open_.discard(key)
            done[key] = _rebuilt(obj, done)
            continue
        if key in done:
            continue
        children = _children(obj)
        if children is None:
            done[key] = _leaf(obj, budget)
            continue
        if depth >= MAX_NESTING:
            raise CheckpointFormatError(f"the checkpoint nests containers over {MAX_NESTING} deep; a state dict "
                                        "is a dict of tensors")
        open_.add(key)
        stack.append((obj, depth, True))
        for child in children:
            if id(child) in open_:
                raise CheckpointFormatError("the checkpoint holds a container that contains itself; a state dict "
                                            "is a dict of tensors")
            if id(child) not in done:
                stack.append((child, depth + 1, False))
    return done[id(root)]


def load_torch_file(path, max_bytes=None):
    """Read a `torch.save` file without torch: nested dicts/lists with NumPy arrays for tensors.

    Raises `UnsafeCheckpointError` if the pickle names anything but tensors and plain containers,
    `CheckpointFormatError` if the file is truncated, corrupt or not a torch.save file, and
    `limits.BudgetExceededError` (a ValueError) if its storages, or the arrays made from them,
    take more than `max_bytes` (default `limits.MAX_LOAD_BYTES`).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_PREFIX))
    budget = ByteBudget(max_bytes, path)
    if head[:4] == b"PK\x03\x04":
        obj = _read_zip(path, budget)
    elif head == LEGACY_PREFIX:
        obj = _read_legacy(path, budget)
    elif head[:2] == b"PK" or zipfile.is_zipfile(path):
        obj = _read_zip(path, budget)
    else:
        raise CheckpointFormatError(
            f"{path}: neither a zip nor a legacy torch.save file (first bytes {head[:8]!r}); "
            f"if it is a tar-format checkpoint from torch < 0.4, re-save it with a recent torch"
        )
    return _materialise(obj, ByteBudget(budget.limit, path))
