"""The fast int8 path bit for bit against `ops.reference_int8`: the vectorised depthwise kernel
(its 3x3 interior path and the general one, left and right shifts), the standard convolution as
im2col + pointwise, the vector add, the residual add fused into the packed pointwise kernels, the
right-shift-only requantization, the VBMI table lookup, every kernel in the op table (`qprogram.py`) split into tiles,
and whole models run on a plan (`qplan.Int8Plan`) at 1 and 2 threads, on the table and from
Python, in both modes."""
import numba
import numpy as np
import pytest

import npmobilenet
from npmobilenet import config
from npmobilenet.compression import qkernels, qprogram, vnni
from npmobilenet.compression.qplan import Int8Plan
from npmobilenet.compression.qops import quantize_multiplier, quantize_multipliers
from npmobilenet.compression.quantize import quantize
from npmobilenet.ops import reference_int8 as qreference
from npmobilenet.ops.vector16 import has_avx2

needs_vnni = pytest.mark.skipif(not vnni.has_vnni(), reason="this CPU has no AVX-512 VNNI (avx512vnni, avx512bw)")


def _int8(rng, shape):
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def _requant_args(rng, cout, largest):
    # multipliers up to `largest`: above 1, requantization shifts left (and saturates)
    bias = rng.integers(-5000, 5000, cout).astype(np.int32)
    multiplier, shift = quantize_multipliers(np.exp(rng.uniform(np.log(1e-4), np.log(largest), cout)))
    zy = int(rng.integers(-128, 128))
    lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2))
    return bias, multiplier, shift, zy, lo, hi


@pytest.mark.parametrize("largest", [0.5, 4.0])
@pytest.mark.parametrize("n, h, w, c, k, stride, padding, dilation", [
    (1, 9, 7, 20, 3, 1, (1, 1, 1, 1), 1),     # 3x3: interior rows and columns, and the edges
    (2, 8, 8, 33, 3, 2, (0, 1, 0, 1), 1),     # TF 'same' at stride 2: padding after only
    (1, 3, 3, 17, 3, 1, (1, 1, 1, 1), 1),     # no interior at all
    (2, 8, 9, 40, 5, 2, (2, 2, 2, 2), 1),     # 5x5: the general path
    (1, 12, 12, 7, 3, 1, (2, 2, 2, 2), 2),    # dilated 3x3: the general path
    (1, 6, 5, 1, 3, 2, (1, 1, 1, 1), 1),      # one channel: a vector of one lane
])
def test_depthwise_kernel_matches_reference(n, h, w, c, k, stride, padding, dilation, largest):
    rng = np.random.default_rng(h * 100 + c)
    x, wt = _int8(rng, (n, h, w, c)), _int8(rng, (k, k, c))
    zx = int(rng.integers(-128, 128))
    args = _requant_args(rng, c, largest)
    geometry = ((stride, stride), padding, (dilation, dilation))
    expected = qreference.depthwise_conv2d(x, zx, wt, *args, *geometry)
    assert np.array_equal(qkernels.depthwise_conv2d_int8(x, zx, wt, *args, *geometry, expected.shape), expected)
    rows = n * expected.shape[1]
    for chunks in (1, 3, rows):    # the parallel driver, any split of the rows
        y = np.zeros_like(expected)
        bias, multiplier, shift, zy, lo, hi = args
        qkernels._depthwise_int8_parallel(x, np.int32(zx), wt, bias, multiplier, shift, np.int32(zy), np.int32(lo),
                                          np.int32(hi), stride, stride, padding[0], padding[2], dilation, dilation, y,
                                          chunks)
        assert np.array_equal(y, expected)


# kernel rows of 9 to 120 bytes (gathered 64 at a time: one masked piece, or two), padding rows
@pytest.mark.parametrize("cin, k, stride, padding", [(3, 3, 2, (0, 1, 0, 1)), (5, 3, 1, (1, 1, 1, 1)), (2, 1, 1, (0, 0, 0, 0)),
                                                     (40, 3, 1, (1, 1, 1, 1)), (24, 3, 2, (1, 1, 1, 1))])
