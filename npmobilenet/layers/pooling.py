"""Global average pooling: (N, H, W, C) -> (N, C)."""
from npmobilenet.graph.ops import GlobalAvgPool as GlobalAvgPoolOp
from npmobilenet.layers.base import Layer


class GlobalAvgPool(Layer):
    def forward(self, x):
        self._shape = x.shape
        return x.mean(axis=(1, 2))

    def backward(self, dy):
        shape = getattr(self, "_shape", None)
        if shape is None:
            raise RuntimeError("GlobalAvgPool.backward called before forward")
        n, h, w, c = shape
        # Each input contributes 1/(H*W) of its channel's mean.
        return (dy / (h * w))[:, None, None, :].repeat(h, axis=1).repeat(w, axis=2)

    def lower(self, graph, x, name):
        return graph.add(GlobalAvgPoolOp(name, (x,)))
