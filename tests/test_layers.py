"""Every layer's hand-written backward pass against central finite differences (float64)."""
import numpy as np
import pytest

from gradcheck import assert_close, numeric_grad, sample_indices
from npmobilenet.layers import (
    BatchNorm, Conv2d, ConvBNAct, DepthwiseConv2d, DepthwiseSeparable, Dropout, GlobalAvgPool, HardSigmoid,
    HardSwish, InvertedResidual, Linear, PointwiseConv2d, ReLU, ReLU6, Sequential, SqueezeExcite,
)


def check_layer_gradients(layer, x, rng, coords=6, rtol=1e-4):
    """Compare dx and every parameter gradient with finite differences of <R, layer(x)>."""
    layer.astype(np.float64)
    x = x.astype(np.float64)
    y = layer(x)
    weights = rng.standard_normal(y.shape)

    def loss():
        return float(np.sum(weights * layer(x)))

    # Forward once more so the cache matches the unperturbed input, then backward.
    layer(x)
    dx = layer.backward(weights)
    assert dx.shape == x.shape
    for idx in sample_indices(x.shape, coords, rng):
        assert_close(dx[idx], numeric_grad(loss, x, idx), f"{type(layer).__name__} dx{idx}", rtol)
    layer(x)
    layer.backward(weights)
    grads = {name: p.grad.copy() for name, p in layer.named_parameters()}
    for name, p in layer.named_parameters():
        for idx in sample_indices(p.shape, coords, rng):
            assert_close(grads[name][idx], numeric_grad(loss, p.data, idx), f"{type(layer).__name__} d{name}{idx}", rtol)


def away_from_kinks(shape, rng, kinks=(-3.0, 0.0, 3.0, 6.0), margin=0.05):
    x = rng.uniform(-5, 8, size=shape)
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] += 2 * margin
    return x


@pytest.mark.parametrize("act", [ReLU, ReLU6, HardSigmoid, HardSwish])
def test_activation_gradients(act):
    rng = np.random.default_rng(0)
    check_layer_gradients(act(), away_from_kinks((2, 3, 3, 4), rng), rng, coords=12)


def test_activation_values_follow_their_definitions():
    x = np.array([-4.0, -3.0, -1.5, 0.0, 1.0, 3.0, 5.0, 7.0])
    relu6 = np.minimum(np.maximum(x, 0), 6)
    np.testing.assert_array_equal(ReLU()(x), np.maximum(x, 0))
    np.testing.assert_array_equal(ReLU6()(x), relu6)
    np.testing.assert_allclose(HardSigmoid()(x), np.minimum(np.maximum(x + 3, 0), 6) / 6)
    np.testing.assert_allclose(HardSwish()(x), x * np.minimum(np.maximum(x + 3, 0), 6) / 6)
    # At the kinks the derivative is PyTorch's: hard-swish uses (2x+3)/6 on the closed interval
    # [-3, 3], so -1/2 at -3 and 3/2 at 3.
    h = HardSwish()
    h(np.array([-3.0, 3.0]))
    np.testing.assert_allclose(h.backward(np.ones(2)), [-0.5, 1.5])


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients(training):
    rng = np.random.default_rng(1)
    bn = BatchNorm(4, eps=1e-3)
    bn.gamma.data[:] = rng.uniform(0.5, 2, 4)
    bn.beta.data[:] = rng.standard_normal(4)
    bn.running_mean[:] = rng.standard_normal(4)
    bn.running_var[:] = rng.uniform(0.5, 2, 4)
    bn.train(training)
    check_layer_gradients(bn, rng.standard_normal((3, 2, 3, 4)) * 2 + 1, rng, coords=10)


