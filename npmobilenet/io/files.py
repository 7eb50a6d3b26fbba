"""Files written whole or not at all, outputs checked before work starts, and .npz files read
without unpickling and within a memory budget.

`atomic_write` is how every checkpoint, int8 model and ONNX graph reaches disk: a temporary file
beside the destination, fsynced, then renamed over it, so a crash mid-write leaves the previous
file as it was. The temporary file's name says whose it is (`.<name>.npmobilenet-<pid>-*.tmp`):
one left by a killed process is removed at the next save to the same destination.
`check_output` refuses, before any work, an output that is one of the inputs or cannot be
written. `read_arrays` reads an .npz with no pickle, checking each array's header against the
file's byte budget before allocating it, and turns every way a file can be damaged into a
ValueError naming the file.
"""
import json
import os
import re
import tempfile
import zipfile
import zlib

import numpy as np

from npmobilenet.io.limits import BudgetExceededError, ByteBudget

TEMP_MARK = ".npmobilenet-"
_TEMP_NAME_BYTES = 100   # of the destination's name in its temporary file's (NAME_MAX is 255)


def _temp_prefix(path):
    return "." + os.path.basename(path)[:_TEMP_NAME_BYTES] + TEMP_MARK


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True   # exists, owned by someone else (or cannot tell: keep the file)
    return True


def remove_stale_temporaries(path):
    """Delete the temporary files `atomic_write` left beside `path` in processes that no longer
    run (killed mid-save); files of running processes, and any other file, are left alone.
    Returns the names removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(_temp_prefix(path)) + r"(\d+)-[^/]*\.tmp\Z")
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def atomic_write(path, write):
    """Call `write(file)` on a temporary file beside `path`, then move it over `path`.

    The temporary file is fsynced before the rename and the directory after it, so after a power
    cut either the old or the new file is there, whole. If `write` raises, the temporary file is
    removed and `path` is untouched. Temporary files a killed process left for `path` are removed
    first.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {directory} does not exist (for {path})")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a file name to write")
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable (POSIX; not possible on Windows)
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_savez(path, arrays):
    """`np.savez` of `arrays` to `path`, all or nothing (see `atomic_write`)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return os.fspath(path)


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path, inputs=(), name="OUT"):
    """Refuse, before any work, an output path that would destroy an input or cannot be written:
    one of `inputs` (the same file, by any name or link), a directory, a missing or read-only
    directory, or a name too long for the file system. Returns `path`."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{name} is empty")
    for source in inputs:
        if source is not None and os.path.exists(path) and _same_file(path, os.fspath(source)):
            raise ValueError(f"{name} {path} is the input file {source}: writing it would destroy the input; "
                             "give another output path")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{name} {path} is a directory; give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{name} {path}: directory {directory} does not exist")
    read_only = getattr(os, "ST_RDONLY", 1) & os.statvfs(directory).f_flag if hasattr(os, "statvfs") else 0
    if read_only or not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"{name} {path}: directory {directory} is not writable")
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    if len(os.fsencode(os.path.basename(path))) > limit:
        raise ValueError(f"{name} {path}: the file name is longer than the file system's {limit} bytes")
    return path


def json_array(obj):
    """`obj` as JSON in a uint8 array: stored in an .npz without pickle."""
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def from_json_array(array, key, path):
    """The object `json_array` stored, or a ValueError naming the file and key."""
    try:
        return json.loads(np.asarray(array, dtype=np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"checkpoint {path}: {key} is not valid JSON ({exc})") from exc


# -- .npz without pickle, within a budget -------------------------------------------------------------
_CHUNK = 16 * 2 ** 20
_MAX_NPY_HEADER = 10_000


class _Corrupt(ValueError):
    pass


def _npy_header(f, member):
    """(shape, fortran_order, dtype) of the .npy in `f` (a zip member), or `_Corrupt`."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    if version not in readers:
        raise _Corrupt(f"member {member} has .npy format version {version}, which is not read")
    try:
        shape, fortran, dtype = readers[version](f, max_header_size=_MAX_NPY_HEADER)
    except Exception as exc:   # NumPy parses the header as a Python literal: any parser error
        raise _Corrupt(f"member {member} has an unreadable .npy header ({type(exc).__name__})") from None
    if dtype.hasobject:
        raise _Corrupt(f"member {member} holds pickled data, which is never loaded (allow_pickle=False)")
    return shape, fortran, dtype


def _read_exact(f, nbytes, member):
    """`nbytes` bytes of `f`, in chunks: memory grows only as the data actually arrives."""
    data = bytearray()
    while len(data) < nbytes:
        chunk = f.read(min(_CHUNK, nbytes - len(data)))
        if not chunk:
            raise _Corrupt(f"member {member} ends after {len(data):,} of its declared {nbytes:,} data bytes")
        data += chunk
    if f.read(1):   # also makes zipfile check the member's CRC
        raise _Corrupt(f"member {member} holds more bytes than its header declares")
    return data


def _read_npz(path, budget):
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise _Corrupt(f"member {info.filename} is not an .npy array")
            key = info.filename[: -len(".npy")]
            with archive.open(info) as f:
                shape, fortran, dtype = _npy_header(f, info.filename)
                count = 1
                for n in shape:
                    count *= int(n)
                nbytes = count * dtype.itemsize
                budget.take(nbytes, f"array {key!r} {tuple(shape)} {dtype}")
                if info.file_size != f.tell() + nbytes:
                    raise _Corrupt(f"array {key!r}: its header declares {tuple(shape)} {dtype} ({nbytes:,} bytes), "
                                   f"its zip entry {info.file_size - f.tell():,} bytes")
                data = _read_exact(f, nbytes, info.filename)
            arrays[key] = np.ndarray(shape, dtype, buffer=data, order="F" if fortran else "C")
    return arrays


def read_arrays(path, max_bytes=None):
    """Every array of an .npz checkpoint file as a dict, or a ValueError saying why it cannot be read.

    Each member's .npy header is read and checked (no object dtype; its size against the zip
    entry's and against `max_bytes`, default `limits.MAX_LOAD_BYTES` for the whole file) before
    its array is allocated, and its bytes are read as they arrive, so a header claiming a huge
    shape costs nothing.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a file")
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise ValueError(f"checkpoint {path} is a single .npy array, not an .npz checkpoint")
    budget = ByteBudget(max_bytes, path)
    try:
        return _read_npz(path, budget)
    except _Corrupt as exc:
        reason = str(exc)
    except BudgetExceededError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError, KeyError,
            UnicodeDecodeError, SyntaxError, NotImplementedError) as exc:
        reason = f"{type(exc).__name__}: {str(exc) or type(exc).__name__}"
    raise ValueError(f"checkpoint {path} is truncated or corrupted and cannot be read ({reason})")
