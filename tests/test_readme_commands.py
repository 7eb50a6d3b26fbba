"""Commands as the README writes them, where running them found a difference (fast checks)."""
import json

import pytest

from npmobilenet.cli import main

SMALL_BENCH = ["--batch", "1", "--resolution", "32", "--repeat", "1", "--threads", "1", "--no-peers"]


def test_bench_json_without_path_prints_one_json_document_on_stdout(capsys):
    # `--json` means JSON on stdout in every command; the tables are progress, on stderr
    assert main(["bench", "mobilenet_v3_small", *SMALL_BENCH, "--json"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert [(r["arch"], r["batch"]) for r in payload["results"]] == [("mobilenet_v3_small", 1)]
    assert payload["results"][0]["rows"][0]["ms"] > 0
    assert "mobilenet_v3_small" in captured.err and "ms/img" in captured.err


def test_bench_json_followed_by_a_model_is_not_a_path(tmp_path, monkeypatch, capsys):
    # argparse hands `mobilenet_v3_small` to --json's optional PATH; it is the model, not a file to write
    monkeypatch.chdir(tmp_path)
    assert main(["bench", *SMALL_BENCH, "--json", "mobilenet_v3_small"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["arch"] for r in payload["results"]] == ["mobilenet_v3_small"]
    assert list(tmp_path.iterdir()) == []


def test_bench_json_path_writes_the_file_and_keeps_the_tables_on_stdout(tmp_path, capsys):
    out = tmp_path / "t1.json"
    assert main(["bench", "mobilenet_v3_small", *SMALL_BENCH, "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "ms/img" in captured.out
    assert [r["arch"] for r in json.loads(out.read_text())["results"]] == ["mobilenet_v3_small"]
    assert [p.name for p in tmp_path.iterdir()] == ["t1.json"]  # written atomically: no temporary left


def test_bench_json_path_in_a_missing_directory_is_refused_before_timing(tmp_path, capsys):
    assert main(["bench", "mobilenet_v3_small", *SMALL_BENCH, "--json", str(tmp_path / "no" / "t.json")]) == 2
    captured = capsys.readouterr()
    assert "--json" in captured.err and "does not exist" in captured.err
    assert "ms/img" not in captured.out


def test_summarize_is_importable_from_npmobilenet_analysis():
    import npmobilenet
    from npmobilenet.analysis import summarize
    from npmobilenet.analysis.summary import summarize as summarize_in_module

    assert summarize is summarize_in_module
    table = repr(summarize(npmobilenet.build("mobilenet_v1"), 224))
    assert table.startswith("mobilenet_v1, width 1.0, input 224x224x3")
    assert "568,740,352" in table


def test_compression_names_are_the_functions_whatever_was_imported_first():
    # the README's `from npmobilenet.compression import quantize, ...` gave the module `quantize`
    # (a submodule's import sets the package attribute); checked in a fresh interpreter, both orders
    import subprocess
    import sys

    script = """
import sys, types
if sys.argv[1] == "top-level first":
    import npmobilenet
    npmobilenet.quantize
    import npmobilenet.compression.quantize
from npmobilenet.compression import quantize, load_quantized, prune_channels
import npmobilenet.compression as compression
names = (quantize, load_quantized, prune_channels, compression.quantize)
print(all(isinstance(f, types.FunctionType) for f in names))
"""
    for order in ("fresh", "top-level first"):
        done = subprocess.run([sys.executable, "-c", script, order], capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "True", (order, done.stdout, done.stderr)


def test_top_level_help_names_what_train_and_predict_take(capsys):
    # the README trains on `--data digits` and predicts with `--model NAME`; the help said neither
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    train = next(line for line in out.splitlines() if line.strip().startswith("train "))
    predict = next(line for line in out.splitlines() if line.strip().startswith("predict "))
    assert "digits" in train and "fine-tune" in train
    assert "name" in predict


def test_subpackages_are_reachable_after_a_plain_import():
    # `npmobilenet.analysis.summarize(...)` after `import npmobilenet`, and dir() lists the subpackages
    import subprocess
    import sys

    code = ("import sys, npmobilenet; s = npmobilenet.analysis.summarize(npmobilenet.build('mobilenet_v2'), 224); "
            "assert s.params == 3504872, s.params; assert {'analysis', 'io', 'distributed'} <= set(dir(npmobilenet)); "
            "assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bench_header_names_the_weights_it_times(capsys):
    import os

    from npmobilenet.cli import main

    ckpt = os.path.join(os.path.dirname(__file__), "fixtures", "compression", "digits_v2_w035.npz")
    assert main(["bench", ckpt, "--resolution", "32", "--batch", "1", "--repeat", "2", "--no-peers"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "checkpoints' own weights" in header and "random weights" not in header
