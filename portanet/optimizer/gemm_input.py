"""Flatten/Reshape before Gemm/MatMul simplified.

* ``Transpose(x, p) -> Flatten/Reshape(N, -1) -> MatMul/Gemm(W)`` (a TensorFlow export
  flattening NHWC activations): the Transpose only reorders the flattened features, so
  the weight rows are permuted instead and the Transpose disappears. Needs ``p[0] == 0``,
  static non-batch dims and constant weights (a parameter edit: level 2, or any level for
  non-parameter weights).
* ``Reshape(x, [0, -1])`` feeding a Gemm/MatMul becomes ``Flatten(x, axis=1)`` - the same
  tensor, without a shape operand.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.optimizer._util import (
    Namer,
    add_initializer,
    attr,
    const_array,
    copy_provenance,
    new_node,
    only_consumer,
    replace_value,
)
from portanet.optimizer.base import OptimizerPass, register_pass


def _flattens_at_1(node: ir.Node, dims: list) -> bool:
    """Whether ``node`` (Flatten/Reshape) maps an input of ``dims`` to (dims[0], prod(dims[1:]))."""
    if node.op_type == "Flatten":
        return attr(node, "axis", 1) == 1
    if node.op_type != "Reshape" or attr(node, "allowzero", 0):
        return False
    target = const_array(node.inputs[1])
    if target is None or target.shape != (2,):
        return False
    rest = list(dims[1:])
    if any(not isinstance(d, int) for d in rest):
        return [int(t) for t in target] == [0, -1]
    k = int(np.prod(rest))
    t0, t1 = int(target[0]), int(target[1])
    if t1 == k:
        return t0 in (0, -1) or t0 == dims[0]
    return t1 == -1 and (t0 == 0 or (isinstance(dims[0], int) and t0 == dims[0]))


def _dims(value: ir.Value) -> list | None:
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def _weight_consumers(value: ir.Value) -> list[ir.Node] | None:
    users = [u.node for u in value.uses()]
    if value.is_graph_output() or not users:
        return None
    for n in users:
        if n.op_type not in ("MatMul", "Gemm") or n.domain != "" or n.inputs[0] is not value:
            return None
        if n.op_type == "Gemm" and attr(n, "transA", 0):
            return None
        w = const_array(n.inputs[1])
        if w is None or w.ndim != 2:
            return None
    return users


@register_pass
class SimplifyGemmInput(OptimizerPass):
    name = "gemm_input"
    level = 1
    order = 57

    def run(self, graph: ir.Graph) -> bool:
        namer = Namer(graph)
        modified = False
        for node in list(graph):
            if node.graph is not graph or node.domain != "" or node.op_type not in ("Flatten", "Reshape"):
                continue
            if self._permute_weights(graph, namer, node):
                modified = True
            elif self._to_flatten(graph, namer, node):
                modified = True
        return modified

    def _permute_weights(self, graph: ir.Graph, namer: Namer, flat: ir.Node) -> bool:
        t = flat.inputs[0].producer() if flat.inputs[0] is not None else None
        perm = attr(t, "perm") if t is not None and t.op_type == "Transpose" and t.domain == "" else None
        if perm is None or perm[0] != 0 or only_consumer(t.outputs[0]) is not flat:
            return False
        x = t.inputs[0]
        dims = _dims(x)
        if dims is None or len(dims) != len(perm) or any(d is None for d in dims[1:]):
            return False
        t_dims = [dims[p] for p in perm]  # the transposed layout
        if not _flattens_at_1(flat, t_dims):
            return False
        users = _weight_consumers(flat.outputs[0])
        if users is None or not all(self.may_rewrite(u.inputs[1]) for u in users):
            return False
        k = int(np.prod(dims[1:]))
        # flattened feature index in the transposed layout -> the same feature in x's layout
        q = [int(i) for i in np.argsort(perm[1:])]
        order = np.arange(k).reshape(t_dims[1:]).transpose(q).reshape(-1)
        for u in users:
            w = const_array(u.inputs[1])
            trans_b = u.op_type == "Gemm" and attr(u, "transB", 0)
            if (w.shape[1] if trans_b else w.shape[0]) != k:
                return False
        for u in users:
            w = const_array(u.inputs[1])
            trans_b = u.op_type == "Gemm" and attr(u, "transB", 0)
            w_new = w[:, order] if trans_b else w[order, :]
            u.replace_input_with(1, add_initializer(graph, namer, w_new, f"{u.name or 'gemm'}_W"))
        flat.replace_input_with(0, x)
        copy_provenance(flat, t)
        graph.remove(t, safe=True)
        return True

    def _to_flatten(self, graph: ir.Graph, namer: Namer, node: ir.Node) -> bool:
        if node.op_type != "Reshape" or _weight_consumers(node.outputs[0]) is None:
            return False
        target = const_array(node.inputs[1])
        x = node.inputs[0]
        if target is None or [int(t) for t in target.reshape(-1)] != [0, -1] or attr(node, "allowzero", 0):
            return False
        if x is None or x.shape is None or len(x.shape) < 2:
            return False
        flat = new_node("Flatten", [x], {"axis": 1}, namer=namer, like=node)
        flat.outputs[0].shape, flat.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
        graph.insert_before(node, flat)
        if not replace_value(node.outputs[0], flat.outputs[0]):
            graph.remove(flat, safe=True)
            return False
        graph.remove(node, safe=True)
        return True
