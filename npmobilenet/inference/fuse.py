"""`model.fuse()`: an inference-only MobileNet with batch norm folded and every layer fused.

Folding (Ioffe & Szegedy, 2015, section 3.2: at inference batch norm is a fixed affine map).
In eval mode a convolution followed by batch norm computes, per output channel c,

    gamma_c * (conv(x, w)_c + b_c - mean_c) / sqrt(var_c + eps) + beta_c
      = conv(x, w * s)_c + (beta_c + (b_c - mean_c) * s_c),        s_c = gamma_c / sqrt(var_c + eps)

so the pair becomes one convolution with weight `w * s` (s broadcast over the output-channel
axis, the last axis of every weight layout here) and bias `beta + (b - mean) * s`. The fold is
computed in float64 and stored in float32.

Fusion: each folded convolution runs as one kernel with its bias and activation applied to each
tile of output while it is in cache (`kernels.py`); the projection of an inverted residual adds
the shortcut in the same pass; the depthwise kernel also sums its output rows, so
squeeze-and-excitation never re-reads the activation, and SE's channel gate is applied by the
projection as it reads its input. What runs is a flat list of `FusedLayer`s over named tensors;
`plan.MemoryPlan` gives every tensor a view into a few reused buffers.

Threads: one image (or a small batch of small images) runs as one call of the plan's op table
(`program.py`), every layer cut into tiles that the threads take in turn, one parallel region
for the whole network; a larger batch is cut into chunks of about two 224x224 images that worker
threads run through the whole network, each with its own plan (`chunk_images`). A
`ThreadGovernor` drops the single-image path to one thread while parallel calls are slower
(another process holding a core). The work is cut by shapes only, so outputs are bitwise
identical for every thread count.
"""
import contextlib
import math
import threading
import time

import numba
import numpy as np

from npmobilenet.inference import kernels
from npmobilenet.inference.blas import sgemm_address, single_threaded_blas
from npmobilenet.inference.plan import ALIGN, MemoryPlan, aligned
from npmobilenet.ops.geometry import tf_same_sides
from npmobilenet.inference.program import (
    CONV, DEPTHWISE, GATE_ROWS, LINEAR, POINTWISE, POOL, SE_GATE, op_row)

FLOAT = np.float32


# ---------------------------------------------------------------------------------------------
# folding
# ---------------------------------------------------------------------------------------------
def fold_batch_norm(weight, bias, bn):
    """Fold eval-mode batch norm `bn` into the convolution `(weight, bias)` before it.

    weight: any layout with output channels last ((KH, KW, Cin, Cout), (KH, KW, C) or
    (Cin, Cout)); bias: (Cout,) or None. Returns float32 `(weight * s, beta + (bias - mean) * s)`
    with `s = gamma / sqrt(running_var + eps)`.
    """
    gamma = np.asarray(bn.gamma.data, np.float64)
    beta = np.asarray(bn.beta.data, np.float64)
    mean = np.asarray(bn.running_mean, np.float64)
    var = np.asarray(bn.running_var, np.float64)
    scale = gamma / np.sqrt(var + bn.eps)
    conv_bias = np.zeros_like(mean) if bias is None else np.asarray(bias, np.float64)
    folded_weight = np.asarray(weight, np.float64) * scale
    folded_bias = beta + (conv_bias - mean) * scale
    return np.ascontiguousarray(folded_weight, FLOAT), np.ascontiguousarray(folded_bias, FLOAT)


# ---------------------------------------------------------------------------------------------
# fused layers: shapes, costs, and the kernel call over planned tensors
# ---------------------------------------------------------------------------------------------
class FusedLayer:
    """One step of the fused network.

    `inputs`/`outputs` name tensors; `output_shapes(shapes)` and `workspace_shapes(shapes)` map the
    input shapes to the shapes the plan must hold; `macs(shapes)` and `bytes_moved(shapes)` are the
    layer's cost (MACs as `npmobilenet.analysis` counts them; bytes: inputs and weights read once,
    outputs written once, float32); `call(tensors, parallel)` returns `(kernel, args)` (the layer
    run alone); `program_ops(offsets, shapes)` its rows of the op table (`program.py`), given the
    arena offsets of its tensors (inputs, outputs, workspaces, in that order). `weight_names` are
    its parameter arrays, which `pack_parameters` moves into one array (`param_offsets`).
    """

    kind = "layer"
    activation = None
    weight_names = ()

    def __init__(self, name, inputs, outputs):
        self.name, self.inputs, self.outputs = name, tuple(inputs), tuple(outputs)

    def workspace_shapes(self, shapes):
        return []

    def weight_bytes(self):
        return sum(a.nbytes for a in self.weights())

    def weights(self):
        return [getattr(self, name) for name in self.weight_names]

    def bytes_moved(self, shapes):
        out = self.output_shapes(shapes)
        elements = sum(math.prod(s) for s in shapes) + sum(math.prod(s) for s in out)
        return 4 * elements + self.weight_bytes()

    def describe(self):
        act = f", {self.activation}" if self.activation else ""
        return f"{self.kind}{act}"

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, {self.describe()})"


