"""Foreign weights in: every torchvision/timm fixture reproduces the library's own logits.

The fixtures (tests/fixtures/make_fixtures.py) were made by torchvision and timm themselves, with
random weights and randomised batch-norm statistics; here, without torch, each file is loaded and
its logits compared at 224x224 and at 161x161 (odd sizes expose padding mistakes).
"""
import json
import os

import numpy as np
import pytest

import npmobilenet
from npmobilenet.io import keymaps, recognise
from npmobilenet.io.formats import read_foreign_state, read_safetensors, sniff_format, state_dict_from
from npmobilenet.io.weights import foreign_state_dict, from_weights, inspect_weights, load_weights
from npmobilenet.models import builder

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
with open(os.path.join(FIXTURES, "interop_manifest.json")) as _f:
    MANIFEST = json.load(_f)
MODELS = MANIFEST["models"]

# timm's V3 below width 1.0 widens each expansion from the block's own input (see keymaps); our
# builder follows that through its `expanded_channels` option.
BUILDER_FOLLOWS_TIMM_V3 = "expanded_channels" in builder.OVERRIDES


def fixture_path(name):
    return os.path.join(FIXTURES, MODELS[name]["file"])


def model_input(resolution):
    """The fixture script's input batch, regenerated (RandomState's stream is frozen), as NHWC."""
    rng = np.random.RandomState(MANIFEST["resolutions"][str(resolution)])
    batch = MANIFEST["batch"]
    noise = rng.standard_normal((batch, 3, resolution, resolution))
    x = (noise + 1.5 * rng.standard_normal((batch, 3, 1, 1))).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def reference_logits():
    with np.load(os.path.join(FIXTURES, "interop_logits.npz"), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _skip_unsupported(name):
    if name.startswith("timm_mobilenetv3") and not BUILDER_FOLLOWS_TIMM_V3:
        pytest.skip("timm V3 below width 1.0 needs npmobilenet.build(expanded_channels=...)")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fixture_logits_match_the_library(name, reference_logits):
    _skip_unsupported(name)
    entry = MODELS[name]
    model = from_weights(fixture_path(name), variant=entry.get("variant"))
    assert model.config["arch"] == entry["arch"]
    assert model.config["num_classes"] == entry["num_classes"]
    assert not model.training
    for resolution in (224, 161):
        want = reference_logits[f"{name}/{resolution}"]
        got = model(model_input(resolution))
        scale = np.abs(want).max()
        err = np.abs(got - want).max()
        print(f"{name} {resolution}x{resolution}: max |diff| {err:.2e}, logit scale {scale:.1f}")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{name} at {resolution}")
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inspect_reads_arch_width_classes_and_naming(name):
    entry = MODELS[name]
    info = inspect_weights(fixture_path(name))
    assert (info.naming, info.arch, info.num_classes) == (entry["library"], entry["arch"], entry["num_classes"])
    assert info.format == ("safetensors" if entry["format"] == "safetensors" else "torch")
    # the inferred width builds the file's channel counts; the fixture's own width is a round one
    assert info.width == pytest.approx(entry["width"])
    if entry["library"] == "timm" and entry["arch"].startswith("mobilenet_v3"):
        # timm's V3 choices, read from the file: eps 1e-5, unscaled 1280/1024 head, unscaled stem below 0.75
        assert info.overrides["bn_eps"] == 1e-5     # a tf_* file looks the same: variant="tf" says it
        assert info.overrides["last_channels"] == (1280 if entry["arch"].endswith("large") else 1024)
        assert info.overrides["stem_channels"] == 16
    elif entry["model"] == "mobilenetv2_110d":
        # depth 1.1: ceil(1.1 n) blocks per row except the first and last; stem and head fixed
        assert info.overrides == dict(repeats=(1, 3, 4, 5, 4, 4, 1), stem_channels=32, head_channels=1280)
    else:
        assert info.overrides == {}


def test_safetensors_reader_matches_the_safetensors_package():
    st = pytest.importorskip("safetensors.numpy")
    for name, entry in MODELS.items():
        if entry["format"] != "safetensors":
            continue
        ours, theirs = read_safetensors(fixture_path(name)), st.load_file(fixture_path(name))
        assert set(ours) == set(theirs)
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape
            np.testing.assert_array_equal(ours[key], theirs[key])


def test_safetensors_bfloat16_is_widened_exactly(tmp_path):
    values = np.array([1.5, -2.25, 3.0e38, 1e-3, 0.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")  # exact bfloat16 values (truncation)
    header = json.dumps({"x": {"dtype": "BF16", "shape": [5], "data_offsets": [0, 10]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bits.tobytes())
    got = read_safetensors(path)["x"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (bits.astype(np.uint32) << 16).view(np.float32))


# -- layouts -----------------------------------------------------------------------------------------
def test_layout_transposes_are_inverse_and_correct():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 5)).astype(np.float32)  # (Cout, Cin, KH, KW)
    ours = keymaps.to_ours("conv", w)
    assert ours.shape == (3, 5, 3, 8) and ours[1, 2, 0, 7] == w[7, 0, 1, 2]
    np.testing.assert_array_equal(keymaps.to_torch("conv", ours), w)
    dw = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
    ours = keymaps.to_ours("depthwise", dw)
    assert ours.shape == (5, 5, 6) and ours[4, 1, 3] == dw[3, 0, 4, 1]
    np.testing.assert_array_equal(keymaps.to_torch("depthwise", ours), dw)
    pw = rng.standard_normal((7, 4, 1, 1)).astype(np.float32)
    assert keymaps.to_ours("pointwise", pw)[2, 6] == pw[6, 2, 0, 0]
    np.testing.assert_array_equal(keymaps.to_torch("pointwise", keymaps.to_ours("pointwise", pw)), pw)
    lin = rng.standard_normal((10, 4)).astype(np.float32)
    np.testing.assert_array_equal(keymaps.to_ours("linear", lin), lin.T)
    with pytest.raises(ValueError, match="depthwise"):
        keymaps.to_ours("depthwise", w)  # a full conv weight is not depthwise
    assert keymaps.torch_shape("pointwise", (4, 7)) == (7, 4, 1, 1)
    assert keymaps.our_shape("depthwise", (6, 1, 5, 5)) == (5, 5, 6)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_torchvision_key_map_covers_every_parameter_once(arch):
    model = npmobilenet.build(arch, width=0.25, num_classes=7)
    entries = keymaps.key_map(model, "torchvision")
    ours = [e[0] for e in entries]
    theirs = [e[1] for e in entries]
    assert sorted(ours) == sorted(model.state_dict())
    assert len(set(theirs)) == len(theirs)


@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_timm_key_map_covers_every_parameter_once(arch):
    model = npmobilenet.build(arch, width=0.25, num_classes=7)
    entries = keymaps.key_map(model, "timm")
    assert sorted(e[0] for e in entries) == sorted(model.state_dict())
    assert len({e[1] for e in entries}) == len(entries)


# -- errors --------------------------------------------------------------------------------------------
def test_wrong_width_lists_every_mismatch_with_both_layouts():
    model = npmobilenet.build("mobilenet_v2", width=0.5, num_classes=10)
    with pytest.raises(ValueError) as info:
        load_weights(model, fixture_path("tv_mobilenet_v2_w025"))
    message = str(info.value)
    assert "the file is width 0.25, the model width 0.5" in message
    # one error, listing every mismatch, with our layout and the file's side by side
    assert "shape mismatches (" in message
    assert "features.0.0.weight -> stem.conv.weight: model expects (3, 3, 3, 16) in our layout = (16, 3, 3, 3)" in message
    assert "the file has (8, 3, 3, 3) = (3, 3, 3, 8) in ours" in message
    assert message.count(" -> ") > 100


def test_wrong_arch_is_named():
    model = npmobilenet.build("mobilenet_v3_large", width=0.35, num_classes=10)
    with pytest.raises(ValueError, match=r"holds torchvision's mobilenet_v3_small .*but the model is mobilenet_v3_large"):
        load_weights(model, fixture_path("tv_mobilenet_v3_small_w035"))
    with pytest.raises(ValueError, match="holds mobilenet_v3_small weights .*not mobilenet_v2"):
        from_weights(fixture_path("tv_mobilenet_v3_small_w035"), arch="mobilenet_v2")
    with pytest.raises(ValueError, match="holds a width-0.35 mobilenet_v3_small, not width 1"):
        from_weights(fixture_path("tv_mobilenet_v3_small_w035"), width=1.0)


def test_wrong_class_count_and_batch_norm_eps_are_named():
    model = npmobilenet.build("mobilenet_v3_small", width=0.35, num_classes=1000, bn_eps=1e-5)
    with pytest.raises(ValueError) as info:
        load_weights(model, fixture_path("tv_mobilenet_v3_small_w035"))
    message = str(info.value)
    assert "the file has 10 classes, the model 1000" in message
    assert "batch-norm eps: torchvision's mobilenet_v3_small uses 0.001, the model 1e-05" in message
    assert "classifier.3.weight -> classifier.3.weight" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    state = read_foreign_state(fixture_path("timm_mobilenetv2_w010"))
    del state["blocks.3.1.bn2.running_var"]
    del state["conv_head.weight"]
    state["blocks.3.1.extra.weight"] = np.zeros((2, 2), np.float32)
    path = str(tmp_path / "edited.safetensors")
    st.save_file(state, path)
    model = npmobilenet.build("mobilenet_v2", width=0.1, num_classes=10)
    with pytest.raises(ValueError) as info:
        load_weights(model, path)
    message = str(info.value)
    assert "missing from the file (2): " in message
    assert "blocks.3.1.bn2.running_var (for blocks.7.conv_dw.bn.running_var; model expects (48,)" in message
    assert "conv_head.weight (for head.conv.weight; model expects (1280, 32, 1, 1)" in message
    assert "unexpected in the file (1): blocks.3.1.extra.weight (2, 2)" in message


def test_a_failed_load_leaves_the_model_untouched():
    model = npmobilenet.build("mobilenet_v2", width=0.5, num_classes=10)
    before = model.state_dict()
    with pytest.raises(ValueError):
        load_weights(model, fixture_path("tv_mobilenet_v2_w025"))
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_load_weights_into_a_built_model_equals_from_weights():
    path = fixture_path("tv_mobilenet_v3_small_w035")
    model = npmobilenet.build("mobilenet_v3_small", width=0.35, num_classes=10)
    assert load_weights(model, path) is model
    other = from_weights(path)
    a, b = model.state_dict(), other.state_dict()
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    # BN statistics really arrived (the fixture randomised them)
    assert not np.allclose(a["stem.bn.running_var"], 1.0)


def test_not_a_weights_file(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    with pytest.raises(ValueError, match="not a weights file"):
        from_weights(text)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        sniff_format(empty)
    with pytest.raises(FileNotFoundError):
        from_weights(tmp_path / "absent.pth")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single .npy"):
        from_weights(tmp_path / "one.npy")


@pytest.mark.parametrize("name", ["tv_mobilenet_v3_large_w020", "tv_mobilenet_v2_w025"])
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.999])
def test_truncated_weights_are_a_clear_error(tmp_path, name, keep):
    data = open(fixture_path(name), "rb").read()
    path = tmp_path / os.path.basename(fixture_path(name))
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="truncated|damaged|corrupt"):
        from_weights(path)


def test_pth_with_arbitrary_objects_is_refused(tmp_path):
    import pickle
    import zipfile

    from npmobilenet.io.torch_zip import UnsafeCheckpointError

    class Payload:
        def __reduce__(self):
            return (print, ("this must never print",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"state_dict": Payload()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="print"):
        from_weights(path)
    model = npmobilenet.build("mobilenet_v2", width=0.1, num_classes=10)
    with pytest.raises(UnsafeCheckpointError):
        load_weights(model, path)


def test_nested_training_checkpoint_and_dataparallel_prefix():
    # what a training script saves: the state dict under "state_dict", with DataParallel's "module."
    original = read_foreign_state(fixture_path("tv_mobilenet_v3_small_w035"))
    wrapped = {"epoch": 3, "arch": "x", "state_dict": {"module." + k: v for k, v in original.items()}}
    found = state_dict_from(wrapped, "wrapped.pth")
    assert set(found) == set(original) and all(found[k] is original[k] for k in original)
    with pytest.raises(ValueError, match="no dict of tensors found"):
        state_dict_from({"epoch": 3, "optimizer": {}}, "x.pth")


@pytest.mark.parametrize("naming,arch", [("timm", "mobilenet_v3_small"), ("torchvision", "mobilenet_v3_large"),
                                         ("timm", "mobilenet_v1")])
def test_width_one_files_round_trip_through_foreign_names(tmp_path, naming, arch):
    # At width 1.0 timm's V3 differs from torchvision's only in batch-norm constants, so the
    # builder follows it without per-block options; the model the file describes is rebuilt exactly.
    st = pytest.importorskip("safetensors.numpy")
    overrides = dict(bn_eps=1e-5, bn_momentum=0.1) if naming == "timm" and arch != "mobilenet_v1" else {}
    model = npmobilenet.build(arch, width=1.0, num_classes=5, seed=4, **overrides)
    path = str(tmp_path / "w.safetensors")
    st.save_file(foreign_state_dict(model, naming), path)
    info = inspect_weights(path)
    assert (info.naming, info.arch, info.width, info.num_classes) == (naming, arch, 1.0, 5)
    again = from_weights(path)
    assert again.config == model.config
    a, b = model.state_dict(), again.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_depth_multiplied_timm_v3_is_named_unsupported(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    state = read_foreign_state(fixture_path("timm_mobilenetv3_large_w010"))
    # a fourth block in stage 2, as timm's depth multiplier (mobilenetv3_large_150d) would add:
    # V3's tables list every block, so there is no row to repeat
    state.update({k.replace("blocks.2.2.", "blocks.2.3."): v for k, v in state.items() if k.startswith("blocks.2.2.")})
    path = str(tmp_path / "deeper.safetensors")
    st.save_file(state, path)
    with pytest.raises(ValueError, match="has 16 blocks where the paper's has 15.*not for V3"):
        from_weights(path)


def test_depth_multiplied_v2_round_trips_through_timm_names(tmp_path):
    from npmobilenet.io.keymaps import key_map

    model = npmobilenet.build("mobilenet_v2", width=0.35, num_classes=7, repeats=[1, 3, 4, 5, 4, 4, 1],
                              stem_channels=32, head_channels=1280)
    entries = key_map(model, "timm")
    assert len({theirs for _, theirs, _ in entries}) == len(entries)
    assert any(theirs.startswith("blocks.3.4.") for _, theirs, _ in entries)     # stage 3 has 5 blocks
    prefixes = {theirs.rsplit(".", 2)[0] for _, theirs, _ in entries}
    assert "blocks.2.3" in prefixes and "blocks.1.3" not in prefixes and "blocks.6.1" not in prefixes


def test_tf_variant_needs_saying_and_is_checked(reference_logits):
    name = "timm_tf_mobilenetv3_small_w010"
    want = reference_logits[f"{name}/161"]
    x = model_input(161)
    # the same keys and shapes as timm's mobilenetv3_small: loaded as that, the outputs are off
    plain = from_weights(fixture_path(name))
    assert plain.config.get("padding") is None and np.abs(plain(x) - want).max() > 1e-3 * np.abs(want).max()
    tf = from_weights(fixture_path(name), variant="tf")
    assert tf.config["padding"] == "same" and tf.config["bn_eps"] == 1e-3
    np.testing.assert_allclose(tf(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # the fused model and a model built by hand with padding="same" agree
    np.testing.assert_allclose(tf.fuse()(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    built = npmobilenet.build(**tf.config)
    load_weights(built, fixture_path(name))
    np.testing.assert_allclose(built.eval()(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with pytest.raises(ValueError, match="variant must be None or 'tf'"):
        from_weights(fixture_path(name), variant="tensorflow")
    with pytest.raises(ValueError, match="MobileNetV3 only"):
        from_weights(fixture_path("timm_mobilenetv2_w010"), variant="tf")
    with pytest.raises(ValueError, match="MobileNetV3 only"):
        from_weights(fixture_path("tv_mobilenet_v3_small_w035"), variant="tf")


# -- timm's MobileNetV4-Conv ------------------------------------------------------------------------
V4_FIXTURES = sorted(name for name, entry in MODELS.items() if entry["arch"].startswith("mobilenet_v4"))
with open(os.path.join(FIXTURES, "timm_mobilenetv4_shapes.json")) as _f:
    TIMM_V4_SHAPES = json.load(_f)["models"]   # timm's keys and shapes at its published widths
# timm's model name -> (our arch, width): timm's _035/_050 are channel multipliers of the small model
TIMM_V4_MODELS = {
    "mobilenetv4_conv_small_035": ("mobilenet_v4_conv_small", 0.35),
    "mobilenetv4_conv_small_050": ("mobilenet_v4_conv_small", 0.5),
    "mobilenetv4_conv_small": ("mobilenet_v4_conv_small", 1.0),
    "mobilenetv4_conv_medium": ("mobilenet_v4_conv_medium", 1.0),
    "mobilenetv4_conv_large": ("mobilenet_v4_conv_large", 1.0),
}


def test_there_are_v4_fixtures_of_every_size_in_both_formats():
    assert {MODELS[name]["arch"] for name in V4_FIXTURES} == {
        "mobilenet_v4_conv_small", "mobilenet_v4_conv_medium", "mobilenet_v4_conv_large"}
    assert {MODELS[name]["format"] for name in V4_FIXTURES} == {"safetensors", "pth"}
    assert set(TIMM_V4_SHAPES) == set(TIMM_V4_MODELS)


@pytest.mark.parametrize("name", V4_FIXTURES)
def test_v4_loads_into_a_built_model_and_matches_timm_at_every_resolution(name, reference_logits):
    # from_weights is checked at 224 and 161 with every fixture above; here the model is built by
    # hand, and also run at timm's default input size for medium (256) and large (384)
    entry = MODELS[name]
    model = npmobilenet.build(entry["arch"], entry["width"], num_classes=10)
    assert load_weights(model, fixture_path(name)) is model
    model.eval()
    for resolution in entry.get("resolutions", (224, 161)):
        want = reference_logits[f"{name}/{resolution}"]
        got = model(model_input(resolution))
        scale = np.abs(want).max()
        print(f"{name} {resolution}x{resolution} (built): max |diff| {np.abs(got - want).max():.2e}, logit scale {scale:.1f}")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{name} at {resolution}")
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize("name", V4_FIXTURES)
def test_v4_round_trips_through_timm_names(name):
    # our model's weights under timm's names are the file's, key for key (num_batches_tracked aside)
    state = read_foreign_state(fixture_path(name))
    again = foreign_state_dict(from_weights(fixture_path(name)), "timm")
    assert set(again) == set(state)
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            assert again[key].shape == value.shape, key
            np.testing.assert_array_equal(again[key], value.astype(np.float32), err_msg=key)


@pytest.mark.parametrize("timm_name", sorted(TIMM_V4_MODELS))
def test_timm_v4_published_widths_are_recognised(timm_name):
    # timm's own keys and shapes (no weights): arch, width and classes are read from them, and our
    # model at that width has exactly those keys and shapes under timm's names
    arch, width = TIMM_V4_MODELS[timm_name]
    shapes = {key: tuple(shape) for key, shape in TIMM_V4_SHAPES[timm_name]}
    state = {key: np.broadcast_to(np.float32(0), shape) for key, shape in shapes.items()}
    assert recognise.detect_naming(state) == ("timm", arch)
    assert recognise.file_overrides(state, "timm", arch) == {}         # our builder makes timm's V4 choices
    assert recognise.count_blocks(state, "timm", arch) == len(builder.arch_spec(arch).blocks)
    assert recognise.num_classes_of(state, "timm", arch) == 1000
    from npmobilenet.io.weights import infer_width

    assert infer_width(state, "timm", arch) == width
    ours = foreign_state_dict(npmobilenet.build(arch, width), "timm")
    assert {key: value.shape for key, value in ours.items()} == shapes


def test_timm_v4_small_050_loads_from_a_generated_file(tmp_path):
    # a file with mobilenetv4_conv_small_050's keys and shapes: the stem stays 32 below width 1.0
    # and the 1280 features after pooling are not scaled, so only width 0.5 builds it
    st = pytest.importorskip("safetensors.numpy")
    source = npmobilenet.build("mobilenet_v4_conv_small", 0.5, seed=3)
    state = foreign_state_dict(source, "timm")
    shapes = {key: tuple(shape) for key, shape in TIMM_V4_SHAPES["mobilenetv4_conv_small_050"]}
    assert {key: value.shape for key, value in state.items()} == shapes
    path = str(tmp_path / "mobilenetv4_conv_small_050.safetensors")
    st.save_file(state, path)
    info = inspect_weights(path)
    assert (info.naming, info.arch, info.width, info.num_classes, info.overrides) == (
        "timm", "mobilenet_v4_conv_small", 0.5, 1000, {})
    model = from_weights(path)
    assert model.config == {"arch": "mobilenet_v4_conv_small", "width": 0.5, "num_classes": 1000}
    assert model.stem.conv.out_channels == 32 and model.classifier[0].out_channels == 1280
    a, b = source.state_dict(), model.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_v4_file_into_another_model_is_named():
    small = fixture_path("timm_mobilenetv4_conv_small_w010")
    for arch in ("mobilenet_v3_small", "mobilenet_v4_conv_medium"):
        model = npmobilenet.build(arch, width=0.1, num_classes=10)
        with pytest.raises(ValueError, match=r"holds timm's mobilenetv4_conv_small\* \(mobilenet_v4_conv_small\) "
                                             rf"weights, but the model is {arch}"):
            load_weights(model, small)
    with pytest.raises(ValueError, match="holds mobilenet_v4_conv_small weights .*not mobilenet_v4_conv_large"):
        from_weights(small, arch="mobilenet_v4_conv_large")
    # a V3 file into a V4 model, likewise
    with pytest.raises(ValueError, match="holds timm's mobilenetv3_small_.*but the model is mobilenet_v4_conv_small"):
        load_weights(npmobilenet.build("mobilenet_v4_conv_small", 0.1, 10), fixture_path("timm_mobilenetv3_small_w010"))
    with pytest.raises(ValueError, match="torchvision has no mobilenet_v4_conv_small"):
        foreign_state_dict(npmobilenet.build("mobilenet_v4_conv_small", 0.1, 10), "torchvision")


def test_v4_wrong_width_lists_every_mismatch():
    path = fixture_path("timm_mobilenetv4_conv_medium_w005")
    model = npmobilenet.build("mobilenet_v4_conv_medium", width=0.25, num_classes=10)
    with pytest.raises(ValueError) as info:
        load_weights(model, path)
    message = str(info.value)
    assert "the file is width 0.05, the model width 0.25" in message
    assert ("blocks.0.0.conv_pwl.weight -> blocks.0.conv_pwl.conv.weight: model expects (128, 16) in our layout "
            "= (16, 128, 1, 1) in the file's (Cout, Cin, 1, 1); the file has (8, 128, 1, 1) = (128, 8) in ours") in message
    assert ("conv_head.weight -> classifier.0.conv.weight: model expects (240, 1280) in our layout = (1280, 240, 1, 1) "
            "in the file's (Cout, Cin, 1, 1); the file has (1280, 48, 1, 1)") in message
    assert message.count(" -> ") > 300
    with pytest.raises(ValueError, match="holds a width-0.05 mobilenet_v4_conv_medium, not width 0.25"):
        from_weights(path, width=0.25)


def test_v4_missing_keys_hybrids_and_other_depths_are_clear(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    state = read_foreign_state(fixture_path("timm_mobilenetv4_conv_small_w010"))

    def save(edited, name):
        path = str(tmp_path / name)
        st.save_file(edited, path)
        return path

    # missing keys: still recognised by its structure, each missing key named with ours
    edited = {k: v for k, v in state.items() if k not in ("norm_head.running_var", "blocks.2.0.dw_start.conv.weight")}
    with pytest.raises(ValueError) as info:
        load_weights(npmobilenet.build("mobilenet_v4_conv_small", 0.1, 10), save(edited, "missing.safetensors"))
    message = str(info.value)
    assert "missing from the file (2): " in message
    assert "norm_head.running_var (for classifier.0.bn.running_var; model expects (1280,)" in message
    assert "blocks.2.0.dw_start.conv.weight (for blocks.4.dw_start.conv.weight; model expects (8, 1, 5, 5)" in message
    # timm's hybrid models (attention blocks) are refused by name
    hybrid = dict(state, **{"blocks.3.2.attn.query.proj.weight": np.zeros((8, 16, 1, 1), np.float32)})
    with pytest.raises(ValueError, match="MobileNetV4 hybrid keys .*attention blocks"):
        from_weights(save(hybrid, "hybrid.safetensors"))
    # a block fewer in stage 3: timm has no such V4
    shallower = {k: v for k, v in state.items() if not k.startswith("blocks.3.5.")}
    with pytest.raises(ValueError, match=r"first block a conv row \(small\), but \(2, 2, 6, 5\) blocks in stages 0-3"):
        from_weights(save(shallower, "shallower.safetensors"))
