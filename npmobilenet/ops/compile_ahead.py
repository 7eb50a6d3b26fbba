"""Compiling a model's kernels in two processes when Numba's cache is empty.

Why: a model's tiles are compiled each in its own module and called by address (`indirect.py`),
so their compilations are independent; Numba compiles on one core. With an empty cache,
`compile_all` starts a helper process that compiles the list from its end while this process
compiles it from its start; where they meet, this process waits for the helper's remaining
entries and takes them from its cache. The helper writes to a cache directory of its own:
Numba's index of a function's builds is rewritten whole by whichever process saves one, without
a lock, so two processes saving builds of one function could pair a signature with the other's
code. This process copies each entry it takes (the index key and the serialised build, as Numba
wrote them) into its own cache, then loads it from there like any cached build.

Numba's cache is read through its private parts (the index of a function's builds, their keys,
the directory its locator picks; as of Numba 0.68): should a release change them, the helper is
not used or its builds are not taken, and this process compiles them. The helper is used only
where it can save time: more than one entry missing from the cache and at least two CPUs to run
on. It takes the entries whose dispatcher is cached (`cache=True`) and found by module and name;
this process compiles the others first. With `NPMOBILENET_SERIAL_COMPILE=1`, or if the helper
fails, this process compiles everything itself. Either way the same builds result: the helper
runs the same Python, Numba and CPU target (its environment is this one's but for
`NUMBA_CACHE_DIR`).
"""
import importlib
import inspect
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading

from numba.core.caching import FunctionCache, IndexDataCacheFile, _CacheLocator

SERIAL_ENV = "NPMOBILENET_SERIAL_COMPILE"
# what reading Numba's cache through its private parts may raise, should a Numba release change
# them (tested on 0.68): then this process compiles what it would have taken from the helper
_CACHE_ERRORS = (AttributeError, TypeError, ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError)


def compile_all(entries):
    """Compile each `(dispatcher, argtypes)` of `entries` or load it from Numba's cache, sharing
    the compilations with a helper process where that can help (module docstring): every entry
    is in its dispatcher when this returns, those found in the cache too (loaded now, not at
    their first call: a helper thread's, in the middle of a run). Returns the number of entries
    taken from the helper."""
    entries = [(dispatcher, tuple(argtypes)) for dispatcher, argtypes in entries]
    ready = [_ready(dispatcher, argtypes) for dispatcher, argtypes in entries]
    adopted = _compile_missing([entry for entry, found in zip(entries, ready) if not found])
    for (dispatcher, argtypes), found in zip(entries, ready):
        if found and argtypes not in dispatcher.overloads:
            dispatcher.compile(argtypes)        # in the cache: loaded from there
    return adopted


def _compile_missing(pending):
    """Compile the entries missing from the cache, with a helper process where it can help."""
    # (the helper takes only what it can find by name and what Numba caches)
    shared = [entry for entry in pending if _shareable(entry[0])]
    helper = _Helper.start(shared) if _worth_a_helper(shared) else None
    if helper is None:
        for dispatcher, argtypes in pending:
            dispatcher.compile(argtypes)
        return 0
    try:
        for dispatcher, argtypes in pending:
            if not _shareable(dispatcher):
                dispatcher.compile(argtypes)
        ours = 0
        while ours < len(shared) and not helper.has_started(ours):
            dispatcher, argtypes = shared[ours]
            dispatcher.compile(argtypes)
            ours += 1
        adopted = 0
        for i in range(len(shared) - 1, ours - 1, -1):
            dispatcher, argtypes = shared[i]
            if helper.wait_for(i):
                adopted += _adopt(dispatcher, argtypes, helper.directory)
            dispatcher.compile(argtypes)        # loads the adopted build (or compiles it if that failed)
        return adopted
    finally:
        helper.stop()


def _ready(dispatcher, argtypes):
    """Whether the build is in this process already or in Numba's cache."""
    if argtypes in dispatcher.overloads:
        return True
    if not _shareable(dispatcher):
        return False
    try:
        return _key(dispatcher, argtypes) in dispatcher._cache._cache_file._load_index()
    except _CACHE_ERRORS:
        return False