def _pair_kernel(pair, parallel):
    return pair[1] if parallel else pair[0]


class _Windowed(FusedLayer):
    """A KxK window: stride (sh, sw) and padding (top, bottom, left, right), or "same"
    (TensorFlow's, resolved for each input size: `pads(h, w)`)."""

    def pads(self, h, w):
        if self.padding != "same":
            return self.padding
        return tf_same_sides(h, w, self.weight.shape[:2], self.stride)


class FusedConv2d(_Windowed):
    """Standard KxK convolution + bias + activation (the stem). weight (KH, KW, Cin, Cout)."""

    kind = "conv"
    weight_names = ("weight", "bias")

    def __init__(self, name, inputs, outputs, weight, bias, activation, stride, padding):
        super().__init__(name, inputs, outputs)
        self.weight, self.bias, self.activation = weight, bias, activation
        self.stride, self.padding = stride, padding          # (sh, sw), (top, bottom, left, right) or "same"

    def output_shapes(self, shapes):
        n, h, w, _ = shapes[0]
        kh, kw, _, cout = self.weight.shape
        (sh, sw), (pt, pb, pl, pr) = self.stride, self.pads(h, w)
        return [(n, (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1, cout)]

    def macs(self, shapes):
        n, ho, wo, cout = self.output_shapes(shapes)[0]
        kh, kw, cin, _ = self.weight.shape
        return n * ho * wo * cout * kh * kw * cin

    def call(self, tensors, parallel, sgemm):
        x, y = tensors
        (sh, sw), (pt, _, pl, _) = self.stride, self.pads(x.shape[1], x.shape[2])
        return _pair_kernel(kernels.CONV2D, parallel), (
            x, self.weight, self.bias, kernels.ACTIVATIONS[self.activation], sh, sw, pt, pl, y)

    def program_ops(self, offsets, shapes):
        (n, h, w, cin), (_, ho, wo, cout) = shapes[0], self.output_shapes(shapes)[0]
        kh, kw = self.weight.shape[:2]
        (sh, sw), (pt, _, pl, _) = self.stride, self.pads(h, w)
        return [op_row(KIND=CONV, ACT=kernels.ACTIVATIONS[self.activation], TILES=n * ho, X=offsets[0], N=n, XH=h,
                       XW=w, XC=cin, Y=offsets[1], YH=ho, YW=wo, YC=cout, W=self.param_offsets["weight"],
                       B=self.param_offsets["bias"], KH=kh, KW=kw, SH=sh, SW=sw, PT=pt, PL=pl)]


class FusedPointwise(FusedLayer):
    """1x1 convolution + bias + activation, or + bias + residual; optionally SE-gated input.

    inputs: (x,) + (residual,) if `residual` + (gate,) if `gated`. weight (Cin, Cout).
    """

    kind = "pointwise"
    weight_names = ("weight", "bias")

    def __init__(self, name, inputs, outputs, weight, bias, activation, residual=False, gated=False):
        super().__init__(name, inputs, outputs)
        self.weight, self.bias, self.activation = weight, bias, activation
        self.residual, self.gated = residual, gated

    def describe(self):
        extra = (" + residual" if self.residual else "") + (" (SE-gated input)" if self.gated else "")
        return super().describe() + extra

    def output_shapes(self, shapes):
        n, h, w, _ = shapes[0]
        return [(n, h, w, self.weight.shape[1])]

    def macs(self, shapes):
        n, h, w, cin = shapes[0]
        return n * h * w * cin * self.weight.shape[1]

    def call(self, tensors, parallel, sgemm):
        x, rest = tensors[0], list(tensors[1:-1])
        y = tensors[-1]
        n, h, w, cin = x.shape
        cout = self.weight.shape[1]
        rows = n * h * w
        residual = rest.pop(0).reshape(rows, cout) if self.residual else kernels._EMPTY_ROWS
        gate = rest.pop(0) if self.gated else kernels._EMPTY_ROWS
        return _pair_kernel(kernels.POINTWISE, parallel), (
            x.reshape(rows, cin), self.weight, self.bias, kernels.ACTIVATIONS[self.activation], residual, gate,
            h * w, *kernels.pointwise_tiles(rows, cin, cout), sgemm, y.reshape(rows, cout))

    def program_ops(self, offsets, shapes):
        n, h, w, cin = shapes[0]
        cout = self.weight.shape[1]
        rows = n * h * w
        tile_rows, tile_cols = kernels.pointwise_tiles(rows, cin, cout)
        row_tiles, col_tiles = -(-rows // tile_rows), -(-cout // tile_cols)
        rest = list(offsets[1:-1])
        residual = rest.pop(0) if self.residual else -1
        gate = rest.pop(0) if self.gated else -1
        ops = []
        if self.gated and col_tiles > 1:      # as the layer's own kernel: gate every row first
            ops.append(op_row(KIND=GATE_ROWS, TILES=row_tiles, X=offsets[0], N=n, XH=h, XW=w, XC=cin, AUX=gate,
                              TR=tile_rows))
        ops.append(op_row(KIND=POINTWISE, ACT=kernels.ACTIVATIONS[self.activation], TILES=row_tiles * col_tiles,
                          X=offsets[0], N=n, XH=h, XW=w, XC=cin, Y=offsets[-1], YC=cout,
                          W=self.param_offsets["weight"], B=self.param_offsets["bias"], AUX=residual, AUX2=gate,
                          TR=tile_rows, TC=tile_cols))
        return ops


class FusedDepthwise(_Windowed):
    """KxK depthwise convolution + bias + activation; with SE after it, also its row sums.

    outputs: (y,) or (y, row_sums). weight (KH, KW, C).
    """

    kind = "depthwise"
    weight_names = ("weight", "bias")

    def __init__(self, name, inputs, outputs, weight, bias, activation, stride, padding):
        super().__init__(name, inputs, outputs)
        self.weight, self.bias, self.activation = weight, bias, activation
        self.stride, self.padding = stride, padding

    def describe(self):
        kh, kw, _ = self.weight.shape
        return f"depthwise {kh}x{kw}/{self.stride[0]}" + (f", {self.activation}" if self.activation else "")

    def output_shapes(self, shapes):
        n, h, w, c = shapes[0]
        kh, kw, _ = self.weight.shape
        (sh, sw), (pt, pb, pl, pr) = self.stride, self.pads(h, w)
        y = (n, (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1, c)
        return [y, (n, y[1], c)] if len(self.outputs) == 2 else [y]

    def macs(self, shapes):
        n, ho, wo, c = self.output_shapes(shapes)[0]
        kh, kw, _ = self.weight.shape
        return n * ho * wo * c * kh * kw

    def bytes_moved(self, shapes):
        y = self.output_shapes(shapes)[0]
        return 4 * (math.prod(shapes[0]) + math.prod(y)) + self.weight_bytes()

    def call(self, tensors, parallel, sgemm):
        x, y = tensors[0], tensors[1]
        sums = tensors[2] if len(self.outputs) == 2 else kernels._EMPTY_SUMS
        (sh, sw), (pt, _, pl, _) = self.stride, self.pads(x.shape[1], x.shape[2])
        return _pair_kernel(kernels.DEPTHWISE, parallel), (
            x, self.weight, self.bias, kernels.ACTIVATIONS[self.activation], sh, sw, pt, pl, y, sums)

    def program_ops(self, offsets, shapes):
        (n, h, w, c), (_, ho, wo, _) = shapes[0], self.output_shapes(shapes)[0]
        kh, kw, _ = self.weight.shape
        (sh, sw), (pt, _, pl, _) = self.stride, self.pads(h, w)
        sums = offsets[2] if len(self.outputs) == 2 else -1
        return [op_row(KIND=DEPTHWISE, ACT=kernels.ACTIVATIONS[self.activation], TILES=n * ho, X=offsets[0], N=n,
                       XH=h, XW=w, XC=c, Y=offsets[1], YH=ho, YW=wo, YC=c, W=self.param_offsets["weight"],
                       B=self.param_offsets["bias"], KH=kh, KW=kw, SH=sh, SW=sw, PT=pt, PL=pl, AUX=sums)]


class FusedSqueezeExcite(FusedLayer):
    """SE's gate from the depthwise layer's row sums. inputs: (row_sums (N, Ho, C), the gated
    activation (N, Ho, Wo, C), read for its shape only) -> gate (N, C). The multiply by the gate
    happens in the next pointwise layer's read of its input."""

    kind = "squeeze-excite"
    weight_names = ("w_reduce", "b_reduce", "w_expand", "b_expand")

    def __init__(self, name, inputs, outputs, w_reduce, b_reduce, w_expand, b_expand):
        super().__init__(name, inputs, outputs)
        self.w_reduce, self.b_reduce, self.w_expand, self.b_expand = w_reduce, b_reduce, w_expand, b_expand

    def output_shapes(self, shapes):
        n, _, c = shapes[0]
        return [(n, c)]

    def workspace_shapes(self, shapes):
        return [(shapes[0][0], self.w_reduce.shape[1])]

    def macs(self, shapes):
        n, _, c = shapes[0]
        return n * 2 * c * self.w_reduce.shape[1]

    def bytes_moved(self, shapes):
        return 4 * (math.prod(shapes[0]) + 2 * shapes[0][0] * shapes[0][2]) + self.weight_bytes()

    def call(self, tensors, parallel, sgemm):
        sums, gated, gate, hidden = tensors
        return _pair_kernel(kernels.SE_GATE, parallel), (
            sums, gated.shape[1] * gated.shape[2], self.w_reduce, self.b_reduce, self.w_expand, self.b_expand,
            hidden, gate)

    def program_ops(self, offsets, shapes):
        (n, ho, c), (_, _, wo, _) = shapes
        sums, _, gate, hidden = offsets
        p = self.param_offsets
        return [op_row(KIND=SE_GATE, TILES=n, X=sums, N=n, XH=ho, XC=c, Y=gate, AUX=hidden, S=self.w_reduce.shape[1],
                       COUNT=ho * wo, W=p["w_reduce"], B=p["b_reduce"], W2=p["w_expand"], B2=p["b_expand"])]


class FusedGlobalPool(FusedLayer):
    kind = "global-avg-pool"

    def output_shapes(self, shapes):
        n, _, _, c = shapes[0]
        return [(n, c)]

    def macs(self, shapes):
        return 0

    def call(self, tensors, parallel, sgemm):
        x, y = tensors
        n, h, w, c = x.shape
        return _pair_kernel(kernels.GLOBAL_POOL, parallel), (x.reshape(n, h * w, c), y)

    def program_ops(self, offsets, shapes):
        n, h, w, c = shapes[0]
        return [op_row(KIND=POOL, TILES=n, X=offsets[0], N=n, XH=h, XW=w, XC=c, Y=offsets[1])]


class FusedLinear(FusedLayer):
    """Fully connected + bias + activation. weight (Cin, Cout)."""

    kind = "linear"
    weight_names = ("weight", "bias")

    def __init__(self, name, inputs, outputs, weight, bias, activation=None):
        super().__init__(name, inputs, outputs)
        self.weight, self.bias, self.activation = weight, bias, activation

    def output_shapes(self, shapes):
        return [(shapes[0][0], self.weight.shape[1])]

    def macs(self, shapes):
        return shapes[0][0] * self.weight.shape[0] * self.weight.shape[1]

    def call(self, tensors, parallel, sgemm):
        x, y = tensors
        return _pair_kernel(kernels.LINEAR, parallel), (
            x, self.weight, self.bias, kernels.ACTIVATIONS[self.activation],
            kernels.linear_block_cols(self.weight.shape[1]), sgemm, y)

    def program_ops(self, offsets, shapes):
        n, cin = shapes[0]
        cout = self.weight.shape[1]
        block = kernels.linear_block_cols(cout)
        return [op_row(KIND=LINEAR, ACT=kernels.ACTIVATIONS[self.activation], TILES=-(-cout // block), X=offsets[0],
                       N=n, XC=cin, Y=offsets[1], YC=cout, W=self.param_offsets["weight"],
                       B=self.param_offsets["bias"], TC=block)]


# ---------------------------------------------------------------------------------------------
# model -> fused layers
# ---------------------------------------------------------------------------------------------
def _check_geometry(conv, name):
    if tuple(getattr(conv, "dilation", (1, 1))) != (1, 1):
        raise NotImplementedError(f"{name}: fused kernels support dilation 1 only, got {conv.dilation}")


def _padding(conv):
    return "same" if conv.same else conv.padding


def _conv_bn_act(unit, name, source, outputs=None):
    """A ConvBNAct as one fused layer reading tensor `source`."""
    from npmobilenet.layers import Conv2d, DepthwiseConv2d, PointwiseConv2d

    conv = unit.conv
    bias = conv.bias.data if getattr(conv, "bias", None) is not None else None
    weight, folded_bias = fold_batch_norm(conv.weight.data, bias, unit.bn)
    outputs = outputs or (name,)
    if isinstance(conv, PointwiseConv2d):
        return FusedPointwise(name, (source,), outputs, weight, folded_bias, unit.activation)
    if isinstance(conv, DepthwiseConv2d):
        _check_geometry(conv, name)
        return FusedDepthwise(name, (source,), outputs, weight, folded_bias, unit.activation, conv.stride, _padding(conv))
    if isinstance(conv, Conv2d):
        _check_geometry(conv, name)
        return FusedConv2d(name, (source,), outputs, weight, folded_bias, unit.activation, conv.stride, _padding(conv))
    raise TypeError(f"{name}: cannot fuse a {type(conv).__name__}")


def fused_layers(model):
    """The model as a flat list of fused layers over named tensors ("input" -> ... -> "logits").

    Works on any MobileNet built by `npmobilenet.build` (uses its weights as they are; `fuse_model`
    checks eval mode first).
    """
    from npmobilenet.layers import DepthwiseSeparable, Dropout, InvertedResidual, Linear
    from npmobilenet.layers.activation import HardSwish, ReLU, ReLU6

    layers = [_conv_bn_act(model.stem, "stem", "input")]
    x = "stem"
    for index, block in enumerate(model.blocks):
        prefix = f"blocks.{index}"
        if isinstance(block, DepthwiseSeparable):
            layers.append(_conv_bn_act(block.conv_dw, f"{prefix}.conv_dw", x))
            layers.append(_conv_bn_act(block.conv_pw, f"{prefix}.conv_pw", f"{prefix}.conv_dw"))
            x = f"{prefix}.conv_pw"
        elif isinstance(block, InvertedResidual):
            source = x
            if block.conv_pw is not None:
                layers.append(_conv_bn_act(block.conv_pw, f"{prefix}.conv_pw", x))
                source = f"{prefix}.conv_pw"
            dw_name = f"{prefix}.conv_dw"
            if block.se is not None:
                sums = f"{dw_name}.row_sums"
                dw = _conv_bn_act(block.conv_dw, dw_name, source, outputs=(dw_name, sums))
                layers.append(dw)
                se = block.se
                layers.append(FusedSqueezeExcite(
                    f"{prefix}.se", (sums, dw_name), (f"{prefix}.se",),
                    _f32(se.reduce.weight.data), _f32(se.reduce.bias.data),
                    _f32(se.expand.weight.data), _f32(se.expand.bias.data)))
            else:
                layers.append(_conv_bn_act(block.conv_dw, dw_name, source))
            pwl = _conv_bn_act(block.conv_pwl, f"{prefix}.conv_pwl", dw_name)
            inputs = [dw_name]
            if block.use_residual:
                inputs.append(x)
                pwl.residual = True
            if block.se is not None:
                inputs.append(f"{prefix}.se")
                pwl.gated = True
            pwl.inputs = tuple(inputs)
            layers.append(pwl)
            x = f"{prefix}.conv_pwl"
        else:
            raise TypeError(f"{prefix}: cannot fuse a {type(block).__name__}")
    if model.head is not None:
        layers.append(_conv_bn_act(model.head, "head", x))
        x = "head"
    layers.append(FusedGlobalPool("pool", (x,), ("pool",)))
    x = "pool"
    for index, layer in enumerate(model.classifier):
        name = f"classifier.{index}"
        if isinstance(layer, Linear):
            bias = layer.bias.data if layer.bias is not None else np.zeros(layer.out_features)
            layers.append(FusedLinear(name, (x,), (name,), _f32(layer.weight.data), _f32(bias)))
            x = name
        elif isinstance(layer, (ReLU, ReLU6, HardSwish)) and isinstance(layers[-1], FusedLinear) \
                and layers[-1].activation is None:
            layers[-1].activation = {ReLU: "relu", ReLU6: "relu6", HardSwish: "hardswish"}[type(layer)]
        elif isinstance(layer, Dropout):
            continue  # the identity in eval mode
        else:
            raise TypeError(f"{name}: cannot fuse a {type(layer).__name__} in the classifier")
    layers[-1].outputs = ("logits",)
    return layers


def _f32(a):
    """A float32 C-contiguous copy (never a view: the fused model must not change with its source)."""
    return np.array(a, dtype=FLOAT, order="C", copy=True)


def pack_parameters(layers):
    """Move every fused layer's parameter arrays into one float32 array, each starting on a
    64-byte boundary, for the op table of `program.py` to address by offset. Each layer's arrays
    become views of it, and `layer.param_offsets[name]` their offsets. Returns the array."""
    total = sum(aligned(getattr(layer, name).size) for layer in layers for name in layer.weight_names)
    raw = np.empty(total + ALIGN, FLOAT)
    start = (-raw.ctypes.data // 4) % ALIGN          # first 64-byte-aligned element
    params = raw[start:start + total]
    offset = 0
    for layer in layers:
        layer.param_offsets = {}
        for name in layer.weight_names:
            array = getattr(layer, name)
            view = params[offset:offset + array.size].reshape(array.shape)
            view[...] = array
            setattr(layer, name, view)
            layer.param_offsets[name] = offset
            offset += aligned(array.size)
    return params


# ---------------------------------------------------------------------------------------------
# the fused model
# ---------------------------------------------------------------------------------------------
def _check_threads(threads):
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= limit:
        raise ValueError(f"threads must be between 1 and {limit} (NUMBA_NUM_THREADS), got {threads}")
    return int(threads)


@contextlib.contextmanager
def _numba_threads(threads):
    """Run parallel kernels on `threads` threads (None: leave Numba's setting), restoring after."""
    if threads is None:
        yield
        return
    previous = numba.get_num_threads()
    if previous != threads:
        numba.set_num_threads(threads)
    try:
        yield
    finally:
        if previous != threads:
            numba.set_num_threads(previous)


CHUNK_PIXELS = 100_000

def chunk_images(batch, height, width, chunk_pixels=CHUNK_PIXELS):
    """Images per chunk when a batch is run in chunks: about `chunk_pixels` input pixels (two
    224x224 images), so that a chunk's activations stay in the caches from one layer to the next
    (a whole batch of 32 would stream ~250 MB through memory at every layer); a small batch of
    small images runs whole. Depends on the shape only, never on the thread count."""
    return max(1, min(batch, math.ceil(chunk_pixels / (height * width))))


class ThreadGovernor:
    """Chooses, call by call, between running the parallel layers on `threads` threads or on one.

    On a shared machine a parallel region waits for its slowest thread; when another process
    holds a core, that thread may be descheduled for a whole scheduler tick, and a network of
    ~50 parallel regions becomes many times slower than one thread (measured 100 ms against 25
    ms for MobileNetV2 at batch 1 with the load average near 6). So the governor times calls:
    it keeps the median of the last three call times with `threads` threads and with one, runs
    the faster, and now and then probes the other (every `probe_interval` calls, doubling up to
    `max_interval` while the probe confirms the choice, back to the start when it does not).
    The first call after a (re)start is not counted: it pays for allocating the plan's buffers.
    Thread counts change only *which threads* compute a tile, never how: outputs are bitwise
    identical whichever is chosen.
    """

    def __init__(self, probe_interval=8, max_interval=256):
        self.first_interval, self.max_interval = probe_interval, max_interval
        self.reset()

    def reset(self):
        self.samples = {}           # thread count -> the last few seconds per call
        self.interval = self.first_interval
        self.since_probe = 0
        self._skip = 1              # the first call allocates the plan: do not count it
        self._probing = None

    @property
    def estimate(self):
        """thread count -> median seconds per call of its recent samples."""
        return {n: sorted(v)[len(v) // 2] for n, v in self.samples.items() if v}

    def choose(self, threads):
        if threads <= 1:
            return 1
        for n in (threads, 1):      # measure both first
            if len(self.samples.get(n, ())) < 1:
                return n
        estimate = self.estimate
        best = threads if estimate[threads] <= estimate[1] else 1
        self.since_probe += 1
        if self.since_probe >= self.interval:
            self.since_probe = 0
            other = 1 if best == threads else threads
            self.samples[other] = []        # its old samples are stale: the load may have changed
            self._probing = (best, other)
            return other
        return best

    def record(self, n, seconds):
        if self._skip:
            self._skip -= 1
            return
        samples = self.samples.setdefault(n, [])
        samples.append(seconds)
        del samples[:-3]
        if self._probing and self._probing[1] == n:
            best, probed = self._probing
            won = self.estimate[probed] < self.estimate[best]
            self.interval = self.first_interval if won else min(self.max_interval, 2 * self.interval)
            self._probing = None


class FusedMobileNet:
    """An inference-only MobileNet: `fused(x) -> logits`, x: (N, H, W, 3) float, H, W >= 32.

    Built by `model.fuse()`. Holds folded float32 weights (copies: later changes to the source
    model do not reach it) and memory plans for the last input shape seen. `threads` is the
    number of threads it uses (None: Numba's current setting, `NUMBA_NUM_THREADS` or
    `npmobilenet.config.set_num_threads`); `adaptive` lets the governor fall back to one thread
    at batch 1 under load (`set_threads(n, adaptive=False)` pins it). There is no backward pass
    and no training mode. `planned_peak_bytes(resolution, batch)` is the activation memory its
    plans allocate; `activation_bytes` what they hold now.
    """

    training = False

    def __init__(self, layers, config_, threads=None, adaptive=True):
        self.layers = layers
        self.params = pack_parameters(layers)      # every weight, in one array (see program.py)
        self.config = dict(config_)
        self.threads = _check_threads(threads)
        self.num_classes = self.config.get("num_classes")
        self.adaptive = adaptive     # let the ThreadGovernor fall back to one thread under load
        self.governor = ThreadGovernor()
        self.last_threads = None     # threads the last call ran on
        self._plan = None            # batch 1: one plan, its tiles shared by the threads
        self._worker_plans = {}      # larger batches: (worker, chunk shape) -> plan run on one thread
        self.chunk_pixels = CHUNK_PIXELS
        self._lock = threading.RLock()

    # -- the computation --------------------------------------------------------------------
    def _check_input(self, x):
        from npmobilenet.models.mobilenet import MobileNet

        # The unfused model's own checks, so both reject the same inputs with the same messages.
        return MobileNet._check_input(self, x)

    @property
    def dtype(self):
        return np.dtype(FLOAT)

    def plan(self, input_shape):
        """The memory plan of one image (or one small batch), whose op table the threads share:
        made once for `input_shape` (N, H, W, 3), kept until the shape changes."""
        input_shape = tuple(int(d) for d in input_shape)
        if self._plan is None or self._plan.input_shape != input_shape:
            self._plan = None  # release the old buffers before allocating the new ones
            self._plan = MemoryPlan(self.layers, input_shape, sgemm_address(), self.params)
            self.governor.reset()
        return self._plan

    def _worker_plan(self, worker, input_shape):
        """Worker `worker`'s plan for a chunk of `input_shape` (run on that worker's thread alone)."""
        key = (worker, input_shape)
        if key not in self._worker_plans:
            self._worker_plans[key] = MemoryPlan(self.layers, input_shape, sgemm_address(), self.params)
        return self._worker_plans[key]

    def chunk_images(self, batch, height, width):
        """Images per chunk when a batch is split (see `chunk_images`)."""
        return chunk_images(batch, height, width, self.chunk_pixels)

    @property
    def activation_bytes(self):
        """Bytes of every activation buffer this model holds now (all its plans)."""
        plans = ([self._plan] if self._plan is not None else []) + list(self._worker_plans.values())
        return sum(plan.nbytes for plan in plans)

    def __call__(self, x):
        x = self._check_input(x)
        batch, height, width, _ = x.shape
        threads = self.threads if self.threads is not None else numba.get_num_threads()
        chunk = self.chunk_images(batch, height, width)
        # The governor watches the single-plan path only: its threads wait for each other at
        # every layer, which another process's load can stall. Chunks of a batch need no
        # synchronisation but the last join, and a slowed worker just takes fewer chunks, so
        # they use every thread.
        governed = self.adaptive and chunk >= batch
        guard = single_threaded_blas()
        # One call at a time: calls share the plans' buffers and the op table's counters (a
        # second caller resetting them mid-run would leave the first waiting forever).
        with self._lock:
            if governed:
                threads = self.governor.choose(threads)
            start = time.perf_counter()
            with guard:
                if chunk >= batch:
                    logits = self._run_whole(x, threads)
                else:
                    logits = self._run_chunks(x, chunk, threads)
            if governed:
                self.governor.record(threads, time.perf_counter() - start)
            self.last_threads = threads
        return logits

    def _run_whole(self, x, threads):
        """One plan; every layer's tiles shared by `threads` threads, in one parallel region."""
        plan = self.plan(x.shape)
        np.copyto(plan.input, x)
        with _numba_threads(threads):
            plan.program.run(threads)
        return plan.output.copy()

    def _run_chunks(self, x, chunk, threads):
        """The batch in chunks of `chunk` images, each run through the whole network by one
        thread; `threads` workers (this thread and pool threads) take the next chunk as they
        finish the last, so a worker slowed by another process simply does fewer chunks. The
        kernels release the GIL. Which worker runs a chunk never changes what it computes."""
        batch = x.shape[0]
        if self._worker_plans and next(iter(self._worker_plans))[1][1:] != x.shape[1:]:
            self._worker_plans = {}                           # a new resolution: re-plan
        out = np.empty((batch, self.num_classes), FLOAT)
        chunks = iter(range(0, batch, chunk))                 # next() on it is atomic under the GIL

        def work(worker):
            for start in chunks:
                stop = min(batch, start + chunk)
                plan = self._worker_plan(worker, (stop - start,) + x.shape[1:])
                np.copyto(plan.input, x[start:stop])
                plan.program.run(1)
                out[start:stop] = plan.output

        workers = min(threads, -(-batch // chunk))
        futures = [_worker_pool().submit(work, w) for w in range(1, workers)]
        try:
            work(0)
        finally:
            for future in futures:
                future.result()
        return out

    forward = __call__

    def backward(self, *args, **kwargs):
        raise RuntimeError("a fused model is inference-only: it has no backward pass; "
                           "train the unfused model and call model.fuse() again")

    def train(self, mode=True):
        if mode:
            raise RuntimeError("a fused model is inference-only and cannot be put in training mode; "
                               "train the unfused model and call model.fuse() again")
        return self

    def eval(self):
        return self

    def set_threads(self, threads, adaptive=None):
        """Threads for the parallel layers (None: Numba's current setting); `adaptive=False`
        pins the count (no fallback to one thread under load)."""
        self.threads = _check_threads(threads)
        if adaptive is not None:
            self.adaptive = bool(adaptive)
        self.governor.reset()
        return self

    # -- costs ----------------------------------------------------------------------------------
    def layer_costs(self, resolution=224, batch=1):
        """[(name, description, macs, bytes moved)] per fused layer for a square input."""
        return MemoryPlan.costs(self.layers, (batch, resolution, resolution, 3))

    def macs(self, resolution=224, batch=1):
        return sum(c[2] for c in self.layer_costs(resolution, batch))

    def planned_peak_bytes(self, resolution=224, batch=1, threads=None):
        """Bytes of activation memory the plans allocate for a batch at this resolution."""
        from npmobilenet.inference.plan import planned_peak_bytes

        if threads is None:
            threads = self.threads if self.threads is not None else numba.get_num_threads()
        return planned_peak_bytes(self, resolution, batch, threads)

    def __repr__(self):
        c = self.config
        lines = [f"FusedMobileNet({c.get('arch')}, width={c.get('width')}, threads={self.threads})"]
        lines += [f"  {layer.name}: {layer.describe()}" for layer in self.layers]
        return "\n".join(lines)


_pool = []


def _worker_pool():
    """Threads that run chunks of a batch beside the calling thread (created on first use)."""
    if not _pool:
        from concurrent.futures import ThreadPoolExecutor

        _pool.append(ThreadPoolExecutor(max_workers=max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                        thread_name_prefix="npmobilenet-inference"))
    return _pool[0]


def fuse_model(model, threads=None):
    """`model.fuse(threads)`: the inference-only `FusedMobileNet` of an eval-mode `model`."""
    threads = _check_threads(threads)
    training = [name or "model" for name, layer in model.modules() if layer.training]
    if training:
        raise RuntimeError(
            "fuse() needs a model in eval mode (batch norm must use its running statistics, dropout "
            f"must be off), but {len(training)} layer(s) are in training mode (e.g. {training[0]!r}): "
            "call model.eval() first")
    if np.dtype(model.dtype) not in (np.float32, np.float64):
        raise TypeError(f"fuse() needs a float32 or float64 model, got {model.dtype}")
    return FusedMobileNet(fused_layers(model), model.config, threads)
