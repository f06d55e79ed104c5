"""Unused node, initializer and input removal (dead code elimination).

Nodes none of whose outputs are used, initializers nobody reads, and initializers that are
also listed as (overridable) graph inputs but unused. At level 2 unused plain graph inputs
are dropped too (callers must then not feed them); level 1 keeps the model's interface.
"""

from __future__ import annotations

import onnx_ir as ir

from portanet.optimizer.base import OptimizerPass, register_pass


@register_pass
class RemoveUnused(OptimizerPass):
    name = "remove_unused"
    level = 1
    order = 90

    def run(self, graph: ir.Graph) -> bool:
        modified = False
        outputs = set(map(id, graph.outputs))
        for node in reversed(list(graph)):
            if any(o.uses() or id(o) in outputs for o in node.outputs):
                continue
            graph.remove(node, safe=True)
            modified = True
        inits = graph.initializers
        for name, value in list(inits.items()):
            if value.uses() or id(value) in outputs:
                continue
            if value.is_graph_input():
                graph.inputs.remove(value)
            del inits[name]
            modified = True
        if self.opt_level >= 2 and len(graph.inputs) > 1:
            for value in list(graph.inputs):
                # keep at least one input: a model without inputs is not useful to run
                if not value.uses() and id(value) not in outputs and len(graph.inputs) > 1:
                    graph.inputs.remove(value)
                    modified = True
        return modified
