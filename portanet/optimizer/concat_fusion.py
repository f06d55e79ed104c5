"""Consecutive Concats fused: ``Concat(a, Concat(b, c), d)`` on the same axis is
``Concat(a, b, c, d)`` when the inner Concat feeds only the outer one (Keras-style nested
concatenations, Inception's branch merges)."""

from __future__ import annotations

import onnx_ir as ir

from portanet.optimizer._util import attr, copy_provenance, only_consumer, rank_of
from portanet.optimizer.base import OptimizerPass, register_pass


def _axis(node: ir.Node) -> int | None:
    r = rank_of(node.outputs[0])
    a = attr(node, "axis")
    if a is None:
        return None
    if a < 0:
        if r is None:
            return None
        a += r
    return a


@register_pass
class FuseConcats(OptimizerPass):
    name = "fuse_concats"
    level = 1
    order = 52

    def run(self, graph: ir.Graph) -> bool:
        modified = False
        for node in list(graph):
            if node.op_type != "Concat" or node.domain != "" or node.graph is not graph:
                continue
            axis = _axis(node)
            if axis is None:
                continue
            inputs: list[ir.Value | None] = []
            absorbed = []
            for v in node.inputs:
                inner = v.producer() if v is not None else None
                if (inner is not None and inner.op_type == "Concat" and inner.domain == "" and inner is not node
                        and only_consumer(v) is node and _axis(inner) == axis
                        and sum(1 for u in node.inputs if u is v) == 1):
                    inputs.extend(inner.inputs)
                    absorbed.append(inner)
                else:
                    inputs.append(v)
            if not absorbed:
                continue
            node.resize_inputs(len(inputs))
            for i, v in enumerate(inputs):
                node.replace_input_with(i, v)
            for inner in absorbed:
                copy_provenance(node, inner)
                graph.remove(inner, safe=True)
            modified = True
        return modified
