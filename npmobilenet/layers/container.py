"""Sequential: layers applied in order, backward in reverse."""
from npmobilenet.layers.base import Layer


class Sequential(Layer):
    def __init__(self, layers=()):
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_child(str(i), layer)

    def append(self, layer):
        self.add_child(str(len(self._children)), layer)
        return layer

    def __len__(self):
        return len(self._children)

    def __getitem__(self, i):
        return list(self._children.values())[i]

    def __iter__(self):
        return iter(self._children.values())

    def forward(self, x):
        for layer in self._children.values():
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(list(self._children.values())):
            dy = layer.backward(dy)
        return dy

    def lower(self, graph, x, name):
        return self.lower_children(graph, x, name)
