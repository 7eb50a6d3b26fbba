"""The op-table executor (inference/program.py) and its atomics: the whole network in one call
computes exactly what the layers' own kernels compute, for any number of threads."""
import contextlib

import numba
import numpy as np
import pytest
from numba import prange

import npmobilenet
from npmobilenet.applications import APPLICATIONS
from npmobilenet.config import njit_parallel
from npmobilenet.inference.atomics import atomic_add, atomic_load
from npmobilenet.ops.blas import find_blas
from npmobilenet.inference.threads import numba_threads
from npmobilenet.inference.plan import ALIGN, aligned_empty
from npmobilenet.inference.program import (COLUMNS, DONE, ENDS, RUNS, TILES, X, Y, Program, _take_tiles, _word,
                                           op_row)
from npmobilenet.inference.workers import tile_workers
from test_inference_fuse import randomize_batch_norm


def _take_numbers(counters, taken, per_worker):
    for worker in prange(taken.shape[0] // per_worker):
        for _ in range(per_worker):
            t = atomic_add(counters, 0, 1)
            taken[t] = atomic_load(counters, 0)


_take_numbers_parallel = njit_parallel(_take_numbers)


def test_atomic_add_hands_out_every_number_once():
    counters = np.zeros(1, np.int64)
    taken = np.full(4000, -1, np.int64)
    with numba_threads(numba.config.NUMBA_NUM_THREADS):
        _take_numbers_parallel(counters, taken, 500)
    assert counters[0] == 4000
    # every slot written once (the old values are 0..3999, each once), each after its own add
    assert np.all(taken >= np.arange(1, 4001))


def _model(arch, seed=0):
    fused = randomize_batch_norm(npmobilenet.build(arch, width=0.5, num_classes=10, seed=seed),
                                 np.random.default_rng(seed)).eval().fuse()
    return getattr(fused, "network", fused)        # SSDLite: the network of its twelve head maps


def _run_calls(plan):
    for kernel, args in plan.calls:
        kernel(*args)
    return _outputs(plan)


def _outputs(plan):
    return [out.copy() for out in plan.outputs]


def _equal(plan, expected):
    return all(np.array_equal(out, want) for out, want in zip(plan.outputs, expected))


@pytest.mark.parametrize("arch", npmobilenet.ARCHS + APPLICATIONS)
def test_program_equals_the_layers_own_kernels_bitwise(arch):
    fused = _model(arch)
    x = np.random.default_rng(1).standard_normal((2, 40, 48, 3)).astype(np.float32)
    plan = fused.plan(x.shape)
    blas = find_blas()
    with blas.single_threaded() if blas else contextlib.nullcontext():
        np.copyto(plan.input, x)
        expected = _run_calls(plan)
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            plan.arena[plan.input.size:] = np.nan          # nothing may survive from the last run
            np.copyto(plan.input, x)
            with numba_threads(threads):
                plan.program.run(threads)
            assert _equal(plan, expected), threads
        # more threads asked for than there are workspace blocks: capped, and still the same
        np.copyto(plan.input, x)      # (the input's slot is reused by later tensors)
        with numba_threads(1):
            plan.program.run(4)
        assert _equal(plan, expected)
        # the helpers busy (another caller holds them): the calling thread takes every tile
        helpers = tile_workers()
        if helpers is not None:
            np.copyto(plan.input, x)
            with helpers.lock:
                plan.program.run(2)
            assert _equal(plan, expected)
        # layer by layer, each layer's ops alone (how `bench --per-layer` times them)
        np.copyto(plan.input, x)
        for name in (layer.name for layer in fused.layers):
            plan.program.run(2, plan.layer_ops[name])
        assert _equal(plan, expected)


def test_op_table_addresses_stay_inside_the_arena_and_params():
    fused = _model("mobilenet_v3_small")
    plan = fused.plan((1, 64, 64, 3))
    ops = plan.program.ops
    assert ops.shape[1] == len(COLUMNS) and np.all(ops[:, TILES] >= 1)
    assert np.all((ops[:, X] >= 0) & (ops[:, X] < plan.arena.size))
    assert np.all((ops[:, Y] >= -1) & (ops[:, Y] < plan.arena.size))
    kinds = [kind for kind, _ in plan.program.describe()]
    assert kinds[0] == "conv" and kinds[-1] == "linear" and "se-gate" in kinds and "depthwise" in kinds
    # every layer has its ops, in order, covering the table
    spans = [plan.layer_ops[layer.name] for layer in fused.layers]
    assert spans[0][0] == 0 and spans[-1][1] == len(ops)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:]))
    with pytest.raises(ValueError, match="tile"):
        Program([op_row(KIND=0, TILES=0)], fused.params, plan.arena, 0)


