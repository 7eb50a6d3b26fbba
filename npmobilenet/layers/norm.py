"""Batch normalisation (Ioffe & Szegedy, 2015) over the channel axis of NHWC activations; the
arithmetic is `npmobilenet.ops.batch_norm`."""
import numpy as np

from npmobilenet.graph import ops as graph_ops
from npmobilenet.layers.base import Layer
from npmobilenet.ops.batch_norm import batch_norm_backward, batch_norm_forward, batch_statistics


class BatchNorm(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel. x, y: (N, H, W, C), or (N, C)
    for a vector per image (V4's batch norm after pooling, timm's norm_head), normalised as the
    (N, 1, 1, C) map it is: its statistics are over the N images.

    Training mode normalises with the batch's statistics (biased variance) and updates the running
    statistics as `running = (1 - momentum) * running + momentum * batch` with the unbiased
    variance, as PyTorch does, so torchvision's running statistics mean the same thing here.
    Eval mode normalises with the running statistics. `eps` and `momentum` belong to the
    architecture (torchvision: 1e-5/0.1 for V2, 1e-3/0.01 for V3).
    """

    def __init__(self, channels, eps=1e-5, momentum=0.1):
        super().__init__()
        self.channels, self.eps, self.momentum = channels, eps, momentum
        self.gamma = self.add_param("gamma", np.ones(channels, np.float32), decay=False)
        self.beta = self.add_param("beta", np.zeros(channels, np.float32), decay=False)
        self.add_buffer("running_mean", np.zeros(channels, np.float32))
        self.add_buffer("running_var", np.ones(channels, np.float32))
        self._cache = None

    @property
    def running_mean(self):
        return self._buffers["running_mean"]

    @property
    def running_var(self):
        return self._buffers["running_var"]

    def forward(self, x, activation=None):
        """y = BN(x), or act(BN(x)) with `activation` ("relu", "relu6", "hardswish", "hardsigmoid"),
        computed in the same pass (and its gradient in `backward`): `ConvBNAct`'s way."""
        if x.ndim not in (2, 4) or x.shape[-1] != self.channels:
            raise ValueError(f"BatchNorm expects x of shape (N, H, W, {self.channels}) or (N, {self.channels}), "
                             f"got {x.shape}")
        if x.ndim == 2:
            # the kernels take NHWC maps: a vector per image is a 1x1 map
            return self._forward_maps(x.reshape(x.shape[0], 1, 1, self.channels), activation).reshape(x.shape)
        return self._forward_maps(x, activation)

    def _forward_maps(self, x, activation):
        # x: (N, H, W, C) -> y: (N, H, W, C)
        if self.training:
            count = x.size // self.channels
            if count < 2:
                # one value per channel is its own mean: every output would be beta (PyTorch refuses too)
                raise ValueError(f"BatchNorm in training mode needs more than one value per channel, got input of "
                                 f"shape {x.shape}: train on batches of at least 2 images, or call eval()")
            mean, var = batch_statistics(x)
            unbiased = var * (count / max(count - 1, 1))
            self.running_mean[...] = (1 - self.momentum) * self.running_mean + self.momentum * mean
            self.running_var[...] = (1 - self.momentum) * self.running_var + self.momentum * unbiased
        else:
            mean, var = self.running_mean, self.running_var
        # the input itself is kept for the backward pass, which recomputes x_hat from it
        self._cache = (x, mean, var, self.training, activation)
        return batch_norm_forward(x, mean, var, self.gamma.data, self.beta.data, self.eps, activation)

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("BatchNorm.backward called before forward")
        if dy.ndim == 2:
            # dy: (N, C) for a vector input, as the (N, 1, 1, C) map the forward pass normalised
            return self._backward_maps(dy.reshape(dy.shape[0], 1, 1, dy.shape[1])).reshape(dy.shape)
        return self._backward_maps(dy)

    def _backward_maps(self, dy):
        # dy: (N, H, W, C) -> dx: (N, H, W, C)
        x, mean, var, training, activation = self._cache
        # in training mode the batch statistics depend on x: Ioffe & Szegedy, section 3
        dx, dgamma, dbeta = batch_norm_backward(dy, x, mean, var, self.gamma.data, self.eps, training, activation,
                                                self.beta.data)
        self.gamma.grad[...] = dgamma
        self.beta.grad[...] = dbeta
        return dx

    def lower(self, graph, x, name):
        return graph.add(graph_ops.BatchNorm(name, (x,), self.gamma.data, self.beta.data, self.running_mean,
                                             self.running_var, self.eps))

    def extra_repr(self):
        return f"{self.channels}, eps={self.eps}, momentum={self.momentum}"
