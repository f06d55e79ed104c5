"""Constant Mul/Add/Sub/Div after Conv, ConvTranspose, Gemm or MatMul folded into the
producer's weights and bias (level 2).

``conv(x) * c`` scales the weights and bias per output channel; ``conv(x) + c`` adds ``c`` to
the bias (``- c`` subtracts, ``/ c`` scales by ``1/c``, computed in float64). ``c`` must be a
scalar or vary only along the channel axis, so the fold never changes the output shape,
and the producer's output must have no other consumer.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.optimizer._linear import (
    apply_affine,
    channel_axis,
    channel_vector,
    foldable_producer,
    out_channels,
)
from portanet.optimizer._util import Namer, const_array, copy_provenance, rank_of, replace_value
from portanet.optimizer.base import OptimizerPass, register_pass

#: op -> (scale, shift) as functions of the per-channel constant
AFFINE = {
    "Mul": lambda c: (c, None),
    "Div": lambda c: (1.0 / c, None),
    "Add": lambda c: (None, c),
    "Sub": lambda c: (None, -c),
}


@register_pass
class FoldAffine(OptimizerPass):
    name = "fold_affine"
    level = 2
    order = 35

    def run(self, graph: ir.Graph) -> bool:
        namer = Namer(graph)
        modified = False
        for node in list(graph):
            if node.op_type not in AFFINE or node.domain != "" or node.graph is not graph:
                continue
            # the producer operand; Mul/Add commute, Sub/Div need it on the left
            sides = (0, 1) if node.op_type in ("Mul", "Add") else (0,)
            for i in sides:
                x, c_val = node.inputs[i], node.inputs[1 - i]
                c = const_array(c_val)
                if x is None or c is None or c.dtype.kind != "f":
                    continue
                producer = foldable_producer(x, self.may_rewrite)
                if producer is None:
                    continue
                r, axis, m = rank_of(x), channel_axis(producer), out_channels(producer)
                if r is None or axis is None or m is None:
                    continue
                vec = channel_vector(c, r, axis, m)
                if vec is None or (node.op_type == "Div" and np.any(vec == 0)):
                    continue
                if node.op_type == "Add" and producer.op_type == "MatMul":
                    continue  # MatMul + Add is the Gemm fusion's job
                scale, shift = AFFINE[node.op_type](vec)
                if not apply_affine(graph, namer, producer, scale, shift):
                    continue
                if not replace_value(node.outputs[0], producer.outputs[0]):
                    raise AssertionError("affine fold could not rewire its output")
                copy_provenance(producer, node)
                graph.remove(node, safe=True)
                modified = True
                break
        return modified
