"""Graph rewrites shared by the consumers: batch norm folded (the one place it is done), and
activations fused into the convolution or linear layer before them.

Folding (Ioffe & Szegedy, 2015, section 3.2: at inference batch norm is a fixed affine map). A
convolution (or linear layer) followed by eval-mode batch norm computes, per output channel c,

    gamma_c (conv(x, w)_c + b_c - mean_c) / sqrt(var_c + eps) + beta_c
      = conv(x, w s)_c + (beta_c + (b_c - mean_c) s_c),          s_c = gamma_c / sqrt(var_c + eps)

so the pair becomes one op with weight `w s` (s broadcast over the output-channel axis, the last
axis of every weight layout here) and bias `beta + (b - mean) s`, computed in float64 and stored
in float32 (what every inference engine runs).

A folded op takes the longest dotted prefix the two names share ("stem.conv" and "stem.bn"
become "stem"), so the folded graph names its ops as the model names its blocks' parts; an op
that absorbs an activation keeps its name.
"""
import numpy as np

from npmobilenet.graph.graph import Graph, lower
from npmobilenet.graph.ops import Activation, BatchNorm, Conv, Linear

FOLDABLE = (Conv.kind, Linear.kind)


def fold_scale(weight, bias, gamma, beta, mean, var, eps):
    """(w s, beta + (b - mean) s), s = gamma / sqrt(var + eps): batch norm folded into the weight
    (output channels last) and bias (None: zero) before it; float32, C-contiguous."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    conv_bias = 0.0 if bias is None else np.asarray(bias, np.float64)
    folded_weight = np.asarray(weight, np.float64) * scale
    folded_bias = np.asarray(beta, np.float64) + (conv_bias - np.asarray(mean, np.float64)) * scale
    return np.ascontiguousarray(folded_weight, np.float32), np.ascontiguousarray(folded_bias, np.float32)


def shared_prefix(a, b):
    """The longest dotted prefix of names `a` and `b` ("" if none)."""
    common = []
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


def _merge_pairs(graph, second_kind, accept, changes, shared_name):
    """Each op of kind `second_kind` that `accept`s and is the only reader of a conv or linear op
    without an activation, merged into that op (`changes(first, second)` gives its new
    attributes), named by the two names' shared prefix if `shared_name`, else by the first op's;
    readers of the pair's output read the merged op's."""
    readers = {}
    for op in graph.ops:
        for t in op.inputs:
            readers[t] = readers.get(t, 0) + 1
    producers = {op.output: op for op in graph.ops}
    taken = set(producers) | {op.name for op in graph.ops} | set(graph.inputs)
    merged, dropped, rename = {}, set(), {}
    for second in graph.ops:
        first = producers.get(second.inputs[0]) if second.kind == second_kind and accept(second) else None
        if (first is None or first.kind not in FOLDABLE or first.activation is not None or id(first) in merged
                or readers[first.output] != 1 or first.output in graph.outputs):
            continue
        name = shared_prefix(first.name, second.name) if shared_name else first.name
        if not name or (name in taken and name != first.name):
            name = first.name
        taken.add(name)
        merged[id(first)] = first.copy(name=name, output=name, **changes(first, second))
        dropped.add(id(second))
        rename[first.output] = rename[second.output] = name
    ops = [merged.get(id(op), op).copy(inputs=[rename.get(t, t) for t in op.inputs])
           for op in graph.ops if id(op) not in dropped]
    return graph.replace_ops(ops, [rename.get(t, t) for t in graph.outputs]), bool(dropped)


def fold_batch_norm(graph):
    """The graph with every batch norm that directly follows a conv or linear op (its only
    reader, no activation between) folded into it. Batch norms elsewhere stay."""
    def folded(op, bn):
        weight, bias = fold_scale(op.weight, op.bias, bn.gamma, bn.beta, bn.mean, bn.var, bn.eps)
        return dict(weight=weight, bias=bias)

    changed = True
    while changed:
        graph, changed = _merge_pairs(graph, BatchNorm.kind, lambda bn: True, folded, shared_name=True)
    return graph


def fuse_activations(graph, functions=("relu", "relu6", "hardswish")):
    """The graph with each activation in `functions` that directly follows a conv or linear op
    (its only reader) computed by that op (`op.activation`), as inference kernels do."""
    changed = True
    while changed:
        graph, changed = _merge_pairs(graph, Activation.kind, lambda act: act.function in functions,
                                      lambda op, act: dict(activation=act.function), shared_name=False)
    return graph


def inference_graph(model_or_graph, activations=("relu", "relu6", "hardswish")):
    """The lowered graph with batch norm folded and `activations` fused: what inference runs."""
    graph = model_or_graph if isinstance(model_or_graph, Graph) else lower(model_or_graph)
    return fuse_activations(fold_batch_norm(graph), activations)
