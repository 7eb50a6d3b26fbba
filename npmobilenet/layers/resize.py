"""Bilinear resize as a layer: x (N, H, W, C) -> (N, Ho, Wo, C) at another map's size.

PyTorch's `interpolate(mode="bilinear", align_corners=False)` (`npmobilenet.ops.resize`), as
LR-ASPP's head upsamples (V3 paper, sec. 6.3). It has no parameters; `forward(x, size)` takes the
target size, and `lower(graph, x, name, like)` names the tensor whose height and width it takes
(the graph's "resize" op reads both).
"""
import numpy as np

from npmobilenet.graph.ops import Resize
from npmobilenet.layers.base import Layer
from npmobilenet.ops.resize import bilinear_resize, bilinear_resize_backward


class BilinearResize(Layer):
    def __call__(self, x, size):
        return self.forward(x, size)

    def forward(self, x, size):
        """x (N, H, W, C), size (Ho, Wo) -> (N, Ho, Wo, C)."""
        self._input_size = x.shape[1:3]
        self._output_shape = (x.shape[0],) + tuple(size) + (x.shape[3],)
        return bilinear_resize(x, tuple(size))

    def backward(self, dy):
        """dy (N, Ho, Wo, C) -> dx (N, H, W, C)."""
        shape = getattr(self, "_output_shape", None)
        if shape is None:
            raise RuntimeError("BilinearResize.backward called before forward")
        if not isinstance(dy, np.ndarray) or dy.shape != shape:
            got = dy.shape if isinstance(dy, np.ndarray) else type(dy).__name__
            raise ValueError(f"dy must have the resized map's shape {shape}, got {got}")
        return bilinear_resize_backward(dy, self._input_size)

    def lower(self, graph, x, name, like):
        return graph.add(Resize(name, (x, like)))