def _key(dispatcher, argtypes):
    return dispatcher._cache._index_key(argtypes, dispatcher.targetctx.codegen())


def _name(dispatcher):
    """(module, name) under which the helper finds `dispatcher`, or None."""
    module, name = dispatcher.py_func.__module__, dispatcher.py_func.__qualname__
    if getattr(sys.modules.get(module), name, None) is not dispatcher:
        return None
    return module, name


def _shareable(dispatcher):
    cache = getattr(dispatcher, "_cache", None)
    return (isinstance(cache, FunctionCache) and hasattr(cache, "_cache_file") and hasattr(cache, "_impl")
            and _name(dispatcher) is not None)


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _worth_a_helper(shared):
    return len(shared) > 1 and os.environ.get(SERIAL_ENV, "") in ("", "0") and _cpus() > 1


def _adopt(dispatcher, argtypes, directory):
    """Copy the helper's cached build of `argtypes` (in `directory`) into this process's cache;
    whether there was one (or False where Numba's cache is not laid out as this expects)."""
    try:
        return _copy_entry(dispatcher, argtypes, directory)
    except _CACHE_ERRORS:
        return False


def _copy_entry(dispatcher, argtypes, directory):
    ours = dispatcher._cache
    # where the helper's locator (NUMBA_CACHE_DIR=directory) put it, under the same file names and
    # the same stamp of the sources (`config._stamp_cache`): an entry built from others is left
    source = inspect.getfile(dispatcher.py_func)
    theirs = IndexDataCacheFile(os.path.join(directory, _CacheLocator.get_suitable_cache_subpath(source)),
                                ours._impl.filename_base, ours._cache_file._source_stamp)
    key = _key(dispatcher, argtypes)
    data = theirs.load(key)
    if data is None:
        return False
    ours._impl.locator.ensure_cache_path()
    ours._cache_file.save(key, data)
    return True


class _Helper:
    """The helper process and what it has reported: `started i` and `done i` lines on its stdout."""

    def __init__(self, process, directory):
        self.process, self.directory = process, directory
        self.started, self.done, self.finished = set(), set(), False
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @classmethod
    def start(cls, pending):
        directory = tempfile.mkdtemp(prefix="npmobilenet-compile-")
        try:
            # (this process's import path first, so that the helper imports the same modules)
            path = os.pathsep.join([p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")])
            process = subprocess.Popen(
                [sys.executable, "-c", f"from {__name__} import _serve; _serve()"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=dict(os.environ, NUMBA_CACHE_DIR=directory, PYTHONPATH=path))
            process.stdin.write(pickle.dumps([_name(d) + (argtypes,) for d, argtypes in pending]))
            process.stdin.close()
        except (OSError, ValueError, pickle.PicklingError):
            shutil.rmtree(directory, ignore_errors=True)
            return None
        return cls(process, directory)

    def _read(self):
        try:
            for line in self.process.stdout:
                word, _, number = line.decode("ascii", "replace").strip().partition(" ")
                if word in ("started", "done") and number.isdigit():      # (anything else printed: not ours)
                    with self.changed:
                        (self.started if word == "started" else self.done).add(int(number))
                        self.changed.notify_all()
        finally:
            with self.changed:                  # (so that no `wait_for` waits on a reader that is gone)
                self.finished = True
                self.changed.notify_all()

    def has_started(self, i):
        with self.changed:
            return i in self.started

    def wait_for(self, i):
        """Whether the helper compiled entry i (False: it stopped before)."""
        with self.changed:
            self.changed.wait_for(lambda: i in self.done or self.finished)
            return i in self.done

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.reader.join()
        self.process.stdout.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _serve():
    """The helper: compile the entries read from stdin, last first, reporting each."""
    entries = pickle.loads(sys.stdin.buffer.read())
    for i in range(len(entries) - 1, -1, -1):
        module, name, argtypes = entries[i]
        print("started", i, flush=True)
        getattr(importlib.import_module(module), name).compile(argtypes)
        print("done", i, flush=True)


__all__ = ["compile_all", "SERIAL_ENV"]