def test_batchnorm_statistics():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 3, 2)) * 3 + 5
    bn = BatchNorm(2, eps=1e-5, momentum=0.1).astype(np.float64)
    y = bn(x)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1, rtol=1e-4)
    # Running statistics: momentum update with the unbiased batch variance (PyTorch's convention).
    n = 4 * 3 * 3
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * x.var(axis=(0, 1, 2)) * n / (n - 1))
    bn.eval()
    expected = (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-5)
    np.testing.assert_allclose(bn(x), expected)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_on_vectors_is_batchnorm_on_1x1_maps(training):
    # V4 normalises the pooled (N, C) features: the same arithmetic as on the (N, 1, 1, C) map,
    # bit for bit, forward and backward, running statistics included
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((5, 6)) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal((5, 6)).astype(np.float32)
    vector, grid = BatchNorm(6, eps=1e-5, momentum=0.1), BatchNorm(6, eps=1e-5, momentum=0.1)
    for bn in (vector, grid):
        bn.gamma.data[:] = np.linspace(0.5, 1.5, 6)
        bn.running_var[:] = np.linspace(0.5, 2.0, 6)
        bn.train(training)
    y = vector(x)
    assert y.shape == (5, 6) and y.dtype == np.float32
    np.testing.assert_array_equal(y, grid(x.reshape(5, 1, 1, 6)).reshape(5, 6))
    dx = vector.backward(dy)
    assert dx.shape == (5, 6)
    np.testing.assert_array_equal(dx, grid.backward(dy.reshape(5, 1, 1, 6)).reshape(5, 6))
    for a, b in zip(vector.state_dict().values(), grid.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(vector.gamma.grad, grid.gamma.grad)
    np.testing.assert_array_equal(vector.beta.grad, grid.beta.grad)
    if training:
        np.testing.assert_allclose(y.mean(axis=0), vector.beta.data, atol=1e-6)
    vector.train(training)
    check_layer_gradients(vector, rng.standard_normal((4, 6)) * 2 + 1, rng, coords=10)
    for bad in (np.zeros((5, 7), np.float32), np.zeros((2, 3, 6), np.float32), np.zeros(6, np.float32)):
        with pytest.raises(ValueError, match=r"\(N, H, W, 6\) or \(N, 6\)"):
            vector(bad)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_linear_bn_act_gradients(training):
    # V4's layer after pooling: a bias-free Linear, batch norm over the (N, C) vectors, ReLU
    rng = np.random.default_rng(9)
    layer = ConvBNAct(Linear(5, 4, bias=False, rng=rng, init_std=0.5), 1e-5, 0.1, "relu")
    assert (layer.in_channels, layer.out_channels) == (5, 4) and layer.conv.bias is None
    layer.bn.beta.data[:] = rng.uniform(-0.2, 0.5, 4)
    layer.bn.running_var[:] = rng.uniform(0.5, 2, 4)
    layer.train(training)
    check_layer_gradients(layer, rng.standard_normal((6, 5)), rng, coords=8)


def test_conv_layer_gradients_with_bias():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 6, 3))
    check_layer_gradients(Conv2d(3, 4, 3, stride=2, padding=1, bias=True, rng=rng), x, rng)
    check_layer_gradients(DepthwiseConv2d(3, 5, stride=1, padding=2, bias=True, rng=rng), x, rng)
    check_layer_gradients(PointwiseConv2d(3, 4, bias=True, rng=rng), x, rng)