def test_standard_convolution_as_im2col_matches_reference(cin, k, stride, padding):
    rng = np.random.default_rng(cin)
    x, wt = _int8(rng, (2, 9, 8, cin)), _int8(rng, (k, k, cin, 21))
    zx = int(rng.integers(-128, 128))
    args = _requant_args(rng, 21, 0.5)
    geometry = ((stride, stride), padding, (1, 1))
    expected = qreference.conv2d(x, zx, wt, *args, *geometry)
    assert np.array_equal(qkernels.conv2d_int8(x, zx, wt, *args, *geometry, expected.shape), expected)


def _add_multipliers(rng):
    sa, sb, sy = np.exp(rng.uniform(-4, 0, 3))
    twice_max = 2 * max(sa, sb)
    return (quantize_multiplier(sa / twice_max), quantize_multiplier(sb / twice_max),
            quantize_multiplier(twice_max / (2**20 * sy)))


@pytest.mark.parametrize("size", [1, 15, 16, 17, 100])
def test_vector_add_matches_reference(size):
    rng = np.random.default_rng(size)
    a, b = _int8(rng, (size,)), _int8(rng, (size,))
    za, zb, zy = (int(v) for v in rng.integers(-128, 128, 3))
    (ma, sa), (mb, sb), (my, sy) = _add_multipliers(rng)
    expected = qreference.add(a, za, ma, sa, b, zb, mb, sb, 20, zy, my, sy)
    assert np.array_equal(qkernels.add_int8(a, za, ma, sa, b, zb, mb, sb, 20, zy, my, sy), expected)


@pytest.mark.skipif(not (vnni.has_vnni() or has_avx2()), reason="this CPU has neither AVX-512 VNNI nor AVX2")
@pytest.mark.parametrize("rows, cin, cout", [(1, 8, 16), (70, 24, 33), (9, 61, 5)])
def test_residual_add_fused_into_the_packed_kernel_matches_reference(rows, cin, cout, monkeypatch):
    # the fused add runs on the packed kernels only (VNNI's, the int16 pairs')
    monkeypatch.setenv("NPMOBILENET_NO_VNNI", "0")
    monkeypatch.setenv("NPMOBILENET_NO_PAIRS", "0")
    rng = np.random.default_rng(rows + cin)
    x, w, residual = _int8(rng, (rows, cin)), _int8(rng, (cin, cout)), _int8(rng, (rows, cout))
    zx, zb, zo = (int(v) for v in rng.integers(-128, 128, 3))
    args = _requant_args(rng, cout, 0.05)
    (ma, sa), (mb, sb), (my, sy) = _add_multipliers(rng)
    conv = qreference.pointwise(x, zx, w, *args)
    expected = qreference.add(conv, args[3], ma, sa, residual, zb, mb, sb, 20, zo, my, sy)
    y = np.zeros_like(expected)
    kernel, call_args = qkernels.pointwise_int8_call(x, zx, w, *args, y, residual,
                                                     qkernels.add_params(zb, ma, sa, mb, sb, zo, my, sy))
    kernel(*call_args)
    assert np.array_equal(y, expected)


@pytest.mark.parametrize("scale", [0.003, 0.7, 3.5])     # right shifts, and a left one (M > 1)
def test_vector_channel_scale_matches_reference(scale):
    rng = np.random.default_rng(int(scale * 1000))
    x, g = _int8(rng, (2, 5, 7, 37)), _int8(rng, (2, 37))
    m, e = quantize_multiplier(scale)
    assert np.array_equal(qkernels.channel_scale_int8(x, 3, g, -11, m, e, 4),
                          qreference.channel_scale(x, 3, g, -11, m, e, 4))


@pytest.mark.skipif(not vnni.has_vbmi(), reason="this CPU has no AVX-512 VBMI")
@pytest.mark.parametrize("size", [1, 63, 64, 65, 256, 1000])
def test_vbmi_lookup_matches_reference(size):
    rng = np.random.default_rng(size)
    x = np.resize(np.arange(-128, 128, dtype=np.int8), size)       # every value, in order
    rng.shuffle(x)
    table = _int8(rng, (256,))
    y = np.zeros_like(x)
    qkernels._lookup_int8_vbmi(x, table, y)
    assert np.array_equal(y, qreference.lookup(x, table))


@numba.njit
def _requantize_right(acc, multiplier, shift, zy, lo, hi, y):
    for c0 in range(0, acc.shape[0], 16):
        q = vnni.requantize16_right(vnni.load16(acc, c0), vnni.load16(multiplier, c0), vnni.load16(shift, c0), zy, lo, hi)
        vnni.store16_int8(y, c0, q, min(16, acc.shape[0] - c0))


