"""`model.fuse()`: the fused model equals the unfused eval-mode model, and refuses what it cannot do."""
import zlib

import numba
import numpy as np
import pytest

import npmobilenet
from npmobilenet.analysis.summary import summarize
from npmobilenet.inference import FusedMobileNet, fold_batch_norm, fuse_model
from npmobilenet.inference.threads import ThreadGovernor
from npmobilenet.layers import BatchNorm, PointwiseConv2d


def randomize_batch_norm(model, rng):
    """Running statistics and affine parameters far from their initial values, so a wrong fold shows."""
    for _, layer in model.modules():
        if isinstance(layer, BatchNorm):
            c = layer.channels
            layer.running_mean[...] = rng.standard_normal(c) * 0.2
            layer.running_var[...] = rng.random(c) + 0.5
            layer.gamma.data[...] = rng.random(c) + 0.5
            layer.beta.data[...] = rng.standard_normal(c) * 0.2
    return model


def relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("arch", npmobilenet.ARCHS)
@pytest.mark.parametrize("width", [0.35, 0.5, 1.0])
def test_fused_equals_unfused_eval(arch, width):
    rng = np.random.default_rng(zlib.crc32(f"{arch} {width}".encode()))
    model = randomize_batch_norm(npmobilenet.build(arch, width=width, num_classes=10, seed=1), rng).eval()
    fused = model.fuse()
    assert isinstance(fused, FusedMobileNet)
    for shape in ((2, 32, 32, 3), (1, 40, 56, 3)):
        x = rng.standard_normal(shape).astype(np.float32)
        expected = model(x)
        actual = fused(x)
        err = relative_error(actual, expected)
        print(f"{arch} width {width} {shape}: max relative difference {err:.2e}")
        assert actual.shape == expected.shape and actual.dtype == np.float32
        assert err < 1e-4


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_batches_run_in_chunks_equal_the_unfused_model(arch):
    rng = np.random.default_rng(5)
    model = randomize_batch_norm(npmobilenet.build(arch, width=0.5, num_classes=10), rng).eval()
    fused = model.fuse()
    fused.chunk_pixels = 2 * 32 * 32            # chunks of two 32x32 images: 2 + 2 + 1
    x = rng.standard_normal((5, 32, 32, 3)).astype(np.float32)
    expected = model(x)
    results = []
    for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
        fused.set_threads(threads, adaptive=False)
        results.append(fused(x))
        assert fused._worker_plans and fused.last_threads == threads
    assert relative_error(results[0], expected) < 1e-4
    for r in results[1:]:
        assert np.array_equal(r, results[0]), "chunked results differ between thread counts"
    fused.chunk_pixels = 10**9                  # the whole batch through one plan
    assert relative_error(fused(x), expected) < 1e-4


def test_fused_model_is_a_copy():
    model = npmobilenet.build("mobilenet_v3_small", width=0.5, num_classes=5).eval()
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    fused = model.fuse()
    before = fused(x)
    for p in model.parameters():
        p.data[...] = 0
    assert np.array_equal(fused(x), before)


def test_fold_batch_norm_matches_conv_then_bn():
    rng = np.random.default_rng(1)
    conv = PointwiseConv2d(6, 5, bias=True, rng=rng)
    conv.bias.data[...] = rng.standard_normal(5)
    bn = BatchNorm(5, eps=1e-3)
    bn.running_mean[...] = rng.standard_normal(5)
    bn.running_var[...] = rng.random(5) + 0.1
    bn.gamma.data[...] = rng.standard_normal(5)
    bn.beta.data[...] = rng.standard_normal(5)
    bn.eval()
    x = rng.standard_normal((2, 3, 3, 6)).astype(np.float32)
    w, b = fold_batch_norm(conv.weight.data, conv.bias.data, bn)
    assert w.dtype == np.float32 and b.dtype == np.float32
    expected = bn(conv(x))
    assert relative_error(np.einsum("nhwc,cd->nhwd", x, w) + b, expected) < 1e-5


