"""The MobileNet model: stem -> blocks -> [head] -> global pool -> classifier."""
import numpy as np

from npmobilenet.layers import GlobalAvgPool, Layer
from npmobilenet.ops.geometry import check_images


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

    def forward(self, x):
        x = check_images(x, self.dtype)
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
        """An inference-only copy: batch norm folded, convolution, bias and activation fused;
        `npmobilenet.inference.fuse_model(model, threads)`, which runs the model's lowered graph.

        The model must be in eval mode.
        """
        from npmobilenet.inference import fuse_model

        return fuse_model(self, threads)

    def extra_repr(self):
        c = self.config
        return f"{c['arch']}, width={c['width']}, num_classes={c['num_classes']}"