def test_right_shift_requantization_matches_reference():
    rng = np.random.default_rng(3)
    lanes = 16 * 1024
    acc = rng.integers(-(2**31), 2**31 - 1, lanes, endpoint=True).astype(np.int32)
    acc[:3] = [-(2**31), 2**31 - 1, 0]
    multiplier = rng.integers(-(2**31), 2**31 - 1, lanes, endpoint=True).astype(np.int32)
    multiplier[:2] = -(2**31)             # the one overflow of the high multiply
    shift = -rng.integers(0, 32, lanes).astype(np.int32)
    acc[16:16 * 257] = np.arange(-16 * 128, 16 * 128)     # small sums, with M0 = 2^30 and 3 * 2^29 many ties
    multiplier[16:16 * 257:2], multiplier[17:16 * 257:2] = 1 << 30, 3 << 29
    y = np.zeros(lanes, np.int8)
    _requantize_right(acc, multiplier, shift, 5, -100, 120, y)
    assert np.array_equal(y, qreference.to_int8(acc, multiplier, shift, 5, -100, 120))


@pytest.mark.parametrize("kernels", ["packed", "portable"])
def test_op_table_runs_every_kernel_in_tiles(kernels, monkeypatch):
    # shapes that split every kind into several tiles, the last one partial; the CPU's packed
    # pointwise kernel (VNNI's, or the pairs' with AVX2) or the portable one
    monkeypatch.setenv("NPMOBILENET_NO_VNNI", "0" if kernels == "packed" else "1")
    monkeypatch.setenv("NPMOBILENET_NO_PAIRS", "0" if kernels == "packed" else "1")
    rng = np.random.default_rng(11)
    n, h, w, c, cout = 2, 23, 29, 24, 40
    shapes = {"x": (n, h, w, c), "cols": (n, 11, 14, 27), "conv": (n, 11, 14, cout), "dw": (n, h, w, c),
              "pw": (n, h, w, cout), "res": (n, h, w, cout), "look": (n, h, w, cout), "add": (n, h, w, cout),
              "gate": (n, cout), "scaled": (n, h, w, cout), "mean": (n, cout)}
    starts = np.cumsum([0] + [qprogram.Arena.size(np.prod(s)) for s in shapes.values()])
    arena = qprogram.Arena(starts[-1])
    b = {name: arena.at(start, shape) for (name, shape), start in zip(shapes.items(), starts)}
    b["x"][...], b["res"][...], b["gate"][...] = _int8(rng, shapes["x"]), _int8(rng, shapes["res"]), _int8(rng, (n, cout))
    x3, wt3 = b["x"][..., :3].copy(), _int8(rng, (3, 3, 3, cout))
    wdw, wpw, table = _int8(rng, (3, 3, c)), _int8(rng, (c, cout)), _int8(rng, (256,))
    conv_args, dw_args, pw_args = (_requant_args(rng, k, 0.5) for k in (cout, c, cout))
    (ma, sa), (mb, sb), (my, sy) = _add_multipliers(rng)
    stem = qprogram.Arena(qprogram.Arena.size(x3.size))  # the stem's input: another array, copied as a constant
    x3a = stem.at(0, x3.shape)
    x3a[...] = x3
    geometry = ((2, 2), (0, 1, 0, 1), (1, 1))
    calls = (qkernels.conv2d_int8_calls(x3a, 5, wt3, *conv_args, *geometry, b["cols"], b["conv"])
             + [qkernels.depthwise_conv2d_int8_call(b["x"], 3, wdw, *dw_args, (1, 1), (1, 1, 1, 1), (1, 1), b["dw"]),
                qkernels.pointwise_int8_call(b["dw"].reshape(-1, c), -7, wpw, *pw_args, b["pw"].reshape(-1, cout)),
                qkernels.lookup_int8_call(b["pw"], table, b["look"]),
                qkernels.add_int8_call(b["look"], 4, ma, sa, b["res"], -9, mb, sb, 20, 2, my, sy, -128, 127, b["add"]),
                qkernels.channel_scale_int8_call(b["add"], 1, b["gate"], -3, *quantize_multiplier(0.01), 6, b["scaled"]),
                qkernels.mean_int8_call(b["scaled"], 6, *quantize_multiplier(1 / (h * w)), -1, b["mean"])])
    expected = {"conv": qreference.conv2d(x3, 5, wt3, *conv_args, *geometry),
                "dw": qreference.depthwise_conv2d(b["x"], 3, wdw, *dw_args, (1, 1), (1, 1, 1, 1), (1, 1))}
    expected["pw"] = qreference.pointwise(expected["dw"].reshape(-1, c), -7, wpw, *pw_args).reshape(shapes["pw"])
    expected["look"] = qreference.lookup(expected["pw"], table)
    expected["add"] = qreference.add(expected["look"], 4, ma, sa, b["res"], -9, mb, sb, 20, 2, my, sy)
    expected["scaled"] = qreference.channel_scale(expected["add"], 1, b["gate"], -3, *quantize_multiplier(0.01), 6)
    expected["mean"] = qreference.mean(expected["scaled"], 6, *quantize_multiplier(1 / (h * w)), -1)
    tiles = {}
    # tiled for two workers (every kind in several tiles) and for one (fewer, larger tiles: the
    # same integers); each table run on one and on two threads
    for workers in (2, 1):
        program = qprogram.build(calls, arena, workers)
        assert program is not None
        tiles[workers] = program.ops[:, qprogram.TILES]
        whole = program.arena.view(np.int8)
        out = {name: whole[arena.offset(a):arena.offset(a) + a.size].reshape(a.shape) for name, a in b.items()}
        for threads in (1, 2, 1):
            for name in expected:
                out[name][...] = 0
            program.run(threads)
            for name, want in expected.items():
                assert np.array_equal(out[name], want), (name, workers, threads)
    assert all(t > 1 for t in tiles[2][1:])
    assert np.all(tiles[1] <= tiles[2]) and tiles[1].sum() < tiles[2].sum()


