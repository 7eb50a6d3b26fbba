"""LR-ASPP and SSDLite as npmobilenet checkpoints: saved, loaded back (rebuilt from their config
through `applications.build`) to the same outputs, and exported to ONNX by the command, whose check
compares every output (SSDLite has two)."""
import numpy as np
import pytest

import npmobilenet
from npmobilenet.cli import main


@pytest.mark.parametrize("arch, size", [("lraspp_mobilenet_v3_large", 48), ("ssdlite320_mobilenet_v3_large", 320)])
def test_saved_application_loads_and_exports(arch, size, tmp_path, capsys):
    model = npmobilenet.build(arch, width=0.25, seed=1).eval()
    path = str(tmp_path / "model.npz")
    npmobilenet.save(model, path)
    loaded = npmobilenet.load(path)
    assert loaded.config["arch"] == arch
    x = np.random.default_rng(0).random((1, size, size, 3), np.float32)
    ours, theirs = model(x), loaded(x)
    for a, b in zip(ours, theirs) if isinstance(ours, tuple) else [(ours, theirs)]:
        np.testing.assert_array_equal(a, b)
    pytest.importorskip("onnxruntime")
    assert main(["export-onnx", path, str(tmp_path / "model.onnx")]) == 0
    assert "verified in ONNX Runtime" in capsys.readouterr().out
