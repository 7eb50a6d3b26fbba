"""An inverted residual's expansion and depthwise convolution as one layer (`layers.FusedExpansion`):
in bands of rows on large maps, two ops on small ones, and every output the same bits as the two
layers' apart, on any number of threads."""
import numba
import numpy as np
import pytest

import npmobilenet
from npmobilenet.graph import inference_graph
from npmobilenet.inference import tiling
from npmobilenet.inference.compile import FUSED_ACTIVATIONS, _join_expansions, fused_layers
from npmobilenet.inference.layers import FusedDepthwise, FusedExpansion, FusedPointwise
from npmobilenet.inference.model import FusedMobileNet
from npmobilenet.inference.program import AUX, DEPTHWISE, KIND, SH, TILES, TR, W2, YH
from npmobilenet.inference.threads import numba_threads
from npmobilenet.ops import depthwise_avx512, register_tile
from test_inference_fuse import randomize_batch_norm

pytestmark = pytest.mark.skipif(not (register_tile.enabled() and depthwise_avx512.enabled()),
                                reason="the expansion joins the register tiles (AVX2 with FMA, or AVX-512)")


def test_band_rows_keep_a_band_in_cache_and_its_halo_small():
    # V2's first expansion (112 x 112 x 96, 3x3 at stride 2): bands of 4 output rows, 9 expanded rows
    band = tiling.expansion_band_rows(112, 112, 96, 56, 3, 2)
    assert band == 4
    assert 9 * 112 * 96 * 4 <= tiling.BAND_BYTES < 11 * 112 * 96 * 4
    assert tiling.band_input_rows(band, 3, 2) == 9 and tiling.band_input_rows(10, 3, 1) == 12
    # maps within three L2s run as two ops (V3-Large's 56 x 56 x 72)
    assert tiling.expansion_band_rows(56, 56, 72, 56, 3, 1) == 0
    # a band that would expand three rows for one at stride 1 (rows wider than a band): two ops;
    # and one of 4 rows expanding 6 (LR-ASPP's 33x33x480 at 520, slower in bands: the README)
    assert tiling.expansion_band_rows(400, 4000, 64, 400, 3, 1) == 0
    assert tiling.expansion_band_rows(33, 33, 480, 33, 3, 1) == 0
    for height, width, channels, stride in ((112, 112, 64, 2), (56, 56, 144, 1), (56, 56, 144, 2), (224, 224, 32, 1)):
        out = (height - 1) // stride + 1
        band = tiling.expansion_band_rows(height, width, channels, out, 3, stride)
        assert 1 <= band <= out
        assert ((band - 1) * stride + 3) * width * channels * 4 <= tiling.BAND_BYTES
        assert (band - 1) * stride + 3 <= 1.25 * band * stride


