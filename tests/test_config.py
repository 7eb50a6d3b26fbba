"""Every Numba kernel in npmobilenet is built with the options in `npmobilenet.config`, and
importing the package compiles nothing."""
import importlib
import json
import pkgutil
import subprocess
import sys

import numba
import pytest
from numba.core.caching import FunctionCache

import npmobilenet
from npmobilenet import config


def _modules():
    names = [npmobilenet.__name__]
    names += [m.name for m in pkgutil.walk_packages(npmobilenet.__path__, npmobilenet.__name__ + ".")]
    return [importlib.import_module(name) for name in names if not name.endswith("__main__")]


def _dispatchers():
    """Every Numba dispatcher defined (not merely imported) in an npmobilenet module, once: a
    module's alias of its own kernel (a choice made at import, e.g. depthwise_avx512._zero for
    this CPU's vector width) is the same dispatcher under its first name."""
    found, seen = {}, set()
    for module in _modules():
        for attr, obj in vars(module).items():
            if (isinstance(obj, numba.core.dispatcher.Dispatcher) and obj.py_func.__module__ == module.__name__
                    and id(obj) not in seen):
                seen.add(id(obj))
                found[f"{module.__name__}.{attr}"] = obj
    return found


def test_kernels_exist():
    names = set(_dispatchers())
    for kernel in ("npmobilenet.ops.depthwise._depthwise_forward_serial",
                   "npmobilenet.ops.depthwise._depthwise_forward_parallel",
                   "npmobilenet.ops.conv._im2col_parallel",
                   # one forward tile per convolution kind, and their kernels (training, fused
                   # inference and int8 share them)
                   "npmobilenet.ops.conv.conv_tile", "npmobilenet.ops.conv._conv_forward_parallel",
                   "npmobilenet.ops.depthwise.depthwise_tile",
                   "npmobilenet.ops.pointwise.pointwise_tile", "npmobilenet.ops.pointwise._pointwise_forward_parallel",
                   "npmobilenet.ops.epilogue.bias_act", "npmobilenet.ops.blas.matmul",
                   "npmobilenet.inference.tiles._squeeze_excite_gate_parallel",
                   "npmobilenet.inference.program._take_tiles", "npmobilenet.inference.program._lead",
                   "npmobilenet.compression.qexact._conv2d_int8_exact_parallel"):
        assert kernel in names, kernel


@pytest.mark.parametrize("name, dispatcher", sorted(_dispatchers().items()))
def test_kernel_uses_config_options(name, dispatcher):
    options = dispatcher.targetoptions
    # fast-math everywhere but in the few kernels made strict (config.njit_serial_strict)
    expected = set() if getattr(dispatcher, "strict_math", False) else set(config.FASTMATH)
    assert set(options.get("fastmath") or ()) == expected, f"{name}: fastmath {options.get('fastmath')}"
    for key, value in config.KERNEL_OPTIONS.items():
        if key == "cache":
            # cache=True is not kept in targetoptions; it installs an on-disk FunctionCache
            assert isinstance(dispatcher._cache, FunctionCache), f"{name} is not cached"
        elif key != "fastmath":
            assert options.get(key) == value, f"{name}: {key}={options.get(key)!r}, config says {value!r}"
    assert options.get("parallel") in (True, False), f"{name}: parallel must be set explicitly"


def test_kernel_caches_are_stamped_with_every_kernel_source():
    # a kernel inlines tiles from other files (program.py, qkernels.py inline ops/): its cache
    # entry must go stale when any kernel source changes, not only its own file
    for name, dispatcher in _dispatchers().items():
        stamp = dispatcher._cache._cache_file._source_stamp
        assert isinstance(stamp, tuple) and stamp[1] == config.KERNEL_SOURCES_DIGEST, name
    assert config.kernel_sources_digest() == config.KERNEL_SOURCES_DIGEST


def test_cached_kernels_never_share_cache_files():
    # Numba names cache files by module, qualified name and line, and does not key them by
    # parallel=: a serial and a parallel build of one function must not share files, or one loads
    # the other's machine code (config.njit_parallel gives the parallel twin its own name).
    owners = {}
    for name, dispatcher in _dispatchers().items():
        index = dispatcher._cache._cache_file._index_path
        assert index not in owners, f"{name} and {owners.get(index)} share the cache file {index}"
        owners[index] = name


def test_importing_npmobilenet_compiles_nothing():
    # A fresh interpreter: import every module, then count compiled signatures.
    script = (
        "import importlib, json, pkgutil, numba, npmobilenet\n"
        "names = [m.name for m in pkgutil.walk_packages(npmobilenet.__path__, 'npmobilenet.')"
        " if not m.name.endswith('__main__')]\n"
        "modules = [importlib.import_module(n) for n in names]\n"
        "compiled = {f'{m.__name__}.{a}': len(o.overloads) for m in modules for a, o in vars(m).items()"
        " if isinstance(o, numba.core.dispatcher.Dispatcher)}\n"
        "print(json.dumps(compiled))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    compiled = json.loads(out.stdout.strip().splitlines()[-1])
    assert compiled, "no Numba kernels found"
    assert {name: n for name, n in compiled.items() if n} == {}


def test_set_num_threads_round_trip():
    before = config.get_num_threads()
    try:
        config.set_num_threads(1)
        assert config.get_num_threads() == 1
    finally:
        config.set_num_threads(before)
    with pytest.raises(ValueError, match="threads must be between 1 and"):
        config.set_num_threads(0)
    with pytest.raises(TypeError, match="threads must be an int"):
        config.set_num_threads(2.0)


def test_openmp_workers_spin_briefly_unless_the_user_says_otherwise():
    import os
    import subprocess
    import sys

    probe = "import os, npmobilenet.config; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3000"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
