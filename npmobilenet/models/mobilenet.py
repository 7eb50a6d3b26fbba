"""The MobileNet model: stem -> blocks -> [head] -> global pool -> classifier."""
import numpy as np

from npmobilenet.layers import GlobalAvgPool, Layer

MIN_RESOLUTION = 32  # five stride-2 stages take 32x32 to 1x1


class MobileNet(Layer):
    """x: (N, H, W, 3) float -> logits (N, num_classes). H, W >= 32.

    `backward(dlogits)` returns dx (N, H, W, 3) and overwrites every parameter's gradient.
    `config` rebuilds the architecture: `npmobilenet.build(**model.config)`.
    """

    def __init__(self, config, spec, stem, blocks, head, classifier):
        super().__init__()
        self.config, self.spec = config, spec
        self.stem = self.add_child("stem", stem)
        self.blocks = self.add_child("blocks", blocks)
        self.head = self.add_child("head", head) if head is not None else None
        self.pool = self.add_child("pool", GlobalAvgPool())
        self.classifier = self.add_child("classifier", classifier)
        self.num_classes = config["num_classes"]
        self._output_shape = None

    @property
    def arch(self):
        return self.config["arch"]

    def _check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array of shape (N, H, W, 3), got {type(x).__name__}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"x must be a float array (float32), got dtype {x.dtype}; scale images to floats first")
        if x.ndim != 4:
            raise ValueError(f"x must have rank 4 (N, H, W, 3) in NHWC layout, got shape {x.shape}")
        if x.shape[3] != 3:
            raise ValueError(f"x must have 3 channels last (N, H, W, 3), got shape {x.shape}")
        if x.shape[0] < 1:
            raise ValueError(f"x must hold at least one image, got shape {x.shape}")
        if x.shape[1] < MIN_RESOLUTION or x.shape[2] < MIN_RESOLUTION:
            raise ValueError(f"x must be at least {MIN_RESOLUTION}x{MIN_RESOLUTION}, got {x.shape[1]}x{x.shape[2]}")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def forward(self, x):
        x = self._check_input(x)
        for _, layer in self.children():
            x = layer(x)
        self._output_shape = x.shape
        return x

    def lower(self, graph, x, name):
        return self.lower_children(graph, x, name)

    def backward(self, dlogits):
        if self._output_shape is None:
            raise RuntimeError("backward called before any forward pass")
        if not isinstance(dlogits, np.ndarray) or dlogits.shape != self._output_shape:
            got = dlogits.shape if isinstance(dlogits, np.ndarray) else type(dlogits).__name__
            raise ValueError(f"dlogits must have the logits' shape {self._output_shape}, got {got}")
        d = np.ascontiguousarray(dlogits, dtype=self.dtype)
        for _, layer in reversed(self.children()):
            d = layer.backward(d)
        return d

    def fuse(self, threads=None):
        """An inference-only copy: batch norm folded, convolution, bias and activation fused.

        The model must be in eval mode. See `npmobilenet.inference.fuse`.
        """
        from npmobilenet.inference.fuse import fuse_model

        return fuse_model(self, threads)

    def extra_repr(self):
        c = self.config
        return f"{c['arch']}, width={c['width']}, num_classes={c['num_classes']}"
