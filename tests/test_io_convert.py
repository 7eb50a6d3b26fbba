"""`npmobilenet convert`: foreign weights to an npmobilenet .npz that loads with NumPy alone."""
import os

import numpy as np
import pytest

import npmobilenet
from npmobilenet.cli import main
from npmobilenet.io.convert import convert
from npmobilenet.io.weights import from_weights, inspect_weights, load_weights
from npmobilenet.io import checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SRC = os.path.join(FIXTURES, "tv_mobilenet_v3_small_w035.pth")


def test_convert_then_load_with_numpy_only(tmp_path):
    dst = str(tmp_path / "v3s.npz")
    converted = convert(SRC, dst)
    # the .npz is an ordinary npmobilenet checkpoint: config + arrays, no name maps, no transposes
    model = checkpoint.load(dst)
    assert model.config == converted.config == {"arch": "mobilenet_v3_small", "width": 0.35, "num_classes": 10}
    x = np.random.default_rng(0).standard_normal((2, 161, 161, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), from_weights(SRC)(x))
    with np.load(dst, allow_pickle=False) as npz:
        assert "model/stem.conv.weight" in npz.files and npz["model/stem.conv.weight"].shape == (3, 3, 3, 8)
    # and load_weights / from_weights / inspect read it too
    info = inspect_weights(dst)
    assert (info.naming, info.arch, info.width, info.num_classes) == ("npmobilenet", "mobilenet_v3_small", 0.35, 10)
    again = load_weights(npmobilenet.build("mobilenet_v3_small", 0.35, 10), dst)
    np.testing.assert_array_equal(again(x), model(x))


def test_convert_command(tmp_path, capsys):
    dst = str(tmp_path / "v2.npz")
    assert main(["convert", os.path.join(FIXTURES, "timm_mobilenetv1_w010.safetensors"), dst,
                 "--arch", "mobilenet_v1", "--width", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "timm naming -> mobilenet_v1, width 0.1, 10 classes" in out and "wrote" in out
    assert checkpoint.load(dst).config["arch"] == "mobilenet_v1"


def test_convert_refuses_a_mismatched_request(tmp_path, capsys):
    dst = str(tmp_path / "x.npz")
    assert main(["convert", SRC, dst, "--arch", "mobilenet_v3_large"]) == 2
    assert "holds mobilenet_v3_small weights (torchvision naming), not mobilenet_v3_large" in capsys.readouterr().err
    assert main(["convert", SRC, dst, "--width", "0.5"]) == 2
    assert "holds a width-0.35 mobilenet_v3_small, not width 0.5" in capsys.readouterr().err
    assert not os.path.exists(dst)
    with pytest.raises(ValueError, match="must be an .npz"):
        convert(SRC, str(tmp_path / "x.pth"))


def test_npz_of_another_architecture_names_the_difference(tmp_path):
    dst = str(tmp_path / "v3s.npz")
    convert(SRC, dst)
    model = npmobilenet.build("mobilenet_v3_small", width=0.5, num_classes=10)
    with pytest.raises(ValueError, match=r"different architecture \(width: file 0.35, model 0.5\)"):
        load_weights(model, dst)


def test_bare_state_dict_npz(tmp_path):
    model = npmobilenet.build("mobilenet_v2", width=0.1, num_classes=3, seed=1)
    path = str(tmp_path / "bare.npz")
    np.savez(path, **model.state_dict())
    fresh = npmobilenet.build("mobilenet_v2", width=0.1, num_classes=3, seed=2)
    load_weights(fresh, path)
    a, b = model.state_dict(), fresh.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_weights(npmobilenet.build("mobilenet_v2", width=0.1, num_classes=4), path)


def test_convert_tf_variant(tmp_path, capsys):
    src = os.path.join(FIXTURES, "timm_tf_mobilenetv3_small_w010.safetensors")
    dst = str(tmp_path / "tf.npz")
    assert main(["convert", src, dst, "--tf"]) == 0
    assert "'padding': 'same'" in capsys.readouterr().out
    model = checkpoint.load(dst)
    assert model.config["padding"] == "same" and model.stem.conv.same
    x = np.random.default_rng(1).standard_normal((1, 97, 131, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), from_weights(src, variant="tf")(x))
    # the checkpoint rebuilds the tf model; asking for the variant again is accepted, on others refused
    np.testing.assert_array_equal(from_weights(dst, variant="tf")(x), model(x))
    plain = str(tmp_path / "plain.npz")
    convert(SRC, plain)
    with pytest.raises(ValueError, match="without TensorFlow padding"):
        from_weights(plain, variant="tf")


def test_convert_timm_v4(tmp_path, capsys):
    # timm's MobileNetV4-Conv medium (fixture made by timm at channel multiplier 0.05, a .pth):
    # converted once, the .npz rebuilds the same model with NumPy alone
    src = os.path.join(FIXTURES, "timm_mobilenetv4_conv_medium_w005.pth")
    dst = str(tmp_path / "v4m.npz")
    assert main(["convert", src, dst]) == 0
    assert "timm naming -> mobilenet_v4_conv_medium, width 0.05, 10 classes\n" in capsys.readouterr().out
    model = checkpoint.load(dst)
    assert model.config == {"arch": "mobilenet_v4_conv_medium", "width": 0.05, "num_classes": 10}
    x = np.random.default_rng(2).standard_normal((2, 97, 131, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), from_weights(src)(x))
    np.testing.assert_array_equal(from_weights(dst)(x), model(x))
    info = inspect_weights(dst)
    assert (info.naming, info.arch, info.width, info.num_classes) == ("npmobilenet", "mobilenet_v4_conv_medium", 0.05, 10)
    assert main(["convert", src, dst, "--width", "0.25"]) == 2
    assert "holds a width-0.05 mobilenet_v4_conv_medium, not width 0.25" in capsys.readouterr().err
