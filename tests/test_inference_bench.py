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


def test_round_ratios_split_the_times_as_blocked_times_runs_them():
    # 7 calls in 3 rounds: 3, 2, 2 calls per engine and round
    assert bench.round_counts(7, 3) == [3, 2, 2]
    base, other = [1, 2, 3, 4, 4, 6, 6], [1, 1, 1, 2, 2, 2, 2]
    assert bench.round_ratios(base, other, 7, 3) == [2.0, 2.0, 3.0]
    engines = [("npmobilenet", None), ("peer", None)]
    rows = bench.timing_rows(engines, {"npmobilenet": [0.002] * 6, "peer": [0.001, 0.001, 0.004, 0.004, 0.002, 0.002]},
                             macs=1e9, batch=2, repeat=6)
    ours, peer = rows
    assert ours["ratio"] == ours["ratio_low"] == ours["ratio_high"] == 1.0
    # rounds of 2 calls (default_rounds(6) == 3): peer's medians 1, 4, 2 ms against our 2
    assert peer["ratio_rounds"] == [2.0, 0.5, 1.0] and (peer["ratio_low"], peer["ratio_high"]) == (0.5, 2.0)
    assert peer["ratio"] == 1.0 and peer["ms_per_image"] == 1.0 and peer["min_ms"] == 1.0
    assert "1.00 (0.50-2.00)" in bench.format_results([{"arch": "m", "batch": 2, "rows": rows}])


def _bench_inference_module():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"
    spec = importlib.util.spec_from_file_location("benchmarks_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(arch, batch, threads, ours_ms, peer_ms, rounds=(1.0,)):
    low, high = min(rounds), max(rounds)
    return {"arch": arch, "batch": batch, "threads": threads, "rows": [
        {"engine": "npmobilenet", "ms": ours_ms, "ms_per_image": ours_ms / batch, "ratio": 1.0,
         "images_per_s": 1e3 * batch / ours_ms, "gmacs": 1.0},
        {"engine": "onnxruntime", "ms": peer_ms, "ms_per_image": peer_ms / batch, "ratio": ours_ms / peer_ms,
         "ratio_low": low, "ratio_high": high, "ratio_rounds": list(rounds)}]}


def test_check_targets_reports_the_performance_issues_targets():
    inference = _bench_inference_module()
    runs = [{"results": [_result("v2", 1, 1, 9.5, 10.0, (0.9, 1.05, 0.95))]},
            {"results": [_result("v2", 1, 2, 6.6, 6.0, (1.2, 1.0)), _result("v2", 32, 2, 85.0, 100.0)]},
            {"background_load": True, "results": [_result("v2", 1, 2, 13.2, 15.0)]},
            {"results": [], "cold_start": {"cold": [16.0], "warm": [0.5]}}]
    report = inference.check_targets(runs).splitlines()
    assert report[0] == ("v2 batch 1, 1 thread(s): 0.95x ONNX Runtime's time (0.90-1.05 over the rounds) "
                         "(target <= 1.0): met, 2 of 3 rounds within it")
    assert report[1].startswith("v2 batch 1, 2 thread(s): 1.10x") and "MISSED by 1.10x, 1 of 2 rounds" in report[1]
    assert "batch 32, 2 thread(s): 0.85x" in report[2] and "(target <= 0.9): met" in report[2]
    # loaded / unloaded: ours 13.2 / 6.6 = 2.00x, ONNX Runtime's 15 / 6 = 2.50x
    assert report[3] == ("v2 batch 1, 2 thread(s), background load: npmobilenet 2.00x its time without it, "
                         "ONNX Runtime 2.50x (target: no worse): met")
    assert "16.00 s with an empty Numba cache (target <= 15 s): MISSED; 0.50 s warm (target <= 1 s): met" in report[4]
    # a ratio that two decimals would show as 1.00 gets three
    close = inference.check_targets([{"results": [_result("v3", 1, 1, 10.04, 10.0)]}]).splitlines()[0]
    assert close.startswith("v3 batch 1, 1 thread(s): 1.004x") and "MISSED by 1.004x" in close
    assert report[-1] == "3 of 4 ratio targets met"
    table = inference.markdown_table(runs[:1])
    assert "10.00 (0.95; 0.90-1.05)" in table