def test_parameters_are_packed_aligned_views():
    model = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=5).eval()
    fused = model.fuse()
    params = fused.params
    assert params.ctypes.data % 64 == 0
    x = np.zeros((1, 32, 32, 3), np.float32)
    fused(x)
    assert fused.plan(x.shape).arena.ctypes.data % 64 == 0      # the activations' arena too
    for size in (1, 15, 16, 1000):
        array = aligned_empty(size)
        assert array.ctypes.data % 64 == 0 and array.shape == (size,) and array.dtype == np.float32
    stem = fused.layers[0]
    for layer in fused.layers:
        for name in layer.weight_names:
            array = getattr(layer, name)
            offset = layer.param_offsets[name]
            assert offset % ALIGN == 0 and np.shares_memory(array, params)
            assert np.array_equal(params[offset:offset + array.size], array.ravel())
    # the fold still holds after packing: the stem's weight is the conv weight times BN's scale
    bn = model.stem.bn
    scale = bn.gamma.data / np.sqrt(bn.running_var + bn.eps)
    assert np.allclose(stem.weight, model.stem.conv.weight.data * scale, rtol=1e-6)


def test_concurrent_calls_from_python_threads_are_serialised_and_correct():
    from concurrent.futures import ThreadPoolExecutor

    fused = _model("mobilenet_v3_small")
    fused.set_threads(numba.config.NUMBA_NUM_THREADS, adaptive=False)
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((1, 40, 40, 3)).astype(np.float32) for _ in range(4)]
    expected = [fused(x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(fused, inputs * 5))
    for i, result in enumerate(results):
        assert np.array_equal(result, expected[i % 4])


def test_a_helper_arriving_after_its_run_takes_nothing():
    # a helper woken late calls _take_tiles for a run that has ended, or is still in a run when
    # the next one opens: the compare-and-swap on an op's word, which names its run, gives it no tile
    fused = _model("mobilenet_v3_small")
    x = np.random.default_rng(2).standard_normal((1, 40, 40, 3)).astype(np.float32)
    expected = fused(x)
    program = fused.plan(x.shape).program
    rows, first_tile, counters = program._job(None)
    before = counters.copy()
    assert before[RUNS] > 0 and before[DONE] == before[RUNS] * program.tiles    # whole runs, all done
    no_trace = np.zeros((0, 6), np.int64)
    _take_tiles(rows, first_tile, program.params, program.arena, program.sgemm, counters, program.addresses,
                no_trace, 1)
    assert np.array_equal(counters, before)
    # the next run opened (its ops' words written) after the helper read the run number
    run = int(counters[RUNS])
    for k in range(len(rows)):
        counters[ENDS + k] = _word(run + 1, 0, rows[k, TILES])
    opened = counters.copy()
    _take_tiles(rows, first_tile, program.params, program.arena, program.sgemm, counters, program.addresses,
                no_trace, 1)
    assert np.array_equal(counters, opened)
    counters[:] = before
    fused.set_threads(numba.config.NUMBA_NUM_THREADS, adaptive=False)
    assert np.array_equal(fused(x), expected)
    helpers = tile_workers()
    if helpers is not None:
        assert helpers._job is None         # after a run the helpers hold no plan's arrays


@pytest.mark.parametrize("threads", [1, 2])
def test_a_traced_run_records_every_tile_once_and_computes_the_same(threads):
    from npmobilenet.inference.program import ENDED, OP, STARTED, TAKEN, TILE, WORKER, traced_op_ms
    fused = _model("mobilenet_v3_small")
    x = np.random.default_rng(3).standard_normal((1, 48, 48, 3)).astype(np.float32)
    expected = fused(x)
    plan = fused.plan(x.shape)
    program = plan.program
    plan.input[...] = x                 # (the input's buffer is reused by later tensors)
    program.run(threads)
    untraced = _outputs(plan)
    plan.input[...] = x
    records = program.trace_records(threads)
    assert _equal(plan, untraced)
    # the tiles of each op, each once
    assert np.array_equal(np.bincount(records[:, OP], minlength=len(program.ops)), program.ops[:, TILES])
    assert set(records[:, WORKER].tolist()) <= set(range(max(threads, 1)))
    for k in range(len(program.ops)):
        # the caller takes an op's first tiles, the helpers its last ones
        mine = records[(records[:, OP] == k) & (records[:, WORKER] == 0), TILE]
        theirs = records[(records[:, OP] == k) & (records[:, WORKER] > 0), TILE]
        assert sorted(mine.tolist() + theirs.tolist()) == list(range(program.ops[k, TILES]))
        assert mine.size == 0 or theirs.size == 0 or mine.max() < theirs.min()
    assert np.all(records[:, TAKEN] <= records[:, STARTED]) and np.all(records[:, STARTED] <= records[:, ENDED])
    # each op's computing time (what the benchmarks report per layer): its tiles' cycles, summed
    ms = traced_op_ms(records, len(program.ops), 2e9)
    k = int(records[0, OP])
    assert ms[k] == pytest.approx((records[records[:, OP] == k, ENDED] - records[records[:, OP] == k, STARTED]).sum()
                                  / 2e6)
    assert ms.sum() == pytest.approx((records[:, ENDED] - records[:, STARTED]).sum() / 2e6)
    if threads == 1:
        # one worker: no op's tile starts before every tile of the op before it has ended
        last_end = np.zeros(len(program.ops), np.int64)
        np.maximum.at(last_end, records[:, OP], records[:, ENDED])
        first_start = np.full(len(program.ops), np.iinfo(np.int64).max)
        np.minimum.at(first_start, records[:, OP], records[:, STARTED])
        assert np.all(first_start[1:] >= last_end[:-1])
    assert np.array_equal(fused(x), expected)
    # a range of ops, and a wrong record array
    k0, k1 = plan.layer_ops[next(iter(plan.layer_ops))]
    part = program.trace_records(threads, (k0, k1))
    assert len(part) == program.ops[k0:k1, TILES].sum() and part[:, OP].max() < k1 - k0
    with pytest.raises(ValueError, match="trace must be"):
        program.run(1, None, np.zeros((3, 6), np.int64))


def test_a_table_whose_tiles_never_call_openblas_runs_without_its_thread_guard(monkeypatch):
    # setting OpenBLAS's thread count to one and back costs tens of microseconds a call; a table
    # runs inside that guard only when one of its tiles calls SGEMM (the OpenBLAS tiles)
    from npmobilenet.inference import model as model_module
    from npmobilenet.inference.program import CONV, LINEAR, POINTWISE, _slot

    x = np.random.default_rng(4).standard_normal((1, 40, 40, 3)).astype(np.float32)
    for arch in ("mobilenet_v3_small", "lraspp_mobilenet_v3_large"):
        fused = npmobilenet.build(arch, seed=0).eval().fuse()
        expected = fused(x)
        program = fused.plan(x.shape).program
        slots = {_slot(row) for row in program.ops}
        assert program.calls_sgemm == (bool(program.sgemm) and bool(slots & {POINTWISE, CONV, LINEAR}))
        taken = []
        real = model_module.single_threaded_blas
        monkeypatch.setattr(model_module, "single_threaded_blas", lambda: taken.append(1) or real())
        assert np.array_equal(fused(x), expected)
        assert len(taken) == int(program.calls_sgemm)
        monkeypatch.undo()


def test_cycle_rate_turns_traced_cycle_counts_into_time():
    import platform

    from npmobilenet.inference.atomics import cycle_rate
    rate = cycle_rate(0.02)
    assert rate >= 0
    if platform.machine().lower() in ("x86_64", "amd64", "i686"):
        assert rate > 1e8                       # rdtsc ticks at the nominal clock: GHz
