"""The MobileNet model: stem -> blocks -> [head] -> global pool -> classifier; its feature maps
(`features`, taps in `features.py`) and fine-tuning (`reset_classifier`, `freeze_backbone`)."""
import numpy as np

from npmobilenet.layers import Dropout, GlobalAvgPool, Layer, Linear
from npmobilenet.models import features as taps
from npmobilenet.ops.geometry import check_images


class MobileNet(Layer):
    """x: (N, H, W, 3) float -> logits (N, num_classes). H, W >= 32.

    `backward(dlogits)` returns dx (N, H, W, 3) and overwrites every parameter's gradient (with a
    frozen backbone: only the classifier's, and returns None).
    `config` rebuilds the architecture: `npmobilenet.build(**model.config)`.
    `features(x, out_indices)` returns feature maps and `backward_features` takes their gradients;
    `feature_info` describes the default taps.
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
        self.frozen_backbone = False
        self._output_shape = None
        self._features = None

    @property
    def arch(self):
        return self.config["arch"]

    def path(self):
        """The top-level steps in execution order, as `(dotted name, layer)`: stem, blocks.0 ...
        blocks.N-1, [head], pool, classifier.0 ... (the forward pass is these, one after another)."""
        steps = [("stem", self.stem)] + [(f"blocks.{i}", block) for i, block in enumerate(self.blocks)]
        if self.head is not None:
            steps.append(("head", self.head))
        steps.append(("pool", self.pool))
        return steps + [(f"classifier.{i}", layer) for i, layer in enumerate(self.classifier)]

    def forward(self, x):
        x = check_images(x, self.dtype)
        for _, layer in self.path():
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
        steps = self.path()
        first = len(steps) - len(self._trained_tail()) if self.frozen_backbone else 0
        # a frozen backbone needs no gradient: the backward pass stops where training does
        for _, layer in reversed(steps[first:]):
            d = layer.backward(d)
        return None if first else d

    # -- feature maps ---------------------------------------------------------------------------
    def features(self, x, out_indices=None):
        """x: (N, H, W, 3) -> a list of NHWC feature maps, one per tap, as timm's `features_only`.

        out_indices: None (every tap of `feature_info`: the end of each stage), or a list of
        indices into `feature_info` and/or module names, e.g. `["blocks.3", "head"]` (LR-ASPP's
        taps) or `["blocks.12.conv_pw", "head"]` (SSDLite's: block 12 after its expansion). Runs
        the model only as far as the deepest tap; `backward_features` takes the maps' gradients.
        """
        x = check_images(x, self.dtype)
        self._features = taps.FeatureRun(self, taps.resolve_taps(self, out_indices))
        return self._features.forward(x)

    def backward_features(self, dfeatures):
        """dfeatures: one gradient per map the last `features` call returned (None for a map
        with no gradient) -> dx (N, H, W, 3). Overwrites every parameter's gradient (zero for
        the layers the taps do not reach back through, the classifier included)."""
        if self._features is None:
            raise RuntimeError("backward_features called before features()")
        return self._features.backward(list(dfeatures), self.dtype)

    @property
    def feature_info(self):
        """The default taps (the end of each stage) as `FeatureTap(name, channels, reduction)`."""
        return taps.describe_taps(self, taps.stage_ends(self))

    def feature_taps(self, names):
        """`FeatureTap`s for any taps (module names or indices, as `features` takes them)."""
        return taps.describe_taps(self, taps.resolve_taps(self, names))

    def lower_features(self, graph, x, name, out_indices=None):
        """Append the ops up to the deepest tap to `graph` (a `graph.Builder`), reading tensor
        `x`, op names under `name`; returns the taps' tensor names (for a head lowered after them)."""
        return taps.lower_features(self, graph, x, name, taps.resolve_taps(self, out_indices))

    # -- fine-tuning ----------------------------------------------------------------------------
    def _trained_tail(self):
        """The classifier's last fully connected layer and the dropout just before it (as
        torchvision's fine-tuning recipes replace `classifier[-1]`)."""
        layers = list(self.classifier)
        tail = layers[-1:]
        if len(layers) > 1 and isinstance(layers[-2], Dropout):
            tail = layers[-2:]
        return tail

    def reset_classifier(self, num_classes, seed=0):
        """A new last fully connected layer for `num_classes` classes (initialised as `build`
        does, from `seed`); every other layer is kept. `config` follows, so the model saves and
        reloads with the new class count."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        last = self.classifier[len(self.classifier) - 1]
        fresh = Linear(last.in_features, int(num_classes), rng=np.random.default_rng(seed)).astype(self.dtype)
        fresh.train(last.training)
        self.classifier.add_child(str(len(self.classifier) - 1), fresh)
        self.num_classes = int(num_classes)
        self.config = dict(self.config, num_classes=int(num_classes))
        self._output_shape = None
        return self

    def freeze_backbone(self, frozen=True):
        """Freeze everything but the classifier's last layer (a linear probe): the frozen layers
        stay in eval mode (running statistics, kept as they are) and `backward` computes no
        gradient for them; `named_trainable_parameters()` lists what an optimizer should update."""
        self.frozen_backbone = bool(frozen)
        if self.frozen_backbone:
            for _, layer in self._frozen_steps():
                layer.zero_grad()
        return self.train(self.training)

    def _frozen_steps(self):
        steps = self.path()
        return steps[:len(steps) - len(self._trained_tail())] if self.frozen_backbone else []

    def named_trainable_parameters(self):
        """`(name, Parameter)` of the parameters training updates: all, or only the classifier's
        last layer's with a frozen backbone."""
        frozen = {name for name, _ in self._frozen_steps()}
        return [(name, p) for name, p in self.named_parameters()
                if not any(name == f or name.startswith(f + ".") for f in frozen)]

    def train(self, mode=True):
        super().train(mode)
        for _, layer in self._frozen_steps():
            layer.train(False)
        self.training = mode
        return self

    def fuse(self, threads=None):
        """An inference-only copy: batch norm folded, convolution, bias and activation fused;
        `npmobilenet.inference.fuse_model(model, threads)`, which runs the model's lowered graph.

        The model must be in eval mode.
        """
        from npmobilenet.inference import fuse_model

        return fuse_model(self, threads)

    def extra_repr(self):
        c = self.config
        stride = f", output_stride={c['output_stride']}" if c.get("output_stride", 32) != 32 else ""
        return f"{c['arch']}, width={c['width']}, num_classes={c['num_classes']}{stride}"
