"""Shape inference: annotate every value with its dtype and shape (ONNX's inference).

Wraps ``onnx.shape_inference`` (through onnx_ir's helper that strips large initializers
before calling the C++ API). Graph inputs keep their declared shapes, so a symbolic batch
dimension is never replaced. An analysis pass: it does not count toward the fixed point.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

from portanet.optimizer.base import OptimizerPass, register_pass

log = logging.getLogger(__name__)


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)


@register_pass
class ShapeInference(OptimizerPass):
    name = "shape_inference"
    level = 1
    order = 0
    analysis = True

    def run(self, graph: ir.Graph) -> bool:
        model = self._model
        try:
            inferred = _c_api_utils.call_onnx_api(_infer, model)
        except Exception as exc:  # noqa: BLE001 - onnx raises several internal types
            log.debug("shape inference failed (%s); shapes left as they are", exc)
            return False
        info = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
        keep = {id(v) for v in graph.inputs} | {id(v) for v in graph.initializers.values()}
        modified = False
        for node in graph:
            for v in node.outputs:
                if not v.name or id(v) in keep or v.name not in info:
                    continue
                t = info[v.name].type
                if not t.HasField("tensor_type"):
                    continue
                tt = t.tensor_type
                if tt.elem_type and v.dtype is None:
                    v.dtype = ir.DataType(tt.elem_type)
                    modified = True
                if not tt.HasField("shape"):
                    continue
                new = ir.Shape([_dim(d) for d in tt.shape.dim])
                if v.shape is None or _better(new, v.shape, v.is_graph_output()):
                    v.shape = new
                    modified = True
        return modified

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._model = model
        try:
            return super().call(model)
        finally:
            self._model = None


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | ir.SymbolicDim:
    if d.HasField("dim_value"):
        return d.dim_value
    return ir.SymbolicDim(d.dim_param or None)


def _better(new: ir.Shape, old: ir.Shape, is_output: bool) -> bool:
    """Whether ``new`` carries strictly more information than ``old`` (same rank)."""
    if len(new) != len(old):
        return False
    better = False
    for n, o in zip(new, old):
        if isinstance(o, int):
            if n != o:
                return False
        elif isinstance(n, int):
            if is_output and getattr(o, "value", None):
                return False  # never pin a named symbolic output dim
            better = True
        elif getattr(o, "value", None) is None and getattr(n, "value", None) is not None:
            better = not is_output or better
    return better
