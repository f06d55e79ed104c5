"""Consecutive Transpose / Reshape / Squeeze / Unsqueeze / Flatten collapsed or cancelled.

* ``Transpose(Transpose(x, p1), p2)`` is one Transpose with ``p1[p2[i]]`` (nothing when that is
  the identity).
* A Transpose that only moves axes of size 1 is a Reshape.
* A chain of data-order-preserving reshapes (Reshape, Squeeze, Unsqueeze, Flatten) is one
  Reshape from the chain's input to the last output shape.
* ``Reshape(Reduce(x, keepdims=0))`` that only restores the reduced axes as 1s is
  ``Reduce(x, keepdims=1)``, and a Reshape dropping the unit axes of ``keepdims=1`` is ``keepdims=0``.
* A ``ReduceMean``/``Max``/``Min``/``Sum``/``Prod`` over axes of size 1 is a Squeeze (or nothing).
* A Reshape whose target is computed at run time (``Shape -> Gather -> Concat``, the PyTorch
  ``x.view(x.size(0), -1)`` pattern) gets a constant target when the output shape is known
  up to dims copied from the input: those become ``0`` (ONNX "copy this dim"), at most one
  other unknown becomes ``-1``. Symbolic batch dims stay symbolic.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.optimizer._util import (
    Namer,
    add_initializer,
    attr,
    const_array,
    new_node,
    only_consumer,
    replace_value,
)
from portanet.optimizer.base import OptimizerPass, register_pass

RESHAPES = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")
#: reductions that return their single element unchanged (not L1/L2/LogSumExp/SumSquare)
UNIT_REDUCE = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd")


def _sym(d: object) -> str | None:
    return None if isinstance(d, int) else getattr(d, "value", None)


def reshape_target(x: ir.Value, out: ir.Value) -> np.ndarray | None:
    """A constant Reshape target taking ``x`` to ``out``'s shape, or None if not derivable."""
    if x.shape is None or out.shape is None:
        return None
    target: list[int] = []
    unknown = 0
    for i, d in enumerate(out.shape):
        if isinstance(d, int):
            if d == 0:
                return None  # a literal 0 would mean "copy" (allowzero=0)
            target.append(d)
        elif _sym(d) is not None and i < len(x.shape) and _sym(x.shape[i]) == _sym(d):
            target.append(0)
        else:
            unknown += 1
            target.append(-1)
    if unknown > 1:
        return None
    return np.array(target, dtype=np.int64)


def _target_gives(src: list, target: list[int], wanted: list) -> bool:
    """Whether Reshape(``src``-shaped tensor, ``target``) (allowzero=0) surely has shape ``wanted``:
    each entry is the wanted int, or 0 copying an equal dim of ``src``, except at most one -1
    (which then resolves to the one remaining dim)."""
    if len(target) != len(wanted) or target.count(-1) > 1:
        return False
    for i, (t, w) in enumerate(zip(target, wanted)):
        if t == -1:
            continue
        if t == 0:
            if i >= len(src) or not _same_dim(src[i], w):
                return False
        elif not isinstance(w, int) or w != t:
            return False
    return -1 in target or all(isinstance(w, int) or t == 0 for t, w in zip(target, wanted))


def _same_dim(a: object, b: object) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return _sym(a) is not None and _sym(a) == _sym(b)


