"""Int8 quantization: integer kernels bit for bit against the slow reference, fixed-point
requantization against exact arithmetic, the whole integer graph against its float original,
and every bad input named."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npmobilenet
from npmobilenet import config
from npmobilenet.compression import calibrate as cal
from npmobilenet.compression import qexact, qkernels, vnni
from npmobilenet.ops import reference_int8 as qreference
from npmobilenet.ops.vector16 import has_avx2
from npmobilenet.compression.qmodel import QuantizedModel
from npmobilenet.compression.qops import quantize_multiplier
from npmobilenet.compression.quantize import fold_model, quantize, quantize_weight


def _int8(rng, shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


def _random_stats(model, seed=1):
    """Non-trivial batch-norm statistics, so folding has something to fold."""
    rng = np.random.default_rng(seed)
    for name, buf in model.named_buffers():
        buf[...] = rng.normal(0, 0.2, buf.shape) if name.endswith("running_mean") else rng.uniform(0.5, 2, buf.shape)
    for _, p in model.named_parameters():
        if p.data.ndim == 1 and not p.decay:
            p.data[...] += rng.normal(0, 0.1, p.shape).astype(p.data.dtype)
    return model


# -- fixed-point arithmetic -----------------------------------------------------------------------
def test_high_mul_is_round_half_up_of_the_exact_product():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a, b = (int(v) for v in rng.integers(-(2**31), 2**31, 2))
        exact = Fraction(a * b, 2**31)
        expected = (exact + Fraction(1, 2)).__floor__()
        assert qkernels.saturating_rounding_doubling_high_mul(a, b) == expected == int(qreference.srdhm(a, b))
    # the one overflow saturates
    assert qkernels.saturating_rounding_doubling_high_mul(-(2**31), -(2**31)) == 2**31 - 1


@pytest.mark.parametrize("x", [-7, -6, -5, -3, -2, -1, 0, 1, 2, 3, 5, 6, 7, 2**31 - 1, -(2**31)])
@pytest.mark.parametrize("exponent", [0, 1, 2, 3, 31])
def test_rounding_divide_by_pot_rounds_half_away_from_zero(x, exponent):
    exact = Fraction(x, 2**exponent)
    magnitude = (abs(exact) + Fraction(1, 2)).__floor__()
    expected = magnitude if x >= 0 else -magnitude
    assert qkernels.rounding_divide_by_pot(x, exponent) == expected == int(qreference.rdbpot(x, exponent))


def test_requantization_matches_the_reference_and_the_real_product():
    rng = np.random.default_rng(1)
    for _ in range(500):
        real = float(np.exp(rng.uniform(np.log(1e-6), np.log(8.0))))
        m0, shift = quantize_multiplier(real)
        assert 2**30 <= m0 < 2**31
        assert abs(m0 * 2.0 ** (shift - 31) - real) <= real * 2.0**-30
        acc = int(rng.integers(-(2**20), 2**20))
        got = qkernels.multiply_by_quantized_multiplier(acc, m0, shift)
        assert got == int(qreference.requantize(acc, m0, shift))
        assert abs(got - acc * real) <= 1.0 + abs(acc * real) * 2.0**-29  # one rounding (two at most)
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(2.0**-40) == (0, 0)
    with pytest.raises(ValueError, match="finite"):
        quantize_multiplier(float("nan"))


# -- integer kernels: bit for bit against the reference ----------------------------------------------
def _requant_args(rng, cout, k):
    bias = rng.integers(-5000, 5000, cout).astype(np.int32)
    reals = np.exp(rng.uniform(np.log(1e-4), np.log(0.05), cout)) / np.sqrt(k)
    multiplier = np.array([quantize_multiplier(r)[0] for r in reals], np.int32)
    shift = np.array([quantize_multiplier(r)[1] for r in reals], np.int32)
    zy = int(rng.integers(-128, 128))
    lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2))
    return bias, multiplier, shift, zy, lo, hi


conv_cases = st.fixed_dictionaries(dict(
    n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9), cin=st.integers(1, 5), cout=st.integers(1, 6),
    k=st.sampled_from([1, 3, 5]), stride=st.integers(1, 2), dilation=st.integers(1, 2),
    pad=st.tuples(*[st.integers(0, 2)] * 4), seed=st.integers(0, 2**16),
))


def _geometry_fits(c):
    span = c["dilation"] * (c["k"] - 1) + 1
    t, b, l, r = c["pad"]
    return c["h"] + t + b >= span and c["w"] + l + r >= span


@given(conv_cases)
def test_conv2d_int8_matches_reference_bit_for_bit(c):
    if not _geometry_fits(c):
        return
    rng = np.random.default_rng(c["seed"])
    x = _int8(rng, (c["n"], c["h"], c["w"], c["cin"]))
    w = _int8(rng, (c["k"], c["k"], c["cin"], c["cout"]))
    zx = int(rng.integers(-128, 128))
    args = _requant_args(rng, c["cout"], c["k"] * c["k"] * c["cin"])
    geometry = ((c["stride"],) * 2, c["pad"], (c["dilation"],) * 2)
    expected = qreference.conv2d(x, zx, w, *args, *geometry)
    got = qkernels.conv2d_int8(x, zx, w, *args, *geometry, expected.shape)
    assert got.dtype == np.int8 and np.array_equal(got, expected)


@given(conv_cases)
def test_depthwise_int8_matches_reference_bit_for_bit(c):
    if not _geometry_fits(c):
        return
    rng = np.random.default_rng(c["seed"])
    x = _int8(rng, (c["n"], c["h"], c["w"], c["cin"]))
    w = _int8(rng, (c["k"], c["k"], c["cin"]))
    zx = int(rng.integers(-128, 128))
    args = _requant_args(rng, c["cin"], c["k"] * c["k"])
    geometry = ((c["stride"],) * 2, c["pad"], (c["dilation"],) * 2)
    expected = qreference.depthwise_conv2d(x, zx, w, *args, *geometry)
    got = qkernels.depthwise_conv2d_int8(x, zx, w, *args, *geometry, expected.shape)
    assert np.array_equal(got, expected)


@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 40), st.integers(0, 2**16))
def test_pointwise_int8_kernels_match_reference_bit_for_bit(rows, cin, cout, seed):
    # the public function (whichever kernel this CPU runs), the portable kernel and, on a CPU with
    # AVX-512 VNNI, the vpdpbusd one, with AVX2 the int16-pair one, each called directly
    rng = np.random.default_rng(seed)
    x, w = _int8(rng, (rows, cin)), _int8(rng, (cin, cout))
    zx = int(rng.integers(-128, 128))
    args = _requant_args(rng, cout, cin)
    bias, multiplier, shift, zy, lo, hi = args
    expected = qreference.pointwise(x, zx, w, *args)
    assert np.array_equal(qkernels.pointwise_int8(x, zx, w, *args), expected)
    requant = (np.int32(zy), np.int32(lo), np.int32(hi))
    y = np.zeros_like(expected)
    qkernels._pointwise_int8_rows(x, np.int32(zx), w, bias, multiplier, shift, *requant, y, 0, rows)
    assert np.array_equal(y, expected)
    if vnni.has_vnni():
        y = np.zeros_like(expected)
        qkernels._pointwise_int8_vnni_rows(x, *qkernels.vnni_arguments(w, zx, bias, multiplier, shift, pairs=False),
                                           *requant, qkernels.NO_RESIDUAL, qkernels.NO_ADD, qkernels.NO_FIELD, y, 0, rows)
        assert np.array_equal(y, expected)
    if has_avx2():
        y = np.zeros_like(expected)
        qkernels._pointwise_int8_pairs_rows(x, *qkernels.vnni_arguments(w, zx, bias, multiplier, shift, pairs=True),
                                            *requant, qkernels.NO_RESIDUAL, qkernels.NO_ADD, qkernels.NO_FIELD, y, 0, rows)
        assert np.array_equal(y, expected)


@pytest.mark.parametrize("channels", [16, 40, 96])
@pytest.mark.parametrize("k, stride", [(3, 1), (3, 2), (5, 1)])
def test_depthwise_int8_whole_and_partial_channel_blocks(channels, k, stride):
    # the portable kernel's 16-channel blocks: whole ones (plain byte loads and stores: no masked
    # byte access without AVX-512 BW) and a tail of 8 (masked), interior and border pixels
    rng = np.random.default_rng(channels + k + stride)
    x, w = _int8(rng, (2, 11, 9, channels)), _int8(rng, (k, k, channels))
    zx = int(rng.integers(-128, 128))
    args = _requant_args(rng, channels, k * k)
    geometry = ((stride, stride), (k // 2,) * 4, (1, 1))
    expected = qreference.depthwise_conv2d(x, zx, w, *args, *geometry)
    assert np.array_equal(qkernels.depthwise_conv2d_int8(x, zx, w, *args, *geometry, expected.shape), expected)

def test_parallel_drivers_match_the_serial_kernels(monkeypatch):
    monkeypatch.setattr(config, "PARALLEL_MIN_MACS", 0)
    rng = np.random.default_rng(3)
    x = _int8(rng, (2, 9, 7, 6))
    zx = 5
    args = _requant_args(rng, 6, 9)
    geometry = ((2, 1), (1, 1, 1, 1), (1, 1))
    w_dw, w_std, w_pw = _int8(rng, (3, 3, 6)), _int8(rng, (3, 3, 6, 6)), _int8(rng, (6, 6))
    expected = qreference.depthwise_conv2d(x, zx, w_dw, *args, *geometry)
    assert np.array_equal(qkernels.depthwise_conv2d_int8(x, zx, w_dw, *args, *geometry, expected.shape), expected)
    expected = qreference.conv2d(x, zx, w_std, *args, *geometry)
    assert np.array_equal(qkernels.conv2d_int8(x, zx, w_std, *args, *geometry, expected.shape), expected)
    x2 = x.reshape(-1, 6)
    expected = qreference.pointwise(x2, zx, w_pw, *args)
    assert np.array_equal(qkernels.pointwise_int8(x2, zx, w_pw, *args), expected)
    x3 = _int8(rng, (41, 6))  # chunks whose row counts are not multiples of 4
    assert np.array_equal(qkernels.pointwise_int8(x3, zx, w_pw, *args), qreference.pointwise(x3, zx, w_pw, *args))


# -- the exact float32 paths: the same integers, bit for bit ---------------------------------------
def test_vectorised_requantization_equals_the_scalar_one():
    rng = np.random.default_rng(4)
    size = 4000
    acc = rng.integers(-(2**31), 2**31, size, dtype=np.int64)
    acc[:8] = [-(2**31), 2**31 - 1, 0, 1, -1, 2**24, -(2**24), 12345]
    bias = rng.integers(-(2**20), 2**20, size).astype(np.int32)
    bias[:8] = 0
    multiplier = rng.integers(2**30, 2**31, size, dtype=np.int64).astype(np.int32)
    multiplier[8:16] = 0
    shift = rng.integers(-31, 31, size).astype(np.int32)
    acc32 = acc.astype(np.int32)
    for zy, lo, hi in ((0, -128, 127), (-7, 0, 90), (100, -128, 127)):
        y = np.empty(size, np.int8)
        qexact._requantize_row(acc32, bias, multiplier, shift, np.int64(zy), np.int64(lo), np.int64(hi), y)
        total = np.clip(acc32.astype(np.int64) + bias, -(2**31), 2**31 - 1)  # the reference adds in int32
        expected = [qkernels._requantize_store(np.int32(a), m, s, zy, lo, hi) for a, m, s in zip(total, multiplier, shift)]
        ok = (acc32.astype(np.int64) + bias == total)   # no int32 overflow in acc + bias
        assert np.array_equal(y[ok], np.array(expected, np.int64)[ok])


def test_exact_chunk_is_the_most_taps_float32_sums_exactly():
    w = np.array([[-127, 5], [3, 0]], np.int8)
    for zx in (-128, 0, 127):
        step = max(127 - zx, zx + 128) * 127
        chunk = qexact.exact_chunk(zx, w)
        assert chunk * step < 2**24 <= (chunk + 1) * step
    assert qexact.exact_chunk(0, np.zeros((3, 3), np.int8)) == (2**24 - 1) // 128


@given(st.integers(1, 300), st.integers(1, 40), st.integers(1, 24), st.integers(1, 50), st.integers(0, 2**16))
def test_pointwise_exact_path_matches_reference_bit_for_bit(rows, cin, cout, chunk, seed):
    rng = np.random.default_rng(seed)
    x, w = _int8(rng, (rows, cin)), _int8(rng, (cin, cout))
    if seed % 3 == 0:                       # the extremes: every product at its largest
        x[...], w[...] = -128, -127
    zx = int(rng.integers(-128, 128)) if seed % 3 else 127
    args = _requant_args(rng, cout, cin)
    expected = qreference.pointwise(x, zx, w, *args)
    wf = w.astype(np.float32)
    # any chunk no larger than exact_chunk is exact; small ones exercise the int32 sum of chunks
    for k_chunk in (min(chunk, qexact.exact_chunk(zx, w)), qexact.exact_chunk(zx, w)):
        assert np.array_equal(qexact.pointwise_int8_exact(x, zx, wf, k_chunk, *args), expected)


@given(conv_cases)
def test_conv_exact_paths_match_reference_bit_for_bit(c):
    if not _geometry_fits(c) or c["dilation"] != 1:
        return
    rng = np.random.default_rng(c["seed"])
    x = _int8(rng, (c["n"], c["h"], c["w"], c["cin"]))
    zx = int(rng.integers(-128, 128))
    geometry = ((c["stride"],) * 2, c["pad"], (1, 1))
    w = _int8(rng, (c["k"], c["k"], c["cin"], c["cout"]))
    args = _requant_args(rng, c["cout"], c["k"] * c["k"] * c["cin"])
    expected = qreference.conv2d(x, zx, w, *args, *geometry)
    got = qexact.conv2d_int8_exact(x, zx, w.astype(np.float32), *args, *geometry[:2], expected.shape)
    assert np.array_equal(got, expected)


def test_exact_paths_parallel_and_whole_models_match_reference(monkeypatch, images):
    from npmobilenet.compression import qops

    monkeypatch.setattr(config, "PARALLEL_MIN_MACS", 0)
    monkeypatch.setattr(qops, "EXACT_MIN_MACS", 0)       # every layer it can take on the float paths
    monkeypatch.setenv("NPMOBILENET_NO_VNNI", "1")       # which serve CPUs without a packed kernel only
    monkeypatch.setenv("NPMOBILENET_NO_PAIRS", "1")
    rng = np.random.default_rng(6)
    x = _int8(rng, (2, 9, 7, 6))
    args = _requant_args(rng, 6, 5 * 5 * 6)
    w = _int8(rng, (5, 5, 6, 6))
    expected = qreference.conv2d(x, 3, w, *args, (2, 1), (2, 2, 1, 2), (1, 1))
    got = qexact.conv2d_int8_exact(x, 3, w.astype(np.float32), *args, (2, 1), (2, 2, 1, 2), expected.shape)
    assert np.array_equal(got, expected)
    x2, w2 = _int8(rng, (300, 40)), _int8(rng, (40, 6))
    expected = qreference.pointwise(x2, -3, w2, *args)
    assert np.array_equal(qexact.pointwise_int8_exact(x2, -3, w2.astype(np.float32), 7, *args), expected)
    for arch in ("mobilenet_v2", "mobilenet_v3_small"):
        model = _random_stats(npmobilenet.build(arch, width=0.35, num_classes=10)).eval()
        qmodel = quantize(model, images)
        assert qmodel.integer_only          # the default: integer arithmetic throughout
        qmodel.integer_only = False
        assert qmodel.ops[0].exact_path(images[:2].shape, 0, True)      # the stem, on the float path
        xq = qmodel.quantize_input(images[:2])
        got = qmodel.run(xq, record=True)
        expected = qreference.run_graph(qmodel, xq)
        for name in expected:
            assert np.array_equal(got[name], expected[name]), (arch, name)


@given(st.integers(0, 2**16))
def test_elementwise_int8_ops_match_reference(seed):
    rng = np.random.default_rng(seed)
    a, b = _int8(rng, (2, 5, 3, 7)), _int8(rng, (2, 5, 3, 7))
    za, zb, zy = (int(v) for v in rng.integers(-128, 128, 3))
    sa, sb, sy = np.exp(rng.uniform(-4, 0, 3))
    (ma, ea), (mb, eb), (my, ey) = (quantize_multiplier(sa / (2 * max(sa, sb))), quantize_multiplier(sb / (2 * max(sa, sb))),
                                    quantize_multiplier(2 * max(sa, sb) / (2**20 * sy)))
    got = qkernels.add_int8(a, za, ma, ea, b, zb, mb, eb, 20, zy, my, ey)
    assert np.array_equal(got, qreference.add(a, za, ma, ea, b, zb, mb, eb, 20, zy, my, ey))
    # the add is a real add, up to rounding
    real = sa * (a.astype(float) - za) + sb * (b.astype(float) - zb)
    inside = np.abs(real / sy + zy) < 127
    assert np.all(np.abs(sy * (got.astype(float) - zy) - real)[inside] <= 0.51 * sy + 1e-6)

    m, e = quantize_multiplier(sa / (15 * sy))
    assert np.array_equal(qkernels.mean_int8(a, za, m, e, zy), qreference.mean(a, za, m, e, zy))
    g = _int8(rng, (2, 7))
    m, e = quantize_multiplier(sa * sb / sy)
    assert np.array_equal(qkernels.channel_scale_int8(a, za, g, zb, m, e, zy), qreference.channel_scale(a, za, g, zb, m, e, zy))
    table = _int8(rng, (256,))
    assert np.array_equal(qkernels.lookup_int8(a, table), qreference.lookup(a, table))


# -- whole models ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (6, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v4_conv_small",
                                  "mobilenet_v4_conv_medium"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_integer_graph_matches_reference_bit_for_bit_and_float_closely(arch, per_channel, images):
    model = _random_stats(npmobilenet.build(arch, width=0.35, num_classes=10)).eval()
    qmodel = quantize(model, images, per_channel=per_channel)
    xq = qmodel.quantize_input(images[:3])
    got = qmodel.run(xq, record=True)
    expected = qreference.run_graph(qmodel, xq)
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name
    # every tensor is int8; only input and output ever were floats
    assert all(v.dtype == np.int8 for v in got.values())
    # int8 logits track the folded float graph (within a few output steps of a random-weight model)
    float_logits = fold_model(model)(images[:3])
    scale, _ = qmodel.tensors[qmodel.output]
    err = np.abs(qmodel.dequantize(got[qmodel.output]) - float_logits).max()
    assert err < 0.1 * np.abs(float_logits).max() + 2 * scale, (err, np.abs(float_logits).max())


def test_v3_ops_are_tabulated_clamped_and_rescaled(images):
    model = npmobilenet.build("mobilenet_v3_small", width=0.35, num_classes=10).eval()
    qmodel = quantize(model, images)
    kinds = {}
    for op in qmodel.ops:
        kinds.setdefault(op.kind, []).append(op)
    assert {"conv", "lookup", "mean", "channel_scale", "add"} <= set(kinds)
    assert {op.function for op in kinds["lookup"]} == {"hardswish", "hardsigmoid"}
    # SE gates use the fixed [0, 1] quantization; the reduce FC carries ReLU as a clamp
    for op in kinds["lookup"]:
        if op.function == "hardsigmoid":
            assert qmodel.tensors[op.output] == (1.0 / 255.0, -128)
    reduce = [op for op in kinds["conv"] if op.name.endswith("se.reduce")]
    assert reduce and all(op.lo == qmodel.tensors[op.output][1] for op in reduce)


def test_weight_quantization_per_channel_and_per_tensor():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (3, 3, 4)) * np.array([0.01, 0.1, 1.0, 10.0])
    q, s = quantize_weight(w, per_channel=True)
    assert q.dtype == np.int8 and np.abs(q).max() == 127 and np.all(np.abs(q).reshape(-1, 4).max(0) == 127)
    assert np.allclose(q * s, w, atol=s.max() / 2 + 1e-9)
    q, s = quantize_weight(w, per_channel=False)
    assert np.all(s == s[0])
    # per tensor, the small channel is lost in rounding: the failure mode of depthwise layers
    assert np.abs(q[..., 0]).max() <= 1
    q, s = quantize_weight(np.zeros((2, 3)))
    assert not q.any() and np.all(s > 0)


def test_calibration_methods_clip_outliers_except_minmax():
    obs = cal.Observer()
    x = np.concatenate([np.random.default_rng(0).normal(0, 1, 1_000_000), [40.0]])
    obs.observe_range(x)
    obs.start_histogram()
    obs.observe_histogram(x)
    assert obs.minmax() == (x.min(), 40.0)
    lo, hi = obs.percentile(99.99)
    assert hi < 6 and lo > -6
    lo, hi = obs.mse()
    assert hi < 20  # one outlier in a million is not worth a coarse grid for all the rest
    centres, weights = (obs.edges[:-1] + obs.edges[1:]) / 2, obs.counts / obs.counts.sum()
    assert obs._error(lo, hi, centres, weights) < obs._error(*obs.minmax(), centres, weights)
    scale, zp = cal.qparams_from_range(-1.0, 3.0)
    assert np.isclose(scale, 4 / 255) and -128 <= zp <= 127 and np.isclose(scale * (-128 - zp), -1.0, atol=scale)
    assert cal.qparams_from_range(0.0, 0.0) == (1 / 255, -128)
    assert cal.qparams_from_range(0.5, 1.0)[1] == -128  # the range is widened to contain 0


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_outlier_robust_methods_quantize_whole_models(method, images):
    model = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=10).eval()
    qmodel = quantize(model, images, method=method)
    assert qmodel.info["method"] == method
    assert np.isfinite(qmodel(images[:2])).all()


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_inputs_are_named(images):
    model = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=10)
    with pytest.raises(ValueError, match="training mode"):
        quantize(model, images)
    model.eval()
    with pytest.raises(ValueError, match="zero images"):
        quantize(model, images[:0])
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        quantize(model, images[..., :1])
    with pytest.raises(ValueError, match="at least 32x32"):
        quantize(model, images[:, :16, :16])
    with pytest.raises(TypeError, match="float"):
        quantize(model, (images * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="raw pixel"):
        quantize(model, images * 255)
    with pytest.raises(ValueError, match="NaN"):
        quantize(model, np.where(images > 0.5, np.nan, images).astype(np.float32))
    with pytest.raises(ValueError, match="outside input_range"):
        quantize(model, images, input_range=(0.0, 0.5))
    with pytest.raises(ValueError, match="method"):
        quantize(model, images, method="entropy")
    with pytest.raises(ValueError, match="percentile"):
        quantize(model, images, method="percentile", percentile=120)
    with pytest.raises(TypeError, match="MobileNet"):
        quantize("model.npz", images)
    qmodel = quantize(model, images)
    with pytest.raises(ValueError, match="cannot be trained"):
        qmodel.train()
    with pytest.raises(TypeError, match="float"):
        qmodel(images.astype(np.int32))
    assert isinstance(qmodel, QuantizedModel) and qmodel.num_classes == 10


def test_tensorflow_padding_models_quantize_bit_for_bit(tmp_path):
    # timm's tf_mobilenetv3_small (fixture made by timm): 'same' padding, worked out per input size
    import os

    from npmobilenet.compression.qmodel import load_quantized
    from npmobilenet.io.weights import from_weights

    fixtures = os.path.join(os.path.dirname(__file__), "fixtures")
    model = from_weights(os.path.join(fixtures, "timm_tf_mobilenetv3_small_w010.safetensors"), variant="tf")
    images = np.random.default_rng(3).standard_normal((6, 65, 64, 3)).astype(np.float32)
    qmodel = quantize(model, images)
    assert {op.padding for op in qmodel.ops if getattr(op, "variant", "") in ("standard", "depthwise")} == {"same"}
    for shape in ((2, 65, 64, 3), (1, 48, 48, 3)):      # odd and even sizes pad differently
        xq = qmodel.quantize_input(np.random.default_rng(4).uniform(-2, 2, shape).astype(np.float32))
        got, expected = qmodel.run(xq, record=True), qreference.run_graph(qmodel, xq)
        for name in expected:
            assert np.array_equal(got[name], expected[name]), name
    path = str(tmp_path / "tf.int8.npz")
    qmodel.save(path)
    again = load_quantized(path)
    assert np.array_equal(again(images), qmodel(images))


def test_input_quantization_is_numpys_round_and_clip():
    # the kernel against NumPy's formula, on ties (k + 0.5 steps), saturating and non-finite values
    from npmobilenet.compression.qkernels import quantize_images
    rng = np.random.default_rng(11)
    for scale, zero_point in ((0.0186, -3), (1 / 64, 0), (0.007843138, 127)):
        x = np.concatenate([rng.uniform(-3, 3, 5000), (np.arange(-300, 300) + 0.5) * scale, [np.inf, -np.inf, 1e30, -1e30],
                            rng.standard_normal(100) * 1e-8]).astype(np.float32)
        want = np.clip(np.round(x / np.float32(scale)) + zero_point, -128, 127).astype(np.int8)
        got = np.empty(x.shape, np.int8)
        quantize_images(x, scale, zero_point, got)
        assert np.array_equal(got, want)
    got = np.empty(1, np.int8)
    quantize_images(np.array([np.nan], np.float32), 0.1, 5, got)
    assert got[0] == 0
