"""The fused layer kinds: one step of fused inference each, with its shapes, costs and kernel call.

A fused layer is one or more graph ops run as one kernel: a convolution with its bias and
activation (and, for a pointwise projection, the residual add and squeeze-and-excitation's gate),
the depthwise convolution that also sums its output rows for SE, SE's gate, global pooling, and
a fully connected layer, and a bilinear resize (with, for LR-ASPP, the gate it multiplies its
input by). `compile.py` makes them from the inference graph; the memory plan gives
their tensors buffers; `program.py` runs their op-table rows.
"""
import math

import numpy as np

from npmobilenet.inference import kernels
from npmobilenet.inference.plan import aligned, aligned_empty
from npmobilenet.inference.program import (
    CONV, DEPTHWISE, GATE_ROWS, LINEAR, MAX_WORKERS, POINTWISE, POOL, RESIZE, SE_GATE, op_row)
from npmobilenet.inference.tiles import PARTS, expand_parts, linear_blocks
from npmobilenet.inference.tiling import (band_input_rows, expansion_band, expansion_band_rows, linear_block_cols,
                                         pointwise_tiles, resize_tile_rows)
from npmobilenet.ops import conv as conv_ops
from npmobilenet.ops import conv_packed
from npmobilenet.ops import depthwise as depthwise_ops
from npmobilenet.ops import depthwise_avx512
from npmobilenet.ops import pointwise as pointwise_ops
from npmobilenet.ops import register_tile
from npmobilenet.ops.epilogue import ACTIVATIONS, LINEAR_ACTIVATIONS, NO_ROW_SUMS, NO_ROWS
from npmobilenet.ops.geometry import output_size, tf_same_sides

FLOAT = np.float32


class FusedLayer:
    """One step of the fused network.

    `inputs`/`outputs` name tensors; `output_shapes(shapes)` and `workspace_shapes(shapes, workers)`
    map the input shapes to the shapes the plan must hold (a workspace holds a block for each of
    `workers`, the threads that may run the plan's table: MAX_WORKERS, or 1 for a plan one thread
    runs); `macs(shapes)` and `bytes_moved(shapes)` are the layer's cost (MACs as
    `npmobilenet.analysis` counts them; bytes: inputs and weights read once, outputs written once,
    float32); `call(tensors, parallel)` returns `(kernel, args)` (the layer run alone);
    `program_ops(offsets, shapes, workers)` its rows of the op table (`program.py`), given the arena
    offsets of its tensors (inputs, outputs, workspaces, in that order). `weight_names` are its
    parameter arrays, which `pack_parameters` moves into one array (`param_offsets`).
    """

    kind = "layer"
    activation = None
    weight_names = ()

    def __init__(self, name, inputs, outputs):
        self.name, self.inputs, self.outputs = name, tuple(inputs), tuple(outputs)

    def workspace_shapes(self, shapes, workers=MAX_WORKERS):
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


class _PackedWeight:
    """A layer whose weight (`kernel_shape`, Cout last) the register tile (`ops.register_tile`)
    reads packed: `pack_weight(weight, packed)` keeps `weight_packed` (16-channel slivers of the
    (K, Cout) matrix, flat) instead of the weight where `packed`, else the weight itself;
    `weight` is then rebuilt from the slivers on request (a copy: the kernels never read it)."""

    def pack_weight(self, weight, packed):
        self.kernel_shape = tuple(weight.shape)
        self.packed = register_tile.enabled() if packed is None else bool(packed)
        if self.packed:
            matrix = np.asarray(weight, FLOAT).reshape(-1, self.kernel_shape[-1])
            self.weight_packed = register_tile.packed_weight(matrix).reshape(-1)
            self.weight_names = ("weight_packed", "bias")
        else:
            self._weight = weight
            self.weight_names = ("weight", "bias")

    @property
    def weight(self):
        if self.packed:
            k, cout = math.prod(self.kernel_shape[:-1]), self.kernel_shape[-1]
            return register_tile.unpacked_weight(self.weight_packed, k, cout).reshape(self.kernel_shape)
        return self._weight

    @weight.setter
    def weight(self, value):    # `pack_parameters` replaces the unpacked weight by its view
        self._weight = value

    def weight_bytes(self):
        return 4 * math.prod(self.kernel_shape) + self.bias.nbytes     # the slivers' padding is not read