def test_bands_cover_each_image_once_and_reach_the_rows_their_windows_read():
    for out_height, in_height, kernel, stride, pad, band in ((56, 112, 3, 2, 1, 4), (56, 56, 3, 1, 1, 10),
                                                             (28, 56, 3, 2, 0, 5), (7, 7, 3, 1, 1, 3)):
        bands = -(-out_height // band)
        cut = [tiling.expansion_band.py_func(t, band, out_height, in_height, kernel, stride, pad)
               for t in range(2 * bands)]
        assert [c[0] for c in cut] == [0] * bands + [1] * bands
        assert [(c[1], c[2]) for c in cut[:bands]] == [(f, min(f + band, out_height))
                                                       for f in range(0, out_height, band)]
        for image, first, last, start, end, above in cut:
            assert start == max(first * stride - pad, 0) and above == start - (first * stride - pad)
            assert end == min((last - 1) * stride - pad + kernel, in_height)
            assert end - start <= tiling.band_input_rows(band, kernel, stride)


def _layers():
    rng = np.random.default_rng(0)
    expand = FusedPointwise("b.conv_pw", ("x",), ("t",), rng.standard_normal((8, 24)).astype(np.float32),
                            np.zeros(24, np.float32), "relu6", packed=True)
    depthwise = FusedDepthwise("b.conv_dw", ("t",), ("y",), rng.standard_normal((3, 3, 24)).astype(np.float32),
                               np.zeros(24, np.float32), "relu6", (1, 1), (1, 1, 1, 1), packed=True)
    return expand, depthwise


def test_an_expansion_joins_only_the_depthwise_layer_that_alone_reads_it():
    expand, depthwise = _layers()
    joined = _join_expansions([expand, depthwise], None)
    assert len(joined) == 1 and isinstance(joined[0], FusedExpansion)
    assert joined[0].name == "b.conv_pw+conv_dw" and joined[0].parts == ("b.conv_pw", "b.conv_dw")
    assert joined[0].inputs == ("x",) and joined[0].outputs == ("y",)
    assert joined[0].describe() == "pointwise, relu6 + depthwise 3x3/1, relu6"
    other = FusedPointwise("other", ("t",), ("z",), np.ones((24, 4), np.float32), np.zeros(4, np.float32), None,
                           packed=True)
    assert [type(layer) for layer in _join_expansions([expand, depthwise, other], None)] == [
        FusedPointwise, FusedDepthwise, FusedPointwise]               # the expanded map has another reader
    assert len(_join_expansions([expand, depthwise], ("t",))) == 2    # or is an output
    five = FusedDepthwise("b.conv_dw", ("t",), ("y",), np.ones((5, 5, 24), np.float32), np.zeros(24, np.float32),
                          None, (1, 1), (2, 2, 2, 2), packed=True)
    assert len(_join_expansions([expand, five], None)) == 2           # the 3x3 register tile's only


def _pair(arch):
    model = randomize_batch_norm(npmobilenet.build(arch, width=0.5, num_classes=10, seed=3),
                                 np.random.default_rng(3)).eval()
    graph = inference_graph(model, FUSED_ACTIVATIONS)
    return [FusedMobileNet(fused_layers(graph, expansions=joined), model.config, outputs=graph.outputs)
            for joined in (False, True)]


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_large"])
def test_bands_compute_the_two_layers_bits_on_any_thread_count(arch, monkeypatch):
    # small maps in several bands each (the thresholds lowered), the first and last bands at the
    # image's edges, strides 1 and 2, two images, and V3-Large's SE row sums from the bands
    monkeypatch.setattr(tiling, "EXPANSION_MIN_BYTES", 0)
    monkeypatch.setattr(tiling, "BAND_BYTES", 96 * 1024)
    apart, joined = _pair(arch)
    expansions = [layer for layer in joined.layers if isinstance(layer, FusedExpansion)]
    assert len(expansions) >= (10 if arch == "mobilenet_v2" else 5)
    assert any(len(layer.outputs) == 2 for layer in expansions) == (arch == "mobilenet_v3_large")
    shape = (2, 67, 53, 3) if arch == "mobilenet_v2" else (2, 131, 103, 3)     # several bands an image
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    plan = joined.plan(x.shape)
    banded = [row for row in plan.program.ops if row[KIND] == DEPTHWISE and row[W2] >= 0]
    assert len(banded) >= 3 and all(row[TILES] == 2 * -(-row[YH] // row[TR]) for row in banded)
    assert any(row[TILES] >= 2 * 3 for row in banded)                 # several bands an image
    assert {int(row[SH]) for row in banded} == {1, 2}
    assert any(row[AUX] >= 0 for row in banded) == (arch == "mobilenet_v3_large")   # SE's row sums
    expected = apart(x)
    for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
        joined.set_threads(threads, adaptive=False)
        assert np.array_equal(joined(x), expected), threads
    # the layer's own kernel (band by band, in Python) computes the table's bits too
    np.copyto(plan.input, x)
    with numba_threads(1):
        plan.program.run(1)
    table = [out.copy() for out in plan.outputs]
    plan.arena[plan.input.size:] = np.nan
    np.copyto(plan.input, x)
    for kernel, args in plan.calls:
        kernel(*args)
    assert all(np.array_equal(out, want) for out, want in zip(plan.outputs, table))


def test_small_maps_run_the_expansion_as_two_ops():
    apart, joined = _pair("mobilenet_v2")
    x = np.random.default_rng(5).standard_normal((1, 64, 64, 3)).astype(np.float32)
    plan = joined.plan(x.shape)
    assert not any(row[KIND] == DEPTHWISE and row[W2] >= 0 for row in plan.program.ops)
    assert len(plan.program.ops) == len(apart.plan(x.shape).program.ops)
    assert np.array_equal(joined(x), apart(x))
    # at 224 the first expansions are in bands, of 4 output rows for V2's first (112 x 112 x 96 at width 1)
    full = npmobilenet.build("mobilenet_v2", seed=0).eval().fuse()
    rows = [row for row in full.plan((1, 224, 224, 3)).program.ops if row[KIND] == DEPTHWISE and row[W2] >= 0]
    assert [int(row[TR]) for row in rows][:1] == [4] and len(rows) >= 2