def test_thread_count_changes_give_identical_results():
    model = randomize_batch_norm(npmobilenet.build("mobilenet_v3_large", width=0.5, num_classes=10),
                                 np.random.default_rng(2)).eval()
    x = np.random.default_rng(3).standard_normal((2, 48, 48, 3)).astype(np.float32)
    fused = model.fuse(threads=1)
    fused.adaptive = False
    # a low threshold so every layer runs its parallel build (the default keeps small ones serial)
    fused.parallel_min_macs = 0
    one = fused(x)
    results = [one]
    for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
        fused.set_threads(threads)
        results.append(fused(x))
        assert fused.last_threads == threads
    fused.set_threads(1)
    results.append(fused(x))
    for r in results[1:]:
        assert np.array_equal(r, one), "results differ between thread counts"
    # the adaptive governor switches thread counts between calls: same results
    fused.set_threads(None, adaptive=True)
    for _ in range(4):
        assert np.array_equal(fused(x), one)


def test_threads_follow_config_when_unset():
    from npmobilenet import config

    fused = npmobilenet.build("mobilenet_v3_small", width=0.35, num_classes=4).eval().fuse()
    fused.adaptive = False
    x = np.zeros((1, 32, 32, 3), np.float32)
    before = config.get_num_threads()
    try:
        for n in (1, numba.config.NUMBA_NUM_THREADS):
            config.set_num_threads(n)
            fused(x)
            assert fused.last_threads == n
    finally:
        config.set_num_threads(before)
    assert config.get_num_threads() == before


def test_fuse_refuses_training_mode():
    model = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=10)
    with pytest.raises(RuntimeError, match=r"eval mode.*model\.eval\(\)"):
        model.fuse()
    model.eval()
    model.blocks[2].train()     # one block left in training mode
    with pytest.raises(RuntimeError, match="blocks.2"):
        fuse_model(model)


def test_fused_model_has_no_backward_or_training():
    fused = npmobilenet.build("mobilenet_v1", width=0.25, num_classes=3).eval().fuse()
    x = np.zeros((1, 32, 32, 3), np.float32)
    logits = fused(x)
    with pytest.raises(RuntimeError, match="inference-only: it has no backward pass"):
        fused.backward(np.ones_like(logits))
    with pytest.raises(RuntimeError, match="cannot be put in training mode"):
        fused.train()
    assert fused.eval() is fused and fused.training is False


@pytest.mark.parametrize("bad", [
    [[1.0]],                                     # not an array
    np.zeros((1, 32, 32, 3), np.int32),          # integer images
    np.zeros((32, 32, 3), np.float32),           # no batch axis
    np.zeros((1, 3, 32, 32), np.float32),        # NCHW
    np.zeros((0, 32, 32, 3), np.float32),        # empty batch
    np.zeros((1, 31, 32, 3), np.float32),        # too small
])
def test_fused_model_validates_input_like_the_model(bad):
    model = npmobilenet.build("mobilenet_v3_small", width=0.35, num_classes=4).eval()
    fused = model.fuse()
    with pytest.raises((TypeError, ValueError)) as unfused_error:
        model(bad)
    with pytest.raises(type(unfused_error.value)) as fused_error:
        fused(bad)
    assert str(fused_error.value) == str(unfused_error.value)


def test_float64_and_strided_inputs():
    model = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=4).eval()
    fused = model.fuse()
    x = np.random.default_rng(4).standard_normal((2, 40, 40, 3))
    expected = fused(x.astype(np.float32))
    assert relative_error(fused(x), expected) < 1e-6
    assert relative_error(fused(np.asfortranarray(x)), expected) < 1e-6


def test_threads_argument_is_checked():
    model = npmobilenet.build("mobilenet_v3_small", width=0.35, num_classes=4).eval()
    with pytest.raises(ValueError, match="threads must be between 1 and"):
        model.fuse(threads=0)
    with pytest.raises(TypeError, match="threads must be an int or None"):
        model.fuse(threads=1.5)


@pytest.mark.parametrize("arch", npmobilenet.ARCHS)
def test_fused_macs_equal_the_analytic_count(arch):
    # two derivations: the fused layers' shapes, and the per-op formulas over the unfused model
    model = npmobilenet.build(arch).eval()
    fused = model.fuse()
    for resolution, batch in ((224, 1), (160, 3)):
        assert fused.macs(resolution, batch) == summarize(model, resolution, batch).macs


