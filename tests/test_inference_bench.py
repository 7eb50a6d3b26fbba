"""`npmobilenet bench`: the command runs, reports what it measured, and rejects bad arguments."""
import json

import pytest

from npmobilenet.cli import main
from npmobilenet.inference import bench
from npmobilenet.ops import depthwise_avx512, register_tile


def test_bench_command_small(tmp_path, capsys, monkeypatch):
    # the roofline's machine measurement (a 1 GMAC product, a 256 MB copy) is too slow for a test
    monkeypatch.setattr(bench, "machine_peaks", lambda threads=1: {"sgemm_gmacs": 50.0, "bandwidth_gbs": 20.0,
                                                                     "threads": threads})
    out = tmp_path / "bench.json"
    code = main(["bench", "mobilenet_v3_small", "mobilenet_v1", "--batch", "1,2", "--resolution", "32",
                 "--repeat", "2", "--threads", "1", "--no-peers", "--per-layer", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "mobilenet_v3_small" in text and "mobilenet_v1" in text and "ms/img" in text
    assert "ridge point 2.5 MAC/byte" in text and "by kind (roofline" in text and "roofline " in text
    # V3-Small's expansions joined with their 3x3 depthwise layers (`FusedExpansion`): a kind of their own
    assert ("  expansion + depthwise " in text) == (register_tile.enabled() and depthwise_avx512.enabled())
    payload = json.loads(out.read_text())
    assert [(r["arch"], r["batch"]) for r in payload["results"]] == [
        ("mobilenet_v3_small", 1), ("mobilenet_v3_small", 2), ("mobilenet_v1", 1), ("mobilenet_v1", 2)]
    for result in payload["results"]:
        row = result["rows"][0]
        assert row["engine"] == "npmobilenet" and row["ms"] > 0
        assert row["images_per_s"] == pytest.approx(result["batch"] * 1000 / row["ms"])
        assert row["gmacs"] == pytest.approx(result["macs"] / row["ms"] / 1e6)
        assert result["planned_peak_bytes"] > 0
    profile = payload["profiles"][0]
    assert profile["layers"][0]["name"] == "stem"
    assert sum(layer["share"] for layer in profile["layers"]) == pytest.approx(1.0)


def test_bench_command_int8(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "mobilenet_v3_small", "--batch", "2", "--resolution", "32", "--repeat", "2",
                 "--threads", "2", "--no-peers", "--int8", "--json", str(out)]) == 0
    assert "npmobilenet int8" in capsys.readouterr().out
    (result,) = json.loads(out.read_text())["results"]
    fused, int8 = result["rows"]
    assert (fused["engine"], int8["engine"]) == ("npmobilenet", "npmobilenet int8") and int8["ms"] > 0
    assert int8["ratio"] == pytest.approx(fused["ms"] / int8["ms"])     # float / int8: above 1 is faster


@pytest.mark.parametrize("argv, message", [
    (["bench", "mobilenet_v9"], "unknown architecture"),
    (["bench", "--batch", "1,x"], "--batch must be comma-separated positive ints"),
    (["bench", "--batch", "0"], "--batch must be comma-separated positive ints"),
    (["bench", "--resolution", "16"], "--resolution must be at least 32"),
    (["bench", "--threads", "999"], "--threads must be between 1 and"),
    (["bench", "--repeat", "0"], "--repeat must be >= 1"),
])
def test_bench_rejects_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_blocked_times_runs_each_engine_its_share():
    calls = {"a": 0, "b": 0}

    def engine(name):
        def run():
            calls[name] += 1
        return run

    times = bench.blocked_times([("a", engine("a")), ("b", engine("b"))], repeat=7, rounds=3, warmup=1, pause=0)
    assert [len(times["a"]), len(times["b"])] == [7, 7]
    assert calls == {"a": 7 + 3, "b": 7 + 3}


@pytest.mark.parametrize("repeat, rounds", [(1, 1), (2, 2), (5, 3), (20, 6), (30, 10), (31, 10)])
def test_default_rounds_are_blocks_of_about_three_calls(repeat, rounds):
    assert bench.default_rounds(repeat) == rounds
    calls = []
    times = bench.blocked_times([("a", lambda: calls.append("a")), ("b", lambda: calls.append("b"))], repeat,
                                warmup=1, pause=0)
    assert [len(times["a"]), len(times["b"])] == [repeat, repeat]
    # one warm-up call per engine and round; the engines alternate block by block
    assert calls.count("a") == repeat + rounds
    blocks = [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name]
    assert blocks == ["a", "b"] * rounds


def test_background_load_child_is_stopped():
    with bench.background_load() as child:
        assert child.poll() is None
    assert child.poll() is not None


def test_bench_command_on_v4(capsys):
    # V4 runs fused through the same graph as every other model
    assert main(["bench", "mobilenet_v4_conv_small", "--batch", "1", "--resolution", "64", "--repeat", "2",
                 "--threads", "1", "--no-peers"]) == 0
    assert "mobilenet_v4_conv_small" in capsys.readouterr().out


def test_roofline_fraction():
    peaks = {"sgemm_gmacs": 50.0, "bandwidth_gbs": 20.0}
    # 1 MAC/byte is below the ridge (2.5): bound by bandwidth, 20 GMAC/s attainable
    assert bench.roofline_fraction(10e9, 10e9, 1.0, peaks) == pytest.approx(0.5)
    # 100 MAC/byte: bound by the SGEMM peak
    assert bench.roofline_fraction(25e9, 0.25e9, 1.0, peaks) == pytest.approx(0.5)
    # no MACs (resize, pooling): the share of the bandwidth
    assert bench.roofline_fraction(0, 5e9, 1.0, peaks) == pytest.approx(0.25)
    # the ceiling is the faster product's (the register tile's, where it runs) when given
    peaks.update(matmul_gmacs=100.0, matmul="register tile", compute_gmacs=100.0)
    assert bench.roofline_fraction(25e9, 0.25e9, 1.0, peaks) == pytest.approx(0.25)


def test_machine_peaks_measure_the_product_the_layers_run():
    peaks = bench.machine_peaks(1, seconds=0.05)
    assert peaks["compute_gmacs"] == max(peaks["sgemm_gmacs"], peaks["matmul_gmacs"]) > 0
    assert peaks["matmul"] == ("register tile" if register_tile.enabled() else "OpenBLAS SGEMM")
    assert peaks["bandwidth_gbs"] > 0


def test_bench_command_on_the_applications(tmp_path, capsys):
    # LR-ASPP and SSDLite run fused, beside ONNX Runtime on their exported graphs (where installed),
    # whose outputs they are checked against
    out = tmp_path / "apps.json"
    assert main(["bench", "lraspp_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large", "--batch", "1",
                 "--resolution", "64", "--repeat", "2", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lraspp_mobilenet_v3_large" in text and "ssdlite320_mobilenet_v3_large" in text
    payload = json.loads(out.read_text())
    assert [r["arch"] for r in payload["results"]] == ["lraspp_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large"]
    for result in payload["results"]:
        assert result["rows"][0]["engine"] == "npmobilenet" and result["resolution"] == 64
        if any(row["engine"] == "onnxruntime" for row in result["rows"]):
            assert result["onnx_relative_difference"] < 1e-4


def test_bench_default_resolutions():
    assert [bench.default_resolution(a) for a in ("mobilenet_v2", "lraspp_mobilenet_v3_large",
                                                  "ssdlite320_mobilenet_v3_large")] == [224, 520, 320]
