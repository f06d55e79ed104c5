"""MatMul + Add -> Gemm.

``Add(MatMul(A, B), C)`` with a 2-D ``A`` and ``B`` and a bias ``C`` that broadcasts to the
(N, M) product without enlarging it (scalar, (M,), (1, M) or (N, M)) becomes one Gemm.
The MatMul's output must feed only the Add.
"""

from __future__ import annotations

import onnx_ir as ir

from portanet.optimizer._util import (
    Namer,
    copy_provenance,
    new_node,
    only_consumer,
    rank_of,
    replace_value,
    static_shape,
)
from portanet.optimizer.base import OptimizerPass, register_pass


def _bias_fits(c: ir.Value, out: ir.Value, b: ir.Value) -> bool:
    cs = static_shape(c)
    if cs is None:
        return False
    bs = static_shape(b)
    m = bs[1] if bs is not None else None
    if len(cs) == 0 or cs in ((1,), (1, 1)):
        return True
    if m is not None and cs in ((m,), (1, m)):
        return True
    return cs == static_shape(out)


@register_pass
class MatMulAddToGemm(OptimizerPass):
    name = "matmul_add_to_gemm"
    level = 1
    order = 40

    def run(self, graph: ir.Graph) -> bool:
        namer = Namer(graph)
        modified = False
        for mm in list(graph):
            if mm.op_type != "MatMul" or mm.domain != "" or mm.graph is not graph:
                continue
            a, b = mm.inputs
            if rank_of(a) != 2 or rank_of(b) != 2:
                continue
            add = only_consumer(mm.outputs[0])
            if add is None or add.op_type != "Add" or add.domain != "":
                continue
            c = add.inputs[1] if add.inputs[0] is mm.outputs[0] else add.inputs[0]
            if c is None or c is mm.outputs[0] or c.dtype != mm.outputs[0].dtype or not _bias_fits(c, add.outputs[0], b):
                continue
            if c.dtype is None or c.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16):
                continue
            gemm = new_node("Gemm", [a, b, c], namer=namer, like=mm)
            gemm.outputs[0].shape, gemm.outputs[0].type = add.outputs[0].shape, add.outputs[0].type
            graph.insert_before(add, gemm)
            if not replace_value(add.outputs[0], gemm.outputs[0]):
                graph.remove(gemm, safe=True)
                continue
            copy_provenance(gemm, add)
            graph.remove([add, mm], safe=True)
            modified = True
        return modified