def test_governor_falls_back_to_one_thread_and_probes():
    governor = ThreadGovernor(probe_interval=4, max_interval=16)
    seconds = {2: 0.010, 1: 0.015}              # quiet machine: two threads faster
    chosen = []
    for i in range(40):
        n = governor.choose(2)
        chosen.append(n)
        governor.record(n, 10.0 if i == 0 else seconds[n])   # the first call allocates: ignored
    # skips the first call, then measures both three times; a two-thread call right after a
    # one-thread call is not counted (the helpers were idle: SETTLE, here one 10 ms call)
    assert chosen[:9] == [2, 2, 1, 2, 2, 1, 2, 2, 1]
    # on two threads, one thread is probed (two calls) only every max_interval calls: the
    # helpers idle through each probe, and the two-thread calls after it wait for them to wake
    assert chosen[10:].count(1) <= 2
    seconds[2] = 0.200                          # another process takes a core
    chosen = []
    for _ in range(60):
        n = governor.choose(2)
        chosen.append(n)
        governor.record(n, seconds[n])
    assert chosen[-20:].count(1) >= 17          # runs on one thread, probing two now and then (a probe:
    #                                             one call uncounted while the helpers wake, two counted)
    seconds[2] = 0.010                          # the load goes away
    for _ in range(60):
        n = governor.choose(2)
        governor.record(n, seconds[n])
    assert governor.choose(2) == 2
    # slow calls among fast ones do not flip the choice (the fastest of the last three)
    governor.record(2, 1.0)
    governor.record(2, 1.0)
    assert governor.estimate[2] < governor.estimate[1]
    assert ThreadGovernor().choose(1) == 1


def test_governor_discounts_two_thread_calls_while_idle_helpers_wake():
    # V3-Small's pattern in benchmarks/threads.py: two-thread calls take 1.1 ms, but 2.5 ms for four
    # calls after the helpers idled (calls on one thread, 1.9 ms, or a pause of 0.1 s). Counted,
    # those calls sent it to one thread for good; discounted (10 ms of them), it stays on two, and
    # still falls back when two threads are slow throughout (a core held by another process).
    def run(two_thread_ms_when_warm, calls=600):
        governor, now, cold, on_one = ThreadGovernor(), 0.0, 0, 0
        for i in range(calls):
            if i % 30 == 0:
                now, cold = now + 0.1, 4
            n = governor.choose(2)
            if n == 1:
                seconds, cold = 0.0019, 4
            else:
                seconds, cold = (0.0025 if cold > 0 else two_thread_ms_when_warm / 1e3), cold - 1
            now += seconds
            governor.record(n, seconds, now)
            now += 30e-6                            # Python between calls
            on_one += n == 1
        return on_one / calls

    assert run(1.1) < 0.1                           # warm-up and probes
    assert run(3.0) > 0.8                           # two threads slower than one: falls back


