"""Files written whole or not at all, and read without unpickling.

`atomic_write` is how every checkpoint, int8 model and ONNX graph reaches disk: a temporary file
beside the destination, fsynced, then renamed over it, so a crash mid-write leaves the previous
file as it was. `read_arrays` reads an .npz with `allow_pickle=False` and turns every way a file
can be damaged into a ValueError naming the file.
"""
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np


def atomic_write(path, write):
    """Call `write(file)` on a temporary file beside `path`, then move it over `path`.

    The temporary file is fsynced before the rename and the directory after it, so after a power
    cut either the old or the new file is there, whole. If `write` raises, the temporary file is
    removed and `path` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {directory} does not exist (for {path})")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
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


def json_array(obj):
    """`obj` as JSON in a uint8 array: stored in an .npz without pickle."""
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def from_json_array(array, key, path):
    """The object `json_array` stored, or a ValueError naming the file and key."""
    try:
        return json.loads(np.asarray(array, dtype=np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path}: {key} is not valid JSON ({exc})") from exc


def read_arrays(path):
    """Every array of a checkpoint file as a dict, or a ValueError saying why it cannot be read."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            # read everything now, so a bad CRC or a short member surfaces here, with the file named
            return {key: npz[key] for key in npz.files}
    except AttributeError:
        raise ValueError(f"checkpoint {path} is a single .npy array, not an .npz checkpoint") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        reason = str(exc) or type(exc).__name__
        if "pickle" in reason:
            reason = "it holds pickled data, which is never loaded"
        raise ValueError(
            f"checkpoint {path} is truncated or corrupted and cannot be read ({type(exc).__name__}: {reason})"
        ) from exc
