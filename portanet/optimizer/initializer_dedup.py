"""Duplicate-initializer merging: initializers with equal dtype, shape and bytes become one.

Level 1 merges only non-parameters (integer shapes/indices ...): tying two float
parameters that happen to be equal (two zero biases) would make training update them
together. Level 2 merges everything.
"""

from __future__ import annotations

import hashlib

import onnx_ir as ir

from portanet.optimizer._util import is_param
from portanet.optimizer.base import OptimizerPass, register_pass


@register_pass
class DeduplicateInitializers(OptimizerPass):
    name = "dedup_initializers"
    level = 1
    order = 60

    def run(self, graph: ir.Graph) -> bool:
        seen: dict[tuple, ir.Value] = {}
        modified = False
        for name, value in list(graph.initializers.items()):
            t = value.const_value
            if t is None or value.is_graph_input() or value.is_graph_output():
                continue
            if self.opt_level < 2 and is_param(value):
                continue
            arr = t.numpy()
            key = (str(arr.dtype), arr.shape, hashlib.sha256(arr.tobytes()).hexdigest())
            keep = seen.get(key)
            if keep is None:
                seen[key] = value
                continue
            if keep.const_value.numpy().tobytes() != arr.tobytes():
                continue
            value.replace_all_uses_with(keep)
            del graph.initializers[name]
            modified = True
        return modified
