"""Compiling in two processes on a cold start (`ops/compile_ahead.py`): the helper's builds are
adopted into this process's cache and loaded from there, results unchanged; a warm cache starts
no helper; the serial switch and a failing helper leave this process compiling everything."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

KERNELS = '''
import os
from npmobilenet.config import njit_serial

if os.environ.get("TOY_FAIL_IN_HELPER") and "npmobilenet-compile-" in os.environ.get("NUMBA_CACHE_DIR", ""):
    raise ImportError("the helper cannot import this module")
if os.environ.get("TOY_CHATTER") and "npmobilenet-compile-" in os.environ.get("NUMBA_CACHE_DIR", ""):
    print("a module that talks on stdout as the helper imports it")


@njit_serial
def add_one(x):
    x[0] += 1.0


@njit_serial
def add_two(x):
    x[0] += 2.0


@njit_serial
def add_three(x):
    x[0] += 3.0


@njit_serial
def double(x):
    x[0] *= 2.0
'''

SCRIPT = '''
import json, sys
import numpy as np
from numba import types
import toy_kernels as k
from npmobilenet.ops import compile_ahead as ca

mode = sys.argv[1]
sig = (types.Array(types.float64, 1, "C"),)
entries = [(k.add_one, sig), (k.add_two, sig), (k.add_three, sig), (k.double, sig)]
if mode == "late":
    # this process starts its first entry only once the helper has finished its first (the last
    # entry), so that the helper certainly compiles some
    has_started = ca._Helper.has_started
    def late(self, i):
        self.wait_for(len(entries) - 1)
        return has_started(self, i)
    ca._Helper.has_started = late
if mode == "warm":
    def no_helper(cls, pending):
        raise AssertionError("a helper started with a warm cache")
    ca._Helper.start = classmethod(no_helper)
by_helper = ca.compile_all(entries)
x = np.zeros(1)
for f, _ in entries:
    f(x)
print(json.dumps({"by_helper": by_helper, "x": float(x[0]),
                  "hits": [sum(f.stats.cache_hits.values()) for f, _ in entries],
                  "misses": [sum(f.stats.cache_misses.values()) for f, _ in entries]}))
'''


def _run(tmp_path, mode, **env):
    (tmp_path / "toy_kernels.py").write_text(textwrap.dedent(KERNELS))
    (tmp_path / "script.py").write_text(SCRIPT)
    environment = {k: v for k, v in os.environ.items() if k != "NPMOBILENET_SERIAL_COMPILE"}
    environment.update(NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(tmp_path), **env)
    out = subprocess.run([sys.executable, str(tmp_path / "script.py"), mode], env=environment, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the helper needs a second CPU")


@needs_two_cpus
def test_helper_builds_are_adopted_then_loaded_warm(tmp_path):
    cold = _run(tmp_path, "late")
    assert cold["x"] == 12.0
    assert 1 <= cold["by_helper"] <= 4
    # each entry compiled once in this process or loaded once (the helper's, adopted) from the cache
    assert [h + m for h, m in zip(cold["hits"], cold["misses"])] == [1, 1, 1, 1]
    assert sum(cold["hits"]) == cold["by_helper"]
    assert cold["hits"][-1] == 1                        # the helper starts from the end
    warm = _run(tmp_path, "warm")
    assert warm == {"by_helper": 0, "x": 12.0, "hits": [1, 1, 1, 1], "misses": [0, 0, 0, 0]}


def test_serial_switch_compiles_here(tmp_path):
    result = _run(tmp_path, "cold", NPMOBILENET_SERIAL_COMPILE="1")
    assert result == {"by_helper": 0, "x": 12.0, "hits": [0, 0, 0, 0], "misses": [1, 1, 1, 1]}


@needs_two_cpus
def test_failing_helper_leaves_the_work_here(tmp_path):
    result = _run(tmp_path, "late", TOY_FAIL_IN_HELPER="1")
    assert result == {"by_helper": 0, "x": 12.0, "hits": [0, 0, 0, 0], "misses": [1, 1, 1, 1]}


def test_a_numba_without_the_expected_cache_parts_is_compiled_here():
    # should a Numba release change the cache's private parts, nothing is shared or taken
    from types import SimpleNamespace

    from npmobilenet.ops import compile_ahead

    class Plain:                                # a dispatcher whose cache has none of the parts
        overloads = {}
        _cache = SimpleNamespace()
        py_func = test_serial_switch_compiles_here

    assert not compile_ahead._shareable(Plain())
    assert not compile_ahead._ready(Plain(), ())
    assert compile_ahead._adopt(Plain(), (), "/nonexistent") is False
    compiled = []
    Plain.compile = lambda self, argtypes: compiled.append(argtypes)
    assert compile_ahead.compile_all([(Plain(), ("a",)), (Plain(), ("b",))]) == 0
    assert compiled == [("a",), ("b",)]


@needs_two_cpus
def test_other_lines_on_the_helpers_stdout_are_ignored(tmp_path):
    result = _run(tmp_path, "late", TOY_CHATTER="1")
    assert result["x"] == 12.0 and 1 <= result["by_helper"] <= 4
    assert sum(result["hits"]) == result["by_helper"]


def test_a_table_loads_its_cached_runner_before_its_first_run():
    # compile_all leaves no entry to its first call: a build found in Numba's cache is loaded
    # when the table is made, not by a helper thread's first call in the middle of a run (whose
    # loading showed up as allocations in test_steady_state_allocates_no_activation_buffers)
    script = textwrap.dedent("""
        import numpy as np, npmobilenet
        from npmobilenet.inference import program
        fused = npmobilenet.build("mobilenet_v3_small", seed=0).eval().fuse()
        fused(np.zeros((1, 32, 32, 3), np.float32))          # the cache holds every build now
        """)
    check = textwrap.dedent("""
        import numpy as np, npmobilenet
        from npmobilenet.inference import program
        fused = npmobilenet.build("mobilenet_v3_small", seed=0).eval().fuse()
        fused.plan((1, 32, 32, 3))                           # the table made, no run yet
        print(len(program._take_tiles.overloads), len(program._lead.overloads))
        """)
    env = dict(os.environ, NPMOBILENET_SERIAL_COMPILE="1")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)
    out = subprocess.run([sys.executable, "-c", check], check=True, env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["1", "1"]
