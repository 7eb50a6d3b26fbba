"""The memory plan: a few reused buffers, no overlap between live tensors, nothing allocated per call."""
import gc
import math
import tracemalloc

import numba
import numpy as np
import pytest

import npmobilenet
from npmobilenet.inference import MemoryPlan, planned_peak_bytes
from npmobilenet.inference.plan import _liveness
from npmobilenet.inference.program import MAX_WORKERS


def fused_model(arch="mobilenet_v2", width=0.5):
    return npmobilenet.build(arch, width=width, num_classes=10).eval().fuse()


@pytest.mark.parametrize("arch", npmobilenet.ARCHS)
def test_planned_bytes_are_the_arrays_used(arch):
    model = npmobilenet.build(arch, width=0.5, num_classes=10).eval()
    fused = model.fuse()
    for batch, (h, w) in ((1, (64, 64)), (3, (48, 40))):
        fused(np.zeros((batch, h, w, 3), np.float32))
        plan = fused.plan((batch, h, w, 3))
        used = sum(b.nbytes for b in plan.buffers)
        assert plan.nbytes == used
        assert planned_peak_bytes(fused, (h, w), batch) == used
        assert planned_peak_bytes(model, (h, w), batch) == used     # the unfused model lays out the same
        # every tensor, and every array a kernel call receives, lives inside a planned buffer
        for name, view in plan.tensors.items():
            assert any(np.shares_memory(view, b) for b in plan.buffers), name
        for _, args in plan.calls:
            for a in args:
                if isinstance(a, np.ndarray) and a.size and a.ndim >= 2 and a.base is not None:
                    owned = any(np.shares_memory(a, b) for b in plan.buffers)
                    weight = any(np.shares_memory(a, wt) for layer in fused.layers for wt in layer.weights())
                    assert owned or weight or a.nbytes <= 8


def test_live_tensors_never_share_memory():
    fused = fused_model("mobilenet_v3_large", 0.75)
    shape = (2, 64, 64, 3)
    plan = fused.plan(shape)
    shapes, first, last, _ = _liveness(fused.layers, shape)
    names = sorted(shapes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            overlap = first[a] <= last[b] and first[b] <= last[a]
            if overlap:
                assert not np.shares_memory(plan.tensors[a], plan.tensors[b]), (a, b)
    # a handful of buffers serve dozens of tensors
    assert len(plan.buffers) <= 6 < len(plan.tensors) / 5


def test_peak_is_below_the_sum_and_above_the_largest_layer():
    fused = fused_model("mobilenet_v2", 1.0)
    shape = (1, 224, 224, 3)
    shapes, *_ = _liveness(fused.layers, shape)
    sizes = [4 * math.prod(s) for s in shapes.values()]
    peak = planned_peak_bytes(fused, 224)
    # the largest tensor (the stem's output, 112x112x32: block 1's expansion, 112x112x96, is made
    # in bands, `FusedExpansion`) and the block input beside it must coexist
    assert max(sizes) < peak < 0.4 * sum(sizes)
    print(f"mobilenet_v2 at 224: {peak / 2**20:.2f} MiB per image (all tensors: {sum(sizes) / 2**20:.1f} MiB)")
    # a batch of 224x224 images runs in chunks of two, one plan per worker thread, each plan run
    # by its thread alone (one block of each workspace), and the classifier over the whole batch
    chunk = MemoryPlan.layout_bytes(fused.chunk_layers, (2, 224, 224, 3), fused.chunk_outputs, workers=1)
    assert 1.5 * peak < chunk < 2 * peak
    one = planned_peak_bytes(fused, 224, batch=4, threads=1)
    assert chunk < one < chunk + 64 * 1024                         # + the classifier's plan
    assert planned_peak_bytes(fused, 224, batch=4, threads=2) == pytest.approx(one + chunk, rel=0.001)
    last = MemoryPlan.layout_bytes(fused.chunk_layers, (1, 224, 224, 3), fused.chunk_outputs, workers=1)
    assert planned_peak_bytes(fused, 224, batch=5, threads=2) == pytest.approx(one + chunk + last, rel=0.001)


def test_a_plan_run_by_one_thread_holds_one_block_of_each_workspace():
    fused = fused_model("mobilenet_v2", 1.0).set_threads(2, adaptive=False)
    x = np.random.default_rng(0).standard_normal((4, 224, 224, 3)).astype(np.float32)
    expected = np.concatenate([fused(x[:1]), fused(x[1:2]), fused(x[2:])])
    whole = fused.plan((1, 224, 224, 3))
    banded = [name for name, tensor in whole.tensors.items() if "+" in name and name.endswith("#workspace0")
              and tensor.ndim == 2]                                  # the expansions' bands (the others: maps)
    assert len(banded) == 3
    assert all(whole.tensors[name].shape[0] == MAX_WORKERS for name in banded)
    np.testing.assert_array_equal(fused(x), expected)                # chunks of two, on two workers
    plans = list(fused._worker_plans.values())
    assert plans and all(plan.tensors[name].shape[0] == 1 and plan.program.workers == 1
                         for plan in plans for name in banded)


def test_steady_state_allocates_no_activation_buffers():
    fused = fused_model("mobilenet_v3_small", 1.0)
    # every thread count the calls below may use, pinned and warmed up first: the governor's
    # probe of another count would start helper threads (and load their code) inside the window
    fused.set_threads(numba.config.NUMBA_NUM_THREADS, adaptive=False)
    x = np.random.default_rng(0).standard_normal((2, 96, 96, 3)).astype(np.float32)
    fused(x)
    fused(x)
    plan = fused._plan
    smallest_activation = min(v.nbytes for k, v in plan.tensors.items() if v.ndim == 4)
    gc.collect()
    tracemalloc.start()
    try:
        fused(x)
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        outputs = [fused(x) for _ in range(5)]
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    logits_bytes = outputs[0].nbytes
    # the only new arrays are the returned logits (kept alive here); no per-call activation arrays
    print(f"5 calls: {after - before} bytes kept, {peak - before} bytes peak; smallest activation "
          f"{smallest_activation} bytes, logits {logits_bytes} bytes")
    assert after - before <= 5 * (logits_bytes + 512)
    assert peak - before < min(smallest_activation, 6 * (logits_bytes + 512))
    assert fused._plan is plan and all(b is c for b, c in zip(fused._plan.buffers, plan.buffers))


def test_replan_when_the_shape_changes():
    model = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=10).eval()
    fused = model.fuse()
    rng = np.random.default_rng(1)
    for shape in ((1, 32, 32, 3), (4, 32, 32, 3), (1, 64, 48, 3), (1, 32, 32, 3)):
        x = rng.standard_normal(shape).astype(np.float32)
        y = fused(x)
        assert fused._plan.input_shape == shape
        assert np.abs(y - model(x)).max() <= 1e-4 * np.abs(model(x)).max()


