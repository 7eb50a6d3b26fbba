"""Batch normalisation (Ioffe & Szegedy, 2015) over the channel axis of NHWC activations."""
import numpy as np

from npmobilenet.layers.base import Layer


class BatchNorm(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel. x, y: (N, H, W, C).

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

    def forward(self, x):
        if x.ndim != 4 or x.shape[3] != self.channels:
            raise ValueError(f"BatchNorm expects x of shape (N, H, W, {self.channels}), got {x.shape}")
        if self.training:
            count = x.shape[0] * x.shape[1] * x.shape[2]
            mean = x.mean(axis=(0, 1, 2))
            var = x.var(axis=(0, 1, 2))
            unbiased = var * (count / max(count - 1, 1))
            self.running_mean[...] = (1 - self.momentum) * self.running_mean + self.momentum * mean
            self.running_var[...] = (1 - self.momentum) * self.running_var + self.momentum * unbiased
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        x_hat = (x - mean.astype(x.dtype)) * inv_std
        self._cache = (x_hat, inv_std, self.training)
        return x_hat * self.gamma.data + self.beta.data

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("BatchNorm.backward called before forward")
        x_hat, inv_std, training = self._cache
        self.gamma.grad[...] = (dy * x_hat).sum(axis=(0, 1, 2))
        self.beta.grad[...] = dy.sum(axis=(0, 1, 2))
        scale = self.gamma.data * inv_std
        if not training:
            return dy * scale
        # The batch statistics depend on x, so the gradient has two extra terms (Ioffe & Szegedy,
        # section 3): dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat)).
        mean_dy = self.beta.grad / (x_hat.size // x_hat.shape[3])
        mean_dy_xhat = self.gamma.grad / (x_hat.size // x_hat.shape[3])
        return scale * (dy - mean_dy - x_hat * mean_dy_xhat)

    def extra_repr(self):
        return f"{self.channels}, eps={self.eps}, momentum={self.momentum}"
