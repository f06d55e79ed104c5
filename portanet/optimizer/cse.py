"""Common-subexpression elimination: identical nodes on identical inputs computed once.

Uses onnx_ir's CSE pass (the ONNX project's): two deterministic nodes with the same op,
attributes and input values become one; constants up to ``size_limit`` elements compare by
value. Control-flow and random ops are never merged.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import CommonSubexpressionEliminationPass

from portanet.optimizer.base import OptimizerPass, register_pass


@register_pass
class CommonSubexpressionElimination(OptimizerPass):
    name = "cse"
    level = 1
    order = 70

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = CommonSubexpressionEliminationPass(size_limit=64)(model)
        return ir.passes.PassResult(model, result.modified)