def test_costs_cover_every_layer():
    fused = fused_model("mobilenet_v3_large", 1.0)
    costs = MemoryPlan.costs(fused.layers, (1, 224, 224, 3))
    assert [c[0] for c in costs] == [layer.name for layer in fused.layers]
    assert all(c[3] > 0 for c in costs) and all(c[2] >= 0 for c in costs)
    # a depthwise layer does ~1/Cout the MACs of a pointwise one on the same activation but moves
    # as many bytes: it is the memory-bound kind (V1 paper, sec. 3.1)
    intensity = {c[0]: c[2] / c[3] for c in costs}
    assert intensity["blocks.12.conv_dw"] < 0.25 * intensity["blocks.12.conv_pw"]


def test_planned_peak_bytes_checks_arguments():
    model = npmobilenet.build("mobilenet_v3_small", width=0.35)
    with pytest.raises(ValueError, match="at least 32x32"):
        planned_peak_bytes(model, 16)
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        planned_peak_bytes(model, 224, batch=0)
    assert planned_peak_bytes(model, 224) > 0          # works in training mode too: shapes only


@pytest.mark.parametrize("threads", [1, 2])
def test_chunked_batches_hold_the_planned_bytes(threads):
    fused = fused_model("mobilenet_v3_small", 0.5)
    fused.chunk_pixels = 2 * 40 * 40           # chunks of two 40x40 images
    fused.adaptive = False
    fused.set_threads(min(threads, numba.config.NUMBA_NUM_THREADS), adaptive=False)
    x = np.random.default_rng(2).standard_normal((6, 40, 40, 3)).astype(np.float32)
    fused(x)
    assert fused._plan is None and fused._worker_plans       # ran in chunks
    expected = planned_peak_bytes(fused, 40, 6, threads=fused.threads)
    assert fused.activation_bytes <= expected
    if fused.threads == 1:
        assert fused.activation_bytes == expected