@register_pass
class CollapseReshapes(OptimizerPass):
    name = "collapse_reshapes"
    level = 1
    order = 50

    def run(self, graph: ir.Graph) -> bool:
        namer = Namer(graph)
        modified = False
        for node in list(graph):
            if node.domain != "" or node.graph is not graph:
                continue
            if node.op_type == "Transpose":
                modified |= self._transposes(graph, namer, node)
            elif node.op_type in RESHAPES:
                modified |= self._reshapes(graph, namer, node)
            elif node.op_type in UNIT_REDUCE:
                modified |= self._unit_reduce(graph, namer, node)
        return modified

    def _unit_reduce(self, graph: ir.Graph, namer: Namer, node: ir.Node) -> bool:
        """A Mean/Max/Min/Sum/Prod reduction over axes of size 1 only moves no number:
        it is a Squeeze (keepdims=0) or nothing at all (keepdims=1)."""
        x = node.inputs[0]
        if x is None or x.shape is None:
            return False
        r = len(x.shape)
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            axes_arr = const_array(node.inputs[1])
            axes = None if axes_arr is None else [int(a) for a in axes_arr.reshape(-1)]
        else:
            axes = attr(node, "axes")
        if not axes:
            return False  # no axes: reduce everything (or nothing), leave it
        axes = sorted({a % r for a in axes})
        if any(x.shape[a] != 1 for a in axes):
            return False
        out = node.outputs[0]
        if attr(node, "keepdims", 1):
            return replace_value(out, x) and self._drop(graph, node)
        squeeze = new_node("Squeeze", [x, add_initializer(graph, namer, np.array(axes, np.int64),
                                                          f"{node.name or 'reduce'}_axes")], namer=namer, like=node)
        squeeze.outputs[0].shape, squeeze.outputs[0].type = out.shape, out.type
        graph.insert_before(node, squeeze)
        if not replace_value(out, squeeze.outputs[0]):
            graph.remove(squeeze, safe=True)
            return False
        return self._drop(graph, node)

    def _transposes(self, graph: ir.Graph, namer: Namer, node: ir.Node) -> bool:
        inner = node.inputs[0].producer() if node.inputs[0] is not None else None
        if inner is None or inner.op_type != "Transpose" or inner.domain != "":
            return self._unit_transpose(graph, namer, node)
        p1, p2 = attr(inner, "perm"), attr(node, "perm")
        if p1 is None or p2 is None or len(p1) != len(p2):
            return False
        perm = [p1[j] for j in p2]
        x = inner.inputs[0]
        if perm == sorted(perm):
            return replace_value(node.outputs[0], x) and self._drop(graph, node)
        node.replace_input_with(0, x)
        node.attributes["perm"] = ir.AttrInt64s("perm", perm)
        return True

    def _unit_transpose(self, graph: ir.Graph, namer: Namer, node: ir.Node) -> bool:
        """A Transpose that only moves axes of size 1 is a Reshape (no data moves), which
        then collapses with neighbouring reshapes."""
        x, out = node.inputs[0], node.outputs[0]
        perm = attr(node, "perm")
        if x is None or x.shape is None or perm is None or len(perm) != len(x.shape):
            return False
        moved = [p for p in perm if x.shape[p] != 1]  # symbolic dims count as "not 1"
        if moved != sorted(moved):
            return False
        target = reshape_target(x, out)
        if target is None:
            return False
        return self._as_reshape(graph, namer, node, x, target, "transpose")

    def _reshapes(self, graph: ir.Graph, namer: Namer, node: ir.Node) -> bool:
        x = node.inputs[0]
        out = node.outputs[0]
        if x is None:
            return False
        inner = x.producer()
        chain = inner is not None and inner.op_type in RESHAPES and inner.domain == ""
        src = inner.inputs[0] if chain else x
        if src is None:
            return False
        if not chain and node.op_type == "Reshape" and self._keepdims_instead(graph, node):
            return True
        if not chain and node.op_type != "Reshape":
            return False
        if node.op_type == "Reshape" and not chain and const_array(node.inputs[1]) is not None:
            return False  # only a computed target is worth rewriting on a lone Reshape
        target = reshape_target(src, out)
        if target is None:
            return False
        if node.op_type == "Reshape":
            node.replace_input_with(0, src)
            node.replace_input_with(1, add_initializer(graph, namer, target, f"{node.name or 'reshape'}_shape"))
            # the target has no literal 0 (reshape_target refuses them): "0 = copy" is safe
            node.attributes.pop("allowzero", None)
            return True
        return self._as_reshape(graph, namer, node, src, target, "reshape")

    def _as_reshape(self, graph: ir.Graph, namer: Namer, node: ir.Node, src: ir.Value, target, hint: str) -> bool:
        """Replace ``node`` by ``Reshape(src, target)`` (same output shape and type)."""
        out = node.outputs[0]
        shape = add_initializer(graph, namer, target, f"{node.name or hint}_shape")
        reshape = new_node("Reshape", [src, shape], namer=namer, like=node)
        reshape.outputs[0].shape, reshape.outputs[0].type = out.shape, out.type
        graph.insert_before(node, reshape)
        if not replace_value(out, reshape.outputs[0]):
            graph.remove(reshape, safe=True)
            return False
        return self._drop(graph, node)

    def _keepdims_instead(self, graph: ir.Graph, node: ir.Node) -> bool:
        """``Reshape(Reduce(x, keepdims=k))`` whose target is the shape ``Reduce(x, keepdims=1-k)``
        gives (the reduced axes put back as 1s, or dropped) is that reduction alone."""
        red = node.inputs[0].producer()
        if red is None or red.domain != "" or not red.op_type.startswith("Reduce"):
            return False
        if only_consumer(red.outputs[0]) is not node or attr(node, "allowzero", 0):
            return False
        x = red.inputs[0]
        target = const_array(node.inputs[1])
        if x is None or x.shape is None or target is None or red.outputs[0].shape is None:
            return False
        r = len(x.shape)
        if len(red.inputs) > 1 and red.inputs[1] is not None:
            axes_arr = const_array(red.inputs[1])
            axes = None if axes_arr is None else [int(a) for a in axes_arr.reshape(-1)]
        else:
            axes = attr(red, "axes")
        if not axes:
            return False
        reduced = {a % r for a in axes}
        keep = attr(red, "keepdims", 1)
        if keep:
            wanted = [d for i, d in enumerate(x.shape) if i not in reduced]
        else:
            wanted = [1 if i in reduced else d for i, d in enumerate(x.shape)]
        if not _target_gives(list(red.outputs[0].shape), [int(v) for v in target.reshape(-1)], wanted):
            return False
        red.attributes["keepdims"] = ir.AttrInt64("keepdims", 0 if keep else 1)
        red.outputs[0].shape = node.outputs[0].shape
        return replace_value(node.outputs[0], red.outputs[0]) and self._drop(graph, node)

    @staticmethod
    def _drop(graph: ir.Graph, node: ir.Node) -> bool:
        if not any(o.uses() or o.is_graph_output() for o in node.outputs):
            graph.remove(node, safe=True)
        return True
