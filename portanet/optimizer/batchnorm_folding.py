"""BatchNormalization folded into the preceding Conv, ConvTranspose, Gemm or MatMul (level 2).

Inference BN is per channel ``y = (x - mean) * s / sqrt(var + eps) + b`` = ``x * a + (b - mean * a)``
with ``a = s / sqrt(var + eps)``; the producer's weights are scaled by ``a`` per output
channel and its bias becomes ``bias * a + b - mean * a`` (computed in float64). Fires only
when the producer's output feeds the BN alone and every BN input is a constant. A MatMul
has no bias: its BN becomes MatMul(W * a) + Add, which the Gemm fusion then absorbs.
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
from portanet.optimizer._util import (
    Namer,
    add_initializer,
    attr,
    const_array,
    copy_provenance,
    new_node,
    rank_of,
    replace_value,
)
from portanet.optimizer.base import OptimizerPass, register_pass


@register_pass
class FoldBatchNorm(OptimizerPass):
    name = "fold_batchnorm"
    level = 2
    order = 30

    def run(self, graph: ir.Graph) -> bool:
        namer = Namer(graph)
        modified = False
        for bn in list(graph):
            if bn.op_type != "BatchNormalization" or bn.domain != "" or bn.graph is not graph:
                continue
            if attr(bn, "training_mode", 0):
                continue
            if any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
                continue
            params = [const_array(v) for v in bn.inputs[1:5]]
            if len(params) != 4 or any(p is None for p in params):
                continue
            producer = foldable_producer(bn.inputs[0], self.may_rewrite)
            if producer is None:
                continue
            m = out_channels(producer)
            r = rank_of(bn.inputs[0])
            axis = channel_axis(producer)
            # BN normalizes axis 1; the producer's channels must sit there
            if r is None or axis != 1 or params[0].shape != (m,):
                continue
            s, b, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
            a = s / np.sqrt(var + attr(bn, "epsilon", 1e-5))
            shift = b - mean * a
            out = bn.outputs[0]
            if producer.op_type == "MatMul":
                vec = channel_vector(shift, r, r - 1, m)
                if vec is None or not apply_affine(graph, namer, producer, a, None):
                    continue
                dtype = const_array(producer.inputs[1]).dtype
                add = new_node("Add", [producer.outputs[0], add_initializer(graph, namer, shift.astype(dtype),
                                                                            f"{bn.name or 'bn'}_shift")],
                               namer=namer, like=bn)
                add.outputs[0].shape, add.outputs[0].type = out.shape, out.type
                graph.insert_after(producer, add)
                if not replace_value(out, add.outputs[0]):
                    raise AssertionError("BatchNormalization output could not be rewired")
            else:
                if not apply_affine(graph, namer, producer, a, shift):
                    continue
                if not replace_value(out, producer.outputs[0]):
                    continue
                copy_provenance(producer, bn)
            graph.remove(bn, safe=True)
            modified = True
        return modified
