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
        # Work on (N*H*W, C): each channel's statistics are column reductions, one pass each.
        rows = x.reshape(-1, self.channels)
        count = rows.shape[0]
        if self.training:
            mean = rows.mean(axis=0)
            x_hat = rows - mean
            var = np.einsum("ij,ij->j", x_hat, x_hat) / count
            unbiased = var * (count / max(count - 1, 1))
            self.running_mean[...] = (1 - self.momentum) * self.running_mean + self.momentum * mean
            self.running_var[...] = (1 - self.momentum) * self.running_var + self.momentum * unbiased
        else:
            x_hat = rows - self.running_mean.astype(x.dtype)
            var = self.running_var
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        x_hat *= inv_std
        self._cache = (x_hat, inv_std, self.training, x.shape)
        y = x_hat * self.gamma.data
        y += self.beta.data
        return y.reshape(x.shape)

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("BatchNorm.backward called before forward")
        x_hat, inv_std, training, shape = self._cache
        dy = dy.reshape(x_hat.shape)
        self.gamma.grad[...] = np.einsum("ij,ij->j", dy, x_hat)
        self.beta.grad[...] = dy.sum(axis=0)
        scale = self.gamma.data * inv_std
        if not training:
            return (dy * scale).reshape(shape)
        # The batch statistics depend on x, so the gradient has two extra terms (Ioffe & Szegedy,
        # section 3): dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat)).
        count = x_hat.shape[0]
        dx = x_hat * (-self.gamma.grad / count)
        dx += dy
        dx -= self.beta.grad / count
        dx *= scale
        return dx.reshape(shape)

    def extra_repr(self):
        return f"{self.channels}, eps={self.eps}, momentum={self.momentum}"