def test_governor_is_not_decided_by_one_slow_first_call():
    # the first two-thread call after a start is slow (helper threads starting, cold caches):
    # three samples of each count come before the first choice, so two threads still win
    governor = ThreadGovernor()
    two_thread_calls = iter([0.030] + [0.010] * 100)
    governor.choose(2)
    governor.record(2, 10.0)                    # the first call allocates: ignored
    for _ in range(6):
        n = governor.choose(2)
        governor.record(n, next(two_thread_calls) if n == 2 else 0.015)
    assert [governor.choose(2) for _ in range(3)] == [2, 2, 2]


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "mobilenet_v4_conv_small"])
def test_packed_and_openblas_tiles_agree(arch, monkeypatch):
    # where the CPU has AVX-512 or AVX2, pointwise and standard convolutions run the register tile
    # on packed weights (ops/register_tile.py); NPMOBILENET_NO_AVX512=1 keeps OpenBLAS's tiles. Both
    # equal the unfused model, and each is the same bits on 1 and 2 threads.
    from npmobilenet.inference.program import CONV_DIRECT, CONV_PACKED, OTHER_TILE, POINTWISE_PACKED, _slot
    from npmobilenet.ops import depthwise_avx512, register_tile

    rng = np.random.default_rng(12)
    model = randomize_batch_norm(npmobilenet.build(arch, width=0.75, num_classes=10, seed=2), rng).eval()
    x = rng.standard_normal((2, 48, 48, 3)).astype(np.float32)
    expected = model(x)
    slots, other = {}, {}
    for flag in ("1", "0"):
        monkeypatch.setenv("NPMOBILENET_NO_AVX512", flag)
        fused = model.fuse()
        outputs = []
        for threads in (1, 2):
            fused.set_threads(threads, adaptive=False)
            outputs.append(fused(x))
        assert np.array_equal(outputs[0], outputs[1])
        assert relative_error(outputs[0], expected) < 1e-4
        program = fused.plan(x.shape).program
        slots[flag], other[flag] = {_slot(row) for row in program.ops}, program.addresses[OTHER_TILE]
    assert POINTWISE_PACKED not in slots["1"] and CONV_PACKED not in slots["1"] and CONV_DIRECT in slots["1"]
    assert other["1"] != 0                  # OpenBLAS's kinds: the dispatch of the other kinds compiled
    if register_tile.available():    # every standard convolution packed, the stem too
        assert POINTWISE_PACKED in slots["0"] and CONV_PACKED in slots["0"] and CONV_DIRECT not in slots["0"]
    if register_tile.available() and depthwise_avx512.enabled():
        assert other["0"] == 0              # every kind a register tile's (or SE, gating, pooling): not compiled


@pytest.mark.parametrize("packed", [False, True])
def test_packed_layers_hold_their_weight_once(packed):
    # a packed layer keeps only the slivers; `weight` is rebuilt from them, equal to what it was given
    from npmobilenet.inference.layers import FusedConv2d, FusedPointwise

    rng = np.random.default_rng(13)
    conv_w, pw_w, b = (rng.standard_normal(s).astype(np.float32) for s in ((3, 3, 5, 24), (40, 24), (24,)))
    for layer, w in ((FusedConv2d("c", ("x",), ("y",), conv_w, b, "relu", (1, 1), (1, 1, 1, 1), packed=packed), conv_w),
                     (FusedPointwise("p", ("x",), ("y",), pw_w, b, None, packed=packed), pw_w)):
        assert np.array_equal(layer.weight, w)
        assert layer.weight_bytes() == w.nbytes + b.nbytes
        assert layer.weight_names == (("weight_packed", "bias") if packed else ("weight", "bias"))
        assert not packed or "_weight" not in vars(layer)


def test_chunks_stop_at_the_pooled_features_and_the_classifier_runs_over_the_batch():
    from npmobilenet.inference.layers import FusedGlobalPool, FusedLinear
    from npmobilenet.inference.model import classifier_start
    rng = np.random.default_rng(6)
    model = randomize_batch_norm(npmobilenet.build("mobilenet_v3_small", width=0.5, num_classes=7), rng).eval()
    fused = model.fuse()
    start = classifier_start(fused.layers, fused.outputs)
    assert isinstance(fused.layers[start - 1], FusedGlobalPool)
    assert fused.classifier_layers and all(isinstance(layer, FusedLinear) for layer in fused.classifier_layers)
    fused.chunk_pixels = 2 * 32 * 32
    x = rng.standard_normal((5, 32, 32, 3)).astype(np.float32)
    logits = fused(x)
    assert fused._classifier_plan.input_shape == (5, fused.classifier_layers[0].in_features)
    assert all(plan.output.shape[1] == fused.classifier_layers[0].in_features for plan in fused._worker_plans.values())
    assert relative_error(logits, model(x)) < 1e-4
    # a network without a classifier after its pooling (LR-ASPP's maps) runs whole chunks
    seg = npmobilenet.build("lraspp_mobilenet_v3_large", width=0.35, num_classes=3).eval().fuse()
    assert classifier_start(seg.layers, seg.outputs) is None and seg.chunk_layers == seg.layers
