"""A classification network's feature part as one layer of a dense-prediction model.

LR-ASPP and SSDLite keep a MobileNet's stem, blocks and 1x1 head conv and drop its pooling and
classifier (torchvision uses `backbone.features`). `Backbone` registers those three as its
children, so the parameters are named `backbone.stem...`, `backbone.blocks...`,
`backbone.head...` and the classifier is no part of the model, and it takes the maps through the
network's own `features` / `backward_features` / `lower_features` at fixed taps.
"""
from npmobilenet.layers.base import Layer


class Backbone(Layer):
    """x (N, H, W, 3) -> a list of feature maps (N, h, w, C), one per tap of `taps` (module names
    of `network`, e.g. "blocks.3", "head", "blocks.12.conv_pw")."""

    def __init__(self, network, taps):
        super().__init__()
        self.network, self.taps = network, list(taps)
        for name in ("stem", "blocks", "head"):
            if getattr(network, name, None) is not None:
                self.add_child(name, getattr(network, name))

    @property
    def feature_info(self):
        """`FeatureTap(name, channels, reduction)` of each tap."""
        return self.network.feature_taps(self.taps)

    def forward(self, x):
        return self.network.features(x, self.taps)

    def backward(self, dmaps):
        """dmaps: one gradient per map (None: none) -> dx (N, H, W, 3)."""
        return self.network.backward_features(dmaps)

    def lower(self, graph, x, name):
        """The ops up to the deepest tap; returns the taps' tensor names (a list)."""
        return self.network.lower_features(graph, x, name, self.taps)

    def extra_repr(self):
        return f"{self.network.config.get('arch')}, taps={self.taps}"