class _Windowed(FusedLayer):
    """A KxK window: stride (sh, sw), dilation (rh, rw) and padding (top, bottom, left, right),
    or "same" (TensorFlow's, resolved for each input size: `pads(h, w)`); `kernel_shape`, the
    weight's shape (KH, KW first)."""

    def pads(self, h, w):
        if self.padding != "same":
            return self.padding
        return tf_same_sides(h, w, self.kernel_shape[:2], self.stride, self.dilation)

    def output_hw(self, h, w):
        (kh, kw), (sh, sw), (pt, pb, pl, pr) = self.kernel_shape[:2], self.stride, self.pads(h, w)
        rh, rw = self.dilation
        return output_size(h, kh, sh, pt, pb, rh), output_size(w, kw, sw, pl, pr, rw)


class FusedConv2d(_PackedWeight, _Windowed):
    """Standard KxK convolution + bias + activation. weight (KH, KW, Cin, Cout). Its tiles are
    blocks of output pixels (`ops.conv.conv_tile`); but for the stem (3x3 over RGB, computed
    tap by tap) they gather receptive fields into a workspace, a block per thread. With `packed`
    (the default where `ops.register_tile.enabled()`), `ops.conv_packed.conv_tile_packed` instead, the
    stem too: the register tile (`ops.register_tile`) on `weight_packed` (`_PackedWeight`),
    reading interior pixels' fields from x and gathering only the border's into the workspace."""

    kind = "conv"

    def __init__(self, name, inputs, outputs, weight, bias, activation, stride, padding, dilation=(1, 1), packed=None):
        super().__init__(name, inputs, outputs)
        self.bias, self.activation = bias, activation
        self.stride, self.padding = stride, padding          # (sh, sw), (top, bottom, left, right) or "same"
        self.dilation = tuple(dilation)                      # (rh, rw)
        self.pack_weight(weight, packed)

    def output_shapes(self, shapes):
        n, h, w, _ = shapes[0]
        return [(n, *self.output_hw(h, w), self.kernel_shape[3])]

    def macs(self, shapes):
        n, ho, wo, cout = self.output_shapes(shapes)[0]
        kh, kw, cin, _ = self.kernel_shape
        return n * ho * wo * cout * kh * kw * cin

    def _tile(self, shapes, workers=MAX_WORKERS):
        """(output pixels per tile, number of tiles, workspace shape: a block per possible worker)."""
        n, ho, wo, _ = self.output_shapes(shapes)[0]
        kh, kw, cin, _ = self.kernel_shape
        tile = conv_ops.tile_pixels(n * ho * wo, cin, kh, kw)
        k = kh * kw * cin
        workspace = (workers, conv_packed.workspace_rows(tile, k, self.kernel_shape[3]), k) if self.packed else \
            conv_ops.workspace_shape(workers, tile, kh, kw, cin, *self.dilation)
        return tile, -(-n * ho * wo // tile), workspace

    def workspace_shapes(self, shapes, workers=MAX_WORKERS):
        workspace = self._tile(shapes, workers)[2]
        return [workspace] if workspace[1] > 0 else []

    def call(self, tensors, parallel, sgemm):
        x, y = tensors[:2]
        (sh, sw), (pt, _, pl, _) = self.stride, self.pads(x.shape[1], x.shape[2])
        tile, _, workspace = self._tile([x.shape])
        cols = tensors[2] if workspace[1] > 0 else np.empty(workspace, FLOAT)
        rh, rw = self.dilation
        if self.packed:
            kh, kw = self.kernel_shape[:2]
            return _pair_kernel(conv_packed.CONV_PACKED_FORWARD, parallel), (
                x, self.weight_packed, kh, kw, self.bias, ACTIVATIONS[self.activation], sh, sw, pt, pl, rh, rw, cols,
                tile, y, register_tile.span_address())
        return _pair_kernel(kernels.CONV2D, parallel), (
            x, self.weight, self.bias, ACTIVATIONS[self.activation], sh, sw, pt, pl, rh, rw, cols, tile, sgemm, y)

    def program_ops(self, offsets, shapes, workers=MAX_WORKERS):
        (n, h, w, cin), (_, ho, wo, cout) = shapes[0], self.output_shapes(shapes)[0]
        kh, kw = self.kernel_shape[:2]
        (sh, sw), (pt, _, pl, _) = self.stride, self.pads(h, w)
        tile, tiles, workspace = self._tile(shapes, workers)
        return [op_row(KIND=CONV, ACT=ACTIVATIONS[self.activation], TILES=tiles, X=offsets[0], N=n, XH=h,
                       XW=w, XC=cin, Y=offsets[1], YH=ho, YW=wo, YC=cout, W=self.param_offsets[self.weight_names[0]],
                       B=self.param_offsets["bias"], KH=kh, KW=kw, SH=sh, SW=sw, PT=pt, PL=pl, RH=self.dilation[0],
                       RW=self.dilation[1], TR=tile, AUX=offsets[2] if workspace[1] > 0 else -1,
                       BLOCKS=workspace[0] if workspace[1] > 0 else 0,
                       RUN=register_tile.LANES if self.packed else -1)]


class FusedPointwise(_PackedWeight, FusedLayer):
    """1x1 convolution + bias + activation, or + bias + residual; optionally SE-gated input.

    inputs: (x,) + (residual,) if `residual` + (gate,) if `gated`. weight (Cin, Cout). With
    `packed` (the default where `ops.register_tile.enabled()`), the kernel is the register
    tile (`ops.register_tile`) on `weight_packed` (`_PackedWeight`); else the OpenBLAS tile on
    `weight`.
    """

    kind = "pointwise"

    def __init__(self, name, inputs, outputs, weight, bias, activation, residual=False, gated=False, packed=None):
        super().__init__(name, inputs, outputs)
        self.in_channels, self.out_channels = weight.shape
        self.bias, self.activation = bias, activation
        self.residual, self.gated = residual, gated
        self.pack_weight(weight, packed)

    def describe(self):
        extra = (" + residual" if self.residual else "") + (" (SE-gated input)" if self.gated else "")
        return super().describe() + extra

    def output_shapes(self, shapes):
        n, h, w, _ = shapes[0]
        return [(n, h, w, self.out_channels)]

    def macs(self, shapes):
        n, h, w, cin = shapes[0]
        return n * h * w * cin * self.out_channels

    def call(self, tensors, parallel, sgemm):
        x, rest = tensors[0], list(tensors[1:-1])
        y = tensors[-1]
        n, h, w, cin = x.shape
        cout = self.out_channels
        rows = n * h * w
        residual = rest.pop(0).reshape(rows, cout) if self.residual else NO_ROWS
        gate = rest.pop(0) if self.gated else NO_ROWS
        tiles = pointwise_tiles(rows, cin, cout)
        act = ACTIVATIONS[self.activation]
        if self.packed:
            return _pair_kernel(pointwise_ops.POINTWISE_PACKED_FORWARD, parallel), (
                x.reshape(rows, cin), self.weight_packed, self.bias, act, residual, gate, h * w, *tiles,
                y.reshape(rows, cout), register_tile.span_address())
        return _pair_kernel(kernels.POINTWISE, parallel), (
            x.reshape(rows, cin), self.weight, self.bias, act, residual, gate, h * w, *tiles, sgemm,
            y.reshape(rows, cout))

    def program_ops(self, offsets, shapes, workers=MAX_WORKERS):
        n, h, w, cin = shapes[0]
        cout = self.out_channels
        rows = n * h * w
        tile_rows, tile_cols = pointwise_tiles(rows, cin, cout)
        row_tiles, col_tiles = -(-rows // tile_rows), -(-cout // tile_cols)
        rest = list(offsets[1:-1])
        residual = rest.pop(0) if self.residual else -1
        gate = rest.pop(0) if self.gated else -1
        ops = []
        if self.gated and col_tiles > 1:      # as the layer's own kernel: gate every row first
            # (in at least PARTS tiles: at 7x7 one tile made the other thread wait)
            gate_rows = -(-tile_rows // PARTS)
            ops.append(op_row(KIND=GATE_ROWS, TILES=-(-rows // gate_rows), X=offsets[0], N=n, XH=h, XW=w, XC=cin,
                              AUX=gate, TR=gate_rows))
        ops.append(op_row(KIND=POINTWISE, ACT=ACTIVATIONS[self.activation], TILES=row_tiles * col_tiles,
                          X=offsets[0], N=n, XH=h, XW=w, XC=cin, Y=offsets[-1], YC=cout,
                          W=self.param_offsets[self.weight_names[0]], B=self.param_offsets["bias"], AUX=residual,
                          AUX2=gate, TR=tile_rows, TC=tile_cols, RUN=register_tile.LANES if self.packed else -1))
        return ops


class FusedDepthwise(_Windowed):
    """KxK depthwise convolution + bias + activation; with SE after it, also its row sums.

    outputs: (y,) or (y, row_sums). weight (KH, KW, C). The kernel reads the weight and bias
    repeated for the pixels of one run (`ops.depthwise.tiled_weight`): `weight_tiled`,
    `bias_tiled`, the arrays packed with the parameters. With `packed` (the default where
    `ops.depthwise_avx512.enabled()` for 5x5 kernels, and for 3x3 ones at strides 1 and 2 without
    dilation), the kernel is `ops.depthwise_avx512`'s register tile, on runs of one pixel (the
    weight (KH*KW, C) and bias as they are).
    """

    kind = "depthwise"
    weight_names = ("weight_tiled", "bias_tiled")

    def __init__(self, name, inputs, outputs, weight, bias, activation, stride, padding, dilation=(1, 1), packed=None):
        super().__init__(name, inputs, outputs)
        self.weight, self.bias, self.activation = weight, bias, activation
        self.stride, self.padding, self.dilation = stride, padding, tuple(dilation)
        self.kernel_shape = tuple(weight.shape)
        registers = depthwise_avx512.takes(self.kernel_shape[:2], stride, self.dilation)
        self.packed = (depthwise_avx512.enabled() and registers) if packed is None else bool(packed)
        if self.packed and not registers:
            raise ValueError(f"{name}: the depthwise register tile takes 5x5 kernels, and 3x3 ones at strides 1 "
                             f"and 2 without dilation; got {tuple(weight.shape[:2])}, stride {tuple(stride)}, "
                             f"dilation {self.dilation}")
        self.run = 1 if self.packed else depthwise_ops.tile_pixels(weight.shape[2], stride[1])
        self.weight_tiled = depthwise_ops.tiled_weight(np.asarray(weight, FLOAT), self.run)
        self.bias_tiled = np.tile(np.asarray(bias, FLOAT), self.run)

    def weight_bytes(self):
        return self.weight.nbytes + self.bias.nbytes

    def describe(self):
        kh, kw, _ = self.weight.shape
        return f"depthwise {kh}x{kw}/{self.stride[0]}" + (f", {self.activation}" if self.activation else "")

    def output_shapes(self, shapes):
        n, h, w, c = shapes[0]
        y = (n, *self.output_hw(h, w), c)
        return [y, (n, y[1], c)] if len(self.outputs) == 2 else [y]

    def macs(self, shapes):
        n, ho, wo, c = self.output_shapes(shapes)[0]
        kh, kw, _ = self.weight.shape
        return n * ho * wo * c * kh * kw

    def bytes_moved(self, shapes):
        y = self.output_shapes(shapes)[0]
        return 4 * (math.prod(shapes[0]) + math.prod(y)) + self.weight_bytes()

    @property
    def _padded_rows(self):
        """Whether the kernel has a workspace (the 5x5 register tile's padded rows; 3x3: none)."""
        return self.packed and self.kernel_shape[0] == 5

    def _workspace(self, shapes):
        """Elements of a worker's block of the register tile's workspace (its padded input rows)."""
        _, ho, wo, c = self.output_shapes(shapes)[0]
        return depthwise_avx512.workspace_elements(ho, wo, c, *self.stride, *self.dilation)

    def workspace_shapes(self, shapes, workers=MAX_WORKERS):
        return [(workers, self._workspace(shapes))] if self._padded_rows else []

    def call(self, tensors, parallel, sgemm):
        x, y = tensors[0], tensors[1]
        sums = tensors[2] if len(self.outputs) == 2 else NO_ROW_SUMS
        (sh, sw), (pt, _, pl, _) = self.stride, self.pads(x.shape[1], x.shape[2])
        kh, kw, _ = self.weight.shape
        rh, rw = self.dilation
        args = (x, self.weight_tiled, kh, kw, self.bias_tiled, ACTIVATIONS[self.activation], sums, sh, sw, pt, pl, rh,
                rw, y)
        if self.packed:
            if kh == 3:
                return (_pair_kernel(depthwise_avx512.DEPTHWISE_3X3_FORWARD, parallel),
                        args + depthwise_avx512.callees_3x3())
            return (_pair_kernel(depthwise_avx512.DEPTHWISE_5X5_FORWARD, parallel),
                    args + (tensors[-1],) + depthwise_avx512.callees_5x5(sw, rh, rw))
        return _pair_kernel(kernels.DEPTHWISE, parallel), args

    def program_ops(self, offsets, shapes, workers=MAX_WORKERS):
        (n, h, w, c), (_, ho, wo, _) = shapes[0], self.output_shapes(shapes)[0]
        kh, kw, _ = self.weight.shape
        (sh, sw), (pt, _, pl, _) = self.stride, self.pads(h, w)
        sums = offsets[2] if len(self.outputs) == 2 else -1
        steps, _ = depthwise_ops.steps_per_image(ho, kh, kw, sh, self.dilation[0])
        return [op_row(KIND=DEPTHWISE, ACT=ACTIVATIONS[self.activation], TILES=n * steps, X=offsets[0], N=n,
                       XH=h, XW=w, XC=c, Y=offsets[1], YH=ho, YW=wo, YC=c, W=self.param_offsets["weight_tiled"],
                       B=self.param_offsets["bias_tiled"], KH=kh, KW=kw, SH=sh, SW=sw, PT=pt, PL=pl,
                       RH=self.dilation[0], RW=self.dilation[1], AUX=sums, RUN=0 if self.packed else self.run,
                       AUX2=offsets[-1] if self._padded_rows else -1,
                       BLOCKS=workers if self._padded_rows else 0)]


class FusedExpansion(FusedLayer):
    """An inverted residual's expansion and its depthwise convolution as one layer (V2 paper,
    sec. 5.1: the expanded tensor "does not need to be materialized in full"): a pointwise layer
    on packed weights (no residual, no gate) whose output only a 3x3 depthwise layer in the
    register tile reads. Where the expanded map of one image passes the cache
    (`tiling.expansion_band_rows`), one op whose tiles are bands of output rows, each expanding
    the input rows its windows reach into its worker's workspace and convolving them there
    (`program._expansion_band`); the expanded map never reaches memory. Elsewhere the two ops as
    apart, with the expanded map as the workspace. Either way every output is the two layers'.

    `expand`, `depthwise`: the two fused layers, whose weights this layer holds (`weight_names`)."""

    kind = "expansion"
    weight_names = ("expand_packed", "expand_bias", "weight_tiled", "bias_tiled")

    def __init__(self, expand, depthwise):
        super().__init__(f"{expand.name}+{depthwise.name.rsplit('.', 1)[-1]}", expand.inputs, depthwise.outputs)
        self.expand, self.depthwise = expand, depthwise
        self.parts = (expand.name, depthwise.name)
        self.activation = depthwise.activation

    # the two layers' arrays, under names of their own (`pack_parameters` makes them views of the
    # packed parameters, the two layers' too)
    expand_packed = property(lambda self: self.expand.weight_packed,
                             lambda self, value: setattr(self.expand, "weight_packed", value))
    expand_bias = property(lambda self: self.expand.bias, lambda self, value: setattr(self.expand, "bias", value))
    weight_tiled = property(lambda self: self.depthwise.weight_tiled,
                            lambda self, value: setattr(self.depthwise, "weight_tiled", value))
    bias_tiled = property(lambda self: self.depthwise.bias_tiled,
                          lambda self, value: setattr(self.depthwise, "bias_tiled", value))

    @staticmethod
    def joins(expand, depthwise):
        """Whether these two layers run as one: a packed pointwise layer without residual or gate,
        and a 3x3 depthwise layer in the register tile (`ops.depthwise_avx512`)."""
        return (isinstance(expand, FusedPointwise) and expand.packed and not expand.residual and not expand.gated
                and isinstance(depthwise, FusedDepthwise) and depthwise.packed
                and depthwise.kernel_shape[:2] == (3, 3))

    def describe(self):
        return f"{self.expand.describe()} + {self.depthwise.describe()}"

    def weight_bytes(self):
        return self.expand.weight_bytes() + self.depthwise.weight_bytes()

    def _expanded(self, shapes):
        return self.expand.output_shapes(shapes)[0]

    def output_shapes(self, shapes):
        return self.depthwise.output_shapes([self._expanded(shapes)])

    def macs(self, shapes):
        return self.expand.macs(shapes) + self.depthwise.macs([self._expanded(shapes)])

    def bytes_moved(self, shapes):
        return 4 * (math.prod(shapes[0]) + sum(math.prod(s) for s in self.output_shapes(shapes))) + self.weight_bytes()

    def _band(self, shapes):
        """(output rows per band, a worker's workspace elements), or (0, 0): two ops."""
        n, h, w, c = self._expanded(shapes)
        ho = self.output_shapes(shapes)[0][1]
        kh, sh = self.depthwise.kernel_shape[0], self.depthwise.stride[0]
        band = expansion_band_rows(h, w, c, ho, kh, sh)
        return (band, aligned(band_input_rows(band, kh, sh) * w * c)) if band else (0, 0)

    def workspace_shapes(self, shapes, workers=MAX_WORKERS):
        band, elements = self._band(shapes)
        return [(workers, elements)] if band else [self._expanded(shapes)]

    def _bands(self, x_shape):
        """Each band's (image, first and last output rows, first and last expanded rows, padding
        above), cut as the op table's tiles cut them (`tiling.expansion_band`)."""
        n, h, _, _ = x_shape
        band, _ = self._band([x_shape])
        ho = self.output_shapes([x_shape])[0][1]
        kh, sh = self.depthwise.kernel_shape[0], self.depthwise.stride[0]
        pt = self.depthwise.pads(h, x_shape[2])[0]
        for t in range(n * -(-ho // band)):
            yield expansion_band.py_func(t, band, ho, h, kh, sh, pt)

    def call(self, tensors, parallel, sgemm):
        x, outputs, workspace = tensors[0], tensors[1:-1], tensors[-1]
        if not self._band([x.shape])[0]:         # the two layers' kernels, the expanded map between them
            return _in_turn([self.expand.call([x, workspace], parallel, sgemm),
                             self.depthwise.call([workspace] + list(outputs), parallel, sgemm)])
        # band by band, as the op table's tiles (`program._expansion_band`)
        y, sums = outputs[0], outputs[1] if len(outputs) == 2 else None
        _, _, w, cin = x.shape
        c = self.expand.out_channels
        width = -(-c // register_tile.LANES) * register_tile.LANES
        act = ACTIVATIONS[self.expand.activation]
        (sh, sw), (_, _, pl, _) = self.depthwise.stride, self.depthwise.pads(x.shape[1], w)
        calls = []
        for image, first, last, start, end, pad in self._bands(x.shape):
            rows = (end - start) * w
            expanded = workspace[0, :rows * c].reshape(rows, c)
            calls.append((pointwise_ops.POINTWISE_PACKED_FORWARD[0], (
                x[image, start:end].reshape(rows, cin), self.expand_packed, self.expand_bias, act, NO_ROWS, NO_ROWS,
                rows, rows, width, expanded, register_tile.span_address())))
            calls.append((depthwise_avx512.DEPTHWISE_3X3_FORWARD[0], (
                expanded.reshape(1, end - start, w, c), self.weight_tiled, 3, 3, self.bias_tiled,
                ACTIVATIONS[self.activation], NO_ROW_SUMS if sums is None else sums[image:image + 1, first:last],
                sh, sw, pad, pl, 1, 1, y[image:image + 1, first:last]) + depthwise_avx512.callees_3x3()))
        return _in_turn(calls)

    def program_ops(self, offsets, shapes, workers=MAX_WORKERS):
        band, elements = self._band(shapes)
        expanded = self._expanded(shapes)
        outputs, workspace = offsets[1:-1], offsets[-1]
        self.expand.param_offsets = {"weight_packed": self.param_offsets["expand_packed"],
                                     "bias": self.param_offsets["expand_bias"]}
        self.depthwise.param_offsets = {name: self.param_offsets[name] for name in ("weight_tiled", "bias_tiled")}
        if not band:
            return (self.expand.program_ops([offsets[0], workspace], shapes, workers)
                    + self.depthwise.program_ops([workspace] + list(outputs), [expanded], workers))
        n, h, w, c = expanded
        ho, wo = self.output_shapes(shapes)[0][1:3]
        (sh, sw), (pt, _, pl, _) = self.depthwise.stride, self.depthwise.pads(h, w)
        return [op_row(KIND=DEPTHWISE, ACT=ACTIVATIONS[self.activation], TILES=n * -(-ho // band), X=offsets[0], N=n,
                       XH=h, XW=w, XC=c, Y=outputs[0], YH=ho, YW=wo, YC=c, W=self.param_offsets["weight_tiled"],
                       B=self.param_offsets["bias_tiled"], KH=3, KW=3, SH=sh, SW=sw, PT=pt, PL=pl, RH=1, RW=1,
                       AUX=outputs[1] if len(outputs) == 2 else -1, AUX2=workspace, BLOCKS=elements, RUN=0,
                       W2=self.param_offsets["expand_packed"], B2=self.param_offsets["expand_bias"],
                       S=shapes[0][3], COUNT=ACTIVATIONS[self.expand.activation], TR=band)]


def _in_turn(calls):
    """One (kernel, args) that runs `calls`, [(kernel, args)], one after the other."""
    def run(*calls_):
        for kernel, args in calls_:
            kernel(*args)
    return run, tuple(calls)


class FusedSqueezeExcite(FusedLayer):
    """SE's gate from the depthwise layer's row sums. inputs: (row_sums (N, Ho, C), the gated
    activation (N, Ho, Wo, C), read for its shape only) -> gate (N, C). The multiply by the gate
    happens in the next pointwise layer's read of its input."""

    kind = "squeeze-excite"
    weight_names = ("w_reduce", "b_reduce", "w_expand_parts", "b_expand")

    def __init__(self, name, inputs, outputs, w_reduce, b_reduce, w_expand, b_expand):
        super().__init__(name, inputs, outputs)
        self.w_reduce, self.b_reduce, self.w_expand, self.b_expand = w_reduce, b_reduce, w_expand, b_expand
        self.w_expand_parts = expand_parts(w_expand)     # each tile's channels contiguous

    def output_shapes(self, shapes):
        n, _, c = shapes[0]
        return [(n, c)]

    def workspace_shapes(self, shapes, workers=MAX_WORKERS):
        return [(shapes[0][0] * PARTS, self.w_reduce.shape[1])]    # each part's sums of the hidden units

    def macs(self, shapes):
        n, _, c = shapes[0]
        return n * 2 * c * self.w_reduce.shape[1]

    def bytes_moved(self, shapes):
        return 4 * (math.prod(shapes[0]) + 2 * shapes[0][0] * shapes[0][2]) + self.weight_bytes()

    def call(self, tensors, parallel, sgemm):
        sums, gated, gate, hidden = tensors
        return _pair_kernel(kernels.SE_GATE, parallel), (
            sums, gated.shape[1] * gated.shape[2], self.w_reduce, self.b_reduce, self.w_expand_parts, self.b_expand,
            hidden, gate)

    def program_ops(self, offsets, shapes, workers=MAX_WORKERS):
        (n, ho, c), (_, _, wo, _) = shapes
        sums, _, gate, hidden = offsets
        p = self.param_offsets
        return [op_row(KIND=SE_GATE, TILES=n * PARTS, X=sums, N=n, XH=ho, XC=c, Y=gate, AUX=hidden,
                       S=self.w_reduce.shape[1], COUNT=ho * wo, W=p["w_reduce"], B=p["b_reduce"], W2=p["w_expand_parts"],
                       B2=p["b_expand"], BLOCKS=phase) for phase in (0, 1)]


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

    def program_ops(self, offsets, shapes, workers=MAX_WORKERS):
        n, h, w, c = shapes[0]
        return [op_row(KIND=POOL, TILES=n * PARTS, X=offsets[0], N=n, XH=h, XW=w, XC=c, Y=offsets[1])]


class FusedLinear(_PackedWeight, FusedLayer):
    """Fully connected + bias + activation (also the sigmoid). weight (Cin, Cout), held packed by
    column blocks (`tiles.linear_blocks`: each tile's block of weights contiguous), `weight_blocks`;
    with `packed` (the default where `ops.register_tile.enabled()`, but for the sigmoid, which the
    register tile does not compute), in 16-channel slivers (`_PackedWeight`) for
    `tiles.linear_tile_packed`, whose sums do not depend on the batch."""

    kind = "linear"

    def __init__(self, name, inputs, outputs, weight, bias, activation=None, packed=None):
        super().__init__(name, inputs, outputs)
        self.in_features, self.out_features = weight.shape
        self.block = linear_block_cols(self.out_features)
        self.bias, self.activation = bias, activation
        if packed and activation == "sigmoid":
            raise ValueError(f"{name}: the register tile computes no sigmoid; packed=True takes relu, relu6, "
                             f"hardswish or none")
        weight = np.asarray(weight, FLOAT)
        if packed is None:
            packed = register_tile.enabled() and activation != "sigmoid"
        if packed:
            self.pack_weight(weight, True)
        else:       # the blocks only: the weight itself is not kept (`weight` rebuilds it)
            self.packed, self.kernel_shape = False, tuple(weight.shape)
            self.weight_blocks = linear_blocks(weight, self.block)
            self.weight_names = ("weight_blocks", "bias")

    @property
    def weight(self):
        """The (Cin, Cout) weight, rebuilt from its slivers or blocks (a copy)."""
        if self.packed:
            return _PackedWeight.weight.fget(self)
        return np.concatenate(list(self.weight_blocks), axis=1)[:, :self.out_features]

    def weight_bytes(self):
        return 4 * self.in_features * self.out_features + self.bias.nbytes   # the padding is not read

    def output_shapes(self, shapes):
        return [(shapes[0][0], self.out_features)]

    def macs(self, shapes):
        return shapes[0][0] * self.in_features * self.out_features

    def call(self, tensors, parallel, sgemm):
        x, y = tensors
        act = LINEAR_ACTIVATIONS[self.activation]
        if self.packed:
            return _pair_kernel(kernels.LINEAR_PACKED, parallel), (x, self.weight_packed, self.bias, act, self.block, y,
                                                                   register_tile.span_address())
        return _pair_kernel(kernels.LINEAR, parallel), (x, self.weight_blocks, self.bias, act, sgemm, y)

    def program_ops(self, offsets, shapes, workers=MAX_WORKERS):
        n, cin = shapes[0]
        weight = self.weight_names[0]
        return [op_row(KIND=LINEAR, ACT=LINEAR_ACTIVATIONS[self.activation], TILES=-(-self.out_features // self.block),
                       X=offsets[0], N=n, XC=cin, Y=offsets[1], YC=self.out_features,
                       W=self.param_offsets[weight], B=self.param_offsets["bias"], TC=self.block,
                       RUN=register_tile.LANES if self.packed else -1)]


class FusedResize(FusedLayer):
    """Bilinear resize (PyTorch's align_corners=False) to the height and width of a second tensor.

    inputs: (x (N, H, W, C), the tensor whose size it takes (read for its shape only)) + (gate
    (N, C),) if `gated`: then y = resize(x * gate), the gate multiplied as x is read. No MACs
    (the papers' convention)."""

    kind = "resize"

    def __init__(self, name, inputs, outputs, gated=False):
        super().__init__(name, inputs, outputs)
        self.gated = gated

    def describe(self):
        return "bilinear resize" + (" (gated input)" if self.gated else "")

    def output_shapes(self, shapes):
        n, _, _, c = shapes[0]
        return [(n, shapes[1][1], shapes[1][2], c)]

    def macs(self, shapes):
        return 0

    def bytes_moved(self, shapes):
        y = self.output_shapes(shapes)[0]
        gate = math.prod(shapes[2]) if self.gated else 0
        return 4 * (math.prod(shapes[0]) + gate + math.prod(y))

    def call(self, tensors, parallel, sgemm):
        x, y = tensors[0], tensors[-1]
        gate = tensors[2] if self.gated else NO_ROWS
        return _pair_kernel(kernels.RESIZE, parallel), (x, gate, resize_tile_rows(y.shape[2], y.shape[3]), y)

    def program_ops(self, offsets, shapes, workers=MAX_WORKERS):
        n, h, w, c = shapes[0]
        _, ho, wo, _ = self.output_shapes(shapes)[0]
        rows = resize_tile_rows(wo, c)
        return [op_row(KIND=RESIZE, TILES=-(-n * ho // rows), X=offsets[0], N=n, XH=h, XW=w, XC=c, Y=offsets[-1],
                       YH=ho, YW=wo, YC=c, AUX=offsets[2] if self.gated else -1, TR=rows)]


def pack_parameters(layers):
    """Move every fused layer's parameter arrays into one float32 array, each starting on a
    64-byte boundary, for the op table of `program.py` to address by offset. Each layer's arrays
    become views of it, and `layer.param_offsets[name]` their offsets. Returns the array."""
    total = sum(aligned(getattr(layer, name).size) for layer in layers for name in layer.weight_names)
    params = aligned_empty(total)
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