def test_op_table_declines_a_call_it_has_no_kernel_for():
    arena = qprogram.Arena(64)
    assert qprogram.build([(print, ("not a kernel",))], arena) is None


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (3, 40, 40, 3)).astype(np.float32)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_whole_models_on_a_plan_match_reference(arch, images, monkeypatch):
    model = npmobilenet.build(arch, width=0.35, num_classes=10, seed=1).eval()
    qmodel = quantize(model, images)
    xq = qmodel.quantize_input(images[:2])
    expected = qreference.run_graph(qmodel, xq)[qmodel.output]
    threads = config.get_num_threads()
    try:
        for parallel_min_macs, count in ((config.PARALLEL_MIN_MACS, 1), (0, 2), (0, 1)):
            monkeypatch.setattr(config, "PARALLEL_MIN_MACS", parallel_min_macs)
            config.set_num_threads(min(count, threads))
            for integer_only in (True, False):
                qmodel.integer_only = integer_only
                first = qmodel.run(xq)
                assert np.array_equal(first, expected), (arch, parallel_min_macs, count, integer_only)
                qmodel.run(xq[:1])                        # another shape: its own plan
                assert np.array_equal(qmodel.run(xq), expected) and np.array_equal(first, expected)  # not aliased
    finally:
        config.set_num_threads(threads)
    qmodel.integer_only = True
    plan = qmodel.plan(xq.shape)
    assert bool(plan.fused) == vnni.packed_enabled()  # the residual adds fused where a packed kernel runs
    assert plan.program is not None                   # integer-only: on the table (without VNNI, the exact
    #                                                   float paths of integer_only=False run call by call)
    by_call = Int8Plan(qmodel, xq.shape, table=False)  # and from Python, call by call
    assert by_call.program is None and np.array_equal(by_call.run(xq), expected)


def test_plan_reuses_activation_memory(images):
    # a tensor's bytes serve a later one once its last reader has run; the results stay the
    # reference's (the whole-model test above), and no op reads bytes another op of it rewrote
    model = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=10, seed=1).eval()
    qmodel = quantize(model, images)
    xq = qmodel.quantize_input(images)
    plan = Int8Plan(qmodel, xq.shape)
    every = sum(buffer.nbytes for buffer in plan.buffers.values())
    assert plan.activation_bytes < every / 2
    assert np.array_equal(plan.run(xq, 2), qreference.run_graph(qmodel, xq)[qmodel.output])