def test_tensorflow_same_padding():
    from npmobilenet.ops.geometry import tf_same_padding

    # TensorFlow: ceil(size / stride) outputs, the odd padding pixel after
    assert tf_same_padding(224, 3, 2) == (0, 1) and tf_same_padding(225, 3, 2) == (1, 1)
    assert tf_same_padding(112, 5, 2) == (1, 2) and tf_same_padding(7, 5, 1) == (2, 2)
    assert tf_same_padding(1, 3, 2) == (1, 1) and tf_same_padding(9, 3, 1, dilation=2) == (2, 2)
    rng = np.random.default_rng(5)
    for size in (7, 8):
        x = rng.standard_normal((2, size, size + 3, 3)).astype(np.float32)
        for make in (lambda p: Conv2d(3, 4, 3, stride=2, padding=p, rng=np.random.default_rng(1)),
                     lambda p: DepthwiseConv2d(3, 5, stride=2, padding=p, rng=np.random.default_rng(1))):
            same = make("same")
            t, b = tf_same_padding(size, same.kernel_size[0], 2)
            l, r = tf_same_padding(size + 3, same.kernel_size[1], 2)
            fixed = make(((t, b), (l, r)))
            y = same(x)
            assert y.shape[1:3] == (-(-size // 2), -(-(size + 3) // 2))
            np.testing.assert_array_equal(y, fixed(x))
            dy = rng.standard_normal(y.shape).astype(np.float32)
            np.testing.assert_array_equal(same.backward(dy), fixed.backward(dy))
            np.testing.assert_array_equal(same.weight.grad, fixed.weight.grad)
            assert same.padding is None and same.padding_at(size, size + 3) == (t, b, l, r)
        check_layer_gradients(Conv2d(3, 4, 3, stride=2, padding="same", rng=rng), x, rng)
    with pytest.raises(ValueError, match="'same'"):
        Conv2d(3, 4, 3, padding="valid")


def test_linear_pool_dropout_gradients():
    rng = np.random.default_rng(4)
    check_layer_gradients(Linear(5, 3, rng=rng, init_std=0.5), rng.standard_normal((4, 5)), rng)
    check_layer_gradients(GlobalAvgPool(), rng.standard_normal((2, 3, 4, 5)), rng)
    drop = Dropout(0.5, rng=np.random.default_rng(0))
    x = rng.standard_normal((8, 6))

    # A fixed mask: reseed before each forward so finite differences see the same function.
    class Fixed(Sequential):
        def forward(self, x):
            drop.rng = np.random.default_rng(7)
            return super().forward(x)

    check_layer_gradients(Fixed([drop]), x, rng)


def test_dropout_scales_and_is_identity_in_eval():
    drop = Dropout(0.25, rng=np.random.default_rng(0))
    x = np.ones((200, 50), np.float32)
    y = drop(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.02
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_squeeze_excite_gradients():
    rng = np.random.default_rng(5)
    se = SqueezeExcite(8, 4, rng=rng)
    for p in se.parameters():
        p.data[...] = rng.standard_normal(p.shape).astype(p.data.dtype)
    check_layer_gradients(se, rng.standard_normal((2, 3, 3, 8)), rng, coords=8)


@pytest.mark.parametrize("training", [True, False])
def test_block_gradients(training):
    rng = np.random.default_rng(6)
    blocks = [
        ConvBNAct(Conv2d(3, 4, 3, padding=1, rng=rng), 1e-3, 0.1, "relu6"),
        DepthwiseSeparable(4, 6, stride=2, rng=rng),
        InvertedResidual(4, 12, 4, 3, 1, "hardswish", se_channels=8, bn_eps=1e-3, rng=rng),
        InvertedResidual(4, 4, 8, 5, 2, "relu", rng=rng),
    ]
    assert blocks[2].use_residual and not blocks[3].use_residual and blocks[3].conv_pw is None
    for block in blocks:
        for name, bn in block.modules():
            if isinstance(bn, BatchNorm):
                bn.running_var[:] = rng.uniform(0.5, 2, bn.channels)
                bn.beta.data[:] = rng.uniform(-0.5, 1.0, bn.channels)
        block.train(training)
        c = block.conv.in_channels if isinstance(block, ConvBNAct) else block.in_channels
        check_layer_gradients(block, rng.standard_normal((2, 6, 6, c)), rng, coords=5, rtol=1e-3)


def test_backward_before_forward_is_a_clear_error():
    for layer in [Conv2d(3, 4, 3), DepthwiseConv2d(3, 3), PointwiseConv2d(3, 4), BatchNorm(3), ReLU6(),
                  Linear(3, 4), GlobalAvgPool(), SqueezeExcite(8, 8)]:
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(np.zeros((1, 2, 2, 4), np.float32))


def test_train_eval_switch_every_layer():
    block = InvertedResidual(8, 16, 8, 3, 1, "hardswish", se_channels=8)
    block.eval()
    assert all(not m.training for _, m in block.modules())
    block.train()
    assert all(m.training for _, m in block.modules())


def test_batch_norm_refuses_one_value_per_channel_in_training():
    # batch statistics of a single value normalise it to beta: no gradient reaches the layers
    # before (PyTorch raises here too); eval mode uses the running statistics and is fine
    from npmobilenet.layers import BatchNorm

    bn = BatchNorm(4)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(np.ones((1, 1, 1, 4), np.float32))
    assert bn(np.ones((2, 4), np.float32)).shape == (2, 4)
    bn.eval()
    assert bn(np.ones((1, 4), np.float32)).shape == (1, 4)
