"""Foreign weight files read without torch and without executing code: which format a file is
(by its first bytes, not its name), a .safetensors reader (a JSON header and raw little-endian
arrays, read with NumPy), and the state dict inside what a .pth holds (`torch_zip` reads .pth
files, tensors only).
"""
import json
import os
import reprlib
import zipfile

import numpy as np

from npmobilenet.io import torch_zip
from npmobilenet.io.limits import ByteBudget

# safetensors dtype -> NumPy dtype (BF16 is widened to float32 exactly, as in torch_zip)
SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
# where training scripts keep the model's state dict inside a bigger checkpoint, in order of preference
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema", "net")
MAX_SAFETENSORS_HEADER = 100 * 2 ** 20


def sniff_format(path):
    """'npz', 'safetensors' or 'torch', from the file's first bytes; ValueError for anything else."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a weights file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        raise ValueError(f"{path} is empty")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
            raise ValueError(f"{path} is a damaged or truncated zip file ({exc})") from None
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise ValueError(f"{path} is a zip file but neither an .npz nor a torch.save checkpoint")
    if head[:len(torch_zip.LEGACY_PREFIX)] == torch_zip.LEGACY_PREFIX:
        return "torch"
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len <= MAX_SAFETENSORS_HEADER and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(b"\x93NUMPY"):
        raise ValueError(f"{path} is a single .npy array, not a weights file (.npz, .safetensors, .pth)")
    raise ValueError(
        f"{path} is not a weights file npmobilenet reads (an npmobilenet .npz, a .safetensors file, or a "
        f"PyTorch .pth/.pt checkpoint); it starts with {head[:8]!r}"
    )


def _safetensors_entries(header, data_len, path):
    """[(name, dtype name, shape, begin, end)] of a parsed header, checked: known dtypes, shapes
    whose size is their byte range, ranges inside the data and not overlapping (two names on one
    range would each become a copy)."""
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: bad header entry for {name!r:.100}: {reprlib.repr(info)}") from None
        if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {reprlib.repr(dtype_name)}, which npmobilenet does not read")
        if len(shape) > 64 or not all(_is_count(n) for n in shape) or not (_is_count(begin) and _is_count(end)):
            raise ValueError(f"{path}: bad shape or offsets for {name}: {reprlib.repr(info)}")
        count = 1
        for n in shape:
            count *= n
        if not begin <= end or end - begin != count * SAFETENSORS_DTYPES[dtype_name].itemsize:
            raise ValueError(f"{path}: tensor {name} {shape} {dtype_name} does not fit its byte range [{begin}, {end})")
        if end > data_len:
            raise ValueError(f"{path} is truncated: tensor {name} ends at byte {end}, the data has {data_len}")
        entries.append((name, dtype_name, shape, begin, end))
    previous_end, previous = 0, None
    for name, _, _, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin < previous_end:
            raise ValueError(f"{path}: tensors {previous} and {name} share bytes [{begin}, {previous_end}); "
                             "each tensor of a .safetensors file has its own range")
        if end > begin:
            previous_end, previous = end, name
    return entries


def _is_count(n):
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2 ** 62


def read_safetensors(path, max_bytes=None):
    """{name: array} of a .safetensors file, read with NumPy (the format: u64 header length, JSON
    header {name: {dtype, shape, data_offsets}}, then the raw little-endian data).

    The header is checked whole before any tensor is allocated (see `_safetensors_entries`), and
    the tensors together must stay within `max_bytes` (default `limits.MAX_LOAD_BYTES`): each is
    read into its own array, so loading costs the file's size, once."""
    path = os.fspath(path)
    budget = ByteBudget(max_bytes, path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is truncated: {len(head)} bytes, no safetensors header")
        header_len = int.from_bytes(head, "little")
        if header_len > size - 8:
            raise ValueError(f"{path} is truncated: its header claims {header_len} bytes, the file has {size - 8}")
        if header_len > MAX_SAFETENSORS_HEADER:
            raise ValueError(f"{path}: its header claims {header_len:,} bytes; safetensors headers are at most "
                             f"{MAX_SAFETENSORS_HEADER:,}")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"{path}: the safetensors header is not valid JSON ({type(exc).__name__})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: the safetensors header is not a JSON object")
        data_start = 8 + header_len
        entries = _safetensors_entries(header, size - data_start, path)
        for name, dtype_name, shape, begin, end in entries:
            budget.take(end - begin, f"tensor {name} {shape} {dtype_name}")
        tensors = {}
        for name, dtype_name, shape, begin, end in entries:
            raw = np.empty(end - begin, dtype=np.uint8)
            f.seek(data_start + begin)
            if f.readinto(raw) != end - begin:
                raise ValueError(f"{path} is truncated: tensor {name} is cut short")
            array = raw.view(SAFETENSORS_DTYPES[dtype_name]).reshape(shape)
            if dtype_name == "BF16":
                array = (array.astype(np.uint32) << 16).view(np.float32)
            tensors[name] = array.astype(array.dtype.newbyteorder("="), copy=False)
    return tensors


def _is_tensor_dict(obj):
    return (isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, np.ndarray) for v in obj.values()))


def _find_state_dict(obj, path):
    """The state dict inside what a .pth holds: itself, or under a usual key of a training checkpoint."""
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key])
        top = ", ".join(repr(k) for k in list(obj)[:10])
        raise ValueError(f"{path}: no dict of tensors found (top-level keys: {top}; looked under {STATE_DICT_KEYS})")
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")


def state_dict_from(obj, path="<object>"):
    """The {key: array} state dict in what a file held: found inside a training checkpoint
    (STATE_DICT_KEYS) if need be, with DataParallel's 'module.' prefix stripped."""
    state = _find_state_dict(obj, path)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_foreign_state(path, max_bytes=None):
    """The state dict of a .safetensors or .pth file, in PyTorch's names and layouts (within
    `max_bytes`, default `limits.MAX_LOAD_BYTES`)."""
    fmt = sniff_format(path)
    if fmt == "safetensors":
        return state_dict_from(read_safetensors(path, max_bytes), path)
    if fmt == "torch":
        return state_dict_from(torch_zip.load_torch_file(path, max_bytes), path)
    raise ValueError(f"{path} is an npmobilenet .npz, not a torchvision/timm weights file")
