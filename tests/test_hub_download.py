"""`npmobilenet download` against a local HTTP server (127.0.0.1) through NPMOBILENET_MIRROR: a good file
is written and loads; a corrupted, truncated, missing or interrupted one leaves no file behind.

The registry gets test entries whose file names carry the sha256 prefix of a small torchvision
fixture (tests/fixtures/tv_mobilenet_v2_w025.pth), exactly as torchvision's names carry theirs."""
import hashlib
import http.server
import os
import shutil
import threading

import numpy as np
import pytest

import npmobilenet
from npmobilenet.cli import main
from npmobilenet.io import hub, registry
from npmobilenet.io.weights import from_weights

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tv_mobilenet_v2_w025.pth")


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/short.pth") or "short-" in self.path:
            # announces more bytes than it sends, then closes: a connection dropped mid-file
            data = open(os.path.join(self.directory, self.path.lstrip("/")), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    data = open(FIXTURE, "rb").read()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    (root / f"good-{prefix}.pth").write_bytes(data)
    corrupted = bytearray(data)
    corrupted[len(corrupted) // 2] ^= 0xFF
    (root / f"corrupt-{prefix}.pth").write_bytes(bytes(corrupted))
    (root / f"short-{prefix}.pth").write_bytes(data)

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/models/", prefix, root
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def entries(server, monkeypatch, tmp_path):
    base, prefix, root = server
    # the mirror serves at /models/: map it onto the directory
    os.makedirs(root / "models", exist_ok=True)
    for name in os.listdir(root):
        if name.endswith(".pth") and not os.path.exists(root / "models" / name):
            shutil.copyfile(root / name, root / "models" / name)
    for kind in ("good", "corrupt", "short", "absent"):
        entry = registry.WeightsEntry(f"test_v2_w025.{kind.upper()}", "mobilenet_v2", f"{kind}-{prefix}.pth",
                                      num_params=0, reported_top1=0.0, reported_top5=0.0, resize=256, width=0.25)
        monkeypatch.setitem(registry.WEIGHTS, entry.name, entry)
    monkeypatch.setenv("NPMOBILENET_MIRROR", base)
    monkeypatch.setenv("NPMOBILENET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hub, "OFFLINE_PACKAGE", "npmobilenet-test-no-such-package")
    return tmp_path / "home" / "weights"


def test_mirror_replaces_the_base_url(monkeypatch):
    entry = registry.get("mobilenet_v2.IMAGENET1K_V1")
    monkeypatch.delenv("NPMOBILENET_MIRROR", raising=False)
    assert hub.url_of(entry) == "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
    monkeypatch.setenv("NPMOBILENET_MIRROR", "http://mirror.internal/torch/")
    assert hub.url_of(entry) == "http://mirror.internal/torch/mobilenet_v2-b0353104.pth"


def test_download_good_file_then_pretrained_loads_it(entries, capsys):
    with pytest.raises(FileNotFoundError, match="npmobilenet download test_v2_w025.GOOD"):
        npmobilenet.pretrained("test_v2_w025.GOOD")
    assert main(["download", "test_v2_w025.GOOD", "--no-progress"]) == 0
    path = entries / os.path.basename(registry.get("test_v2_w025.GOOD").file_name)
    assert open(path, "rb").read() == open(FIXTURE, "rb").read()
    assert os.listdir(entries) == [path.name]                 # nothing else left beside it
    model = npmobilenet.pretrained("test_v2_w025.GOOD")
    assert model.meta["path"] == str(path) and model.meta["name"] == "test_v2_w025.GOOD"
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), from_weights(FIXTURE)(x))
    # a second download keeps the intact file
    mtime = os.path.getmtime(path)
    assert hub.download("test_v2_w025.GOOD", progress=False) == str(path) and os.path.getmtime(path) == mtime


def test_corrupted_download_leaves_nothing(entries, capsys):
    assert main(["download", "test_v2_w025.CORRUPT", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "is corrupted" in err and "nothing was written" in err and len(err.strip().splitlines()) == 2  # "downloading", error
    assert os.listdir(entries) == []


def test_truncated_and_missing_downloads_leave_nothing(entries):
    with pytest.raises(OSError, match="ended after"):
        hub.download("test_v2_w025.SHORT", progress=False)
    with pytest.raises(OSError, match="HTTP 404"):
        hub.download("test_v2_w025.ABSENT", progress=False)
    assert os.listdir(entries) == []


def test_interrupted_download_leaves_nothing(entries, monkeypatch):
    def interrupt(self, n):
        raise KeyboardInterrupt

    monkeypatch.setattr(hub._Progress, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        hub.download("test_v2_w025.GOOD", progress=False)
    assert os.listdir(entries) == []


def test_plain_progress_without_tqdm(entries, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm":
            raise ImportError("no tqdm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    hub.download("test_v2_w025.GOOD")
    err = capsys.readouterr().err
    assert "100.0% of" in err and "good-" in err


def test_download_list(entries, capsys):
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2.IMAGENET1K_V1" in out and "71.88" in out and "not downloaded" in out
    assert main(["download"]) != 0
    assert "give a weights NAME" in capsys.readouterr().err
