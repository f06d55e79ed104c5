"""Constant Mul/Add/Sub/Div *before* a Conv, Gemm or MatMul folded into its weights (level 2).

The input scaling of image models (``x * (1/255)``, ``(x - mean) / std``) ends up in the first
layer's weights:

* ``Conv(x * s)`` with ``s`` a scalar or per input channel scales ``W[:, c]`` by ``s[c]``; zero
  padding commutes with the scaling, so this is exact for any padding.
* ``Conv(x + c)`` adds ``sum(W * c)`` to the bias - only without padding (a padded border
  would see 0, not ``c``).
* ``Gemm/MatMul(x * s, W)`` with ``s`` per input feature scales the rows of ``W``;
  ``Gemm(x + c, W)`` adds ``alpha * c @ W`` to the bias.

The elementwise op's output must feed only that layer, and the layer's weights must be
constants.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.optimizer._linear import channel_vector
from portanet.optimizer._util import (
    Namer,
    add_initializer,
    attr,
    const_array,
    copy_provenance,
    only_consumer,
    rank_of,
)
from portanet.optimizer.base import OptimizerPass, register_pass

#: op -> (scale, shift) of the input as functions of the constant
PRE = {
    "Mul": lambda c: (c, None),
    "Div": lambda c: (1.0 / c, None),
    "Add": lambda c: (None, c),
    "Sub": lambda c: (None, -c),
}


def _no_padding(conv: ir.Node) -> bool:
    pads = attr(conv, "pads")
    return attr(conv, "auto_pad", "NOTSET") in ("NOTSET", "VALID") and (not pads or not any(pads))


@register_pass
class FoldInputAffine(OptimizerPass):
    name = "fold_input_affine"
    level = 2
    order = 36

    def run(self, graph: ir.Graph) -> bool:
        namer = Namer(graph)
        modified = False
        for node in list(graph):
            if node.op_type not in PRE or node.domain != "" or node.graph is not graph:
                continue
            layer = only_consumer(node.outputs[0])
            if layer is None or layer.domain != "" or layer.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            if layer.inputs[0] is not node.outputs[0] or len(layer.inputs) < 2:
                continue
            w = const_array(layer.inputs[1])
            if w is None or w.dtype.kind != "f" or not self.may_rewrite(layer.inputs[1]):
                continue
            b_val = layer.inputs[2] if len(layer.inputs) > 2 else None
            if b_val is not None and (const_array(b_val) is None or not self.may_rewrite(b_val)):
                continue
            sides = (0, 1) if node.op_type in ("Mul", "Add") else (0,)
            for i in sides:
                x, c = node.inputs[i], const_array(node.inputs[1 - i])
                if x is None or c is None or c.dtype.kind != "f" or rank_of(x) is None:
                    continue
                if self._fold(graph, namer, node, layer, x, c):
                    modified = True
                    break
        return modified

    def _fold(self, graph: ir.Graph, namer: Namer, node: ir.Node, layer: ir.Node, x: ir.Value,
              c: np.ndarray) -> bool:
        r = rank_of(x)
        w = const_array(layer.inputs[1])
        op = layer.op_type
        if op == "Conv":
            axis, k = 1, w.shape[1] * attr(layer, "group", 1)
        elif op == "Gemm":
            if attr(layer, "transA", 0) or r != 2:
                return False
            axis, k = 1, (w.shape[1] if attr(layer, "transB", 0) else w.shape[0])
        else:  # MatMul
            if w.ndim != 2:
                return False
            axis, k = r - 1, w.shape[0]
        if r is None or axis >= r:
            return False
        vec = channel_vector(c, r, axis, k)
        # the result must keep x's shape: c may not broadcast x to more dims
        if vec is None or c.ndim > r or (node.op_type == "Div" and np.any(vec == 0)):
            return False
        scale, shift = PRE[node.op_type](vec)
        v = scale if scale is not None else shift  # the per-input-channel factor or offset
        if shift is not None and (op == "MatMul" or (op == "Conv" and not _no_padding(layer))):
            return False
        w64 = w.astype(np.float64)
        bias = np.zeros(self._out_channels(layer, w))
        if len(layer.inputs) > 2 and layer.inputs[2] is not None:
            b = const_array(layer.inputs[2]).astype(np.float64)
            if op == "Gemm":
                b = b * attr(layer, "beta", 1.0)
            if b.size not in (1, bias.size) or (b.ndim == 2 and b.shape[0] != 1) or b.ndim > 2:
                return False
            bias = bias + b.reshape(-1)
        if op == "Conv":
            g = attr(layer, "group", 1)
            m, cg = w.shape[0], w.shape[1]
            # per-output-channel view of the input-channel vector: (M, C/g)
            per_w = np.repeat(v.reshape(g, cg), m // g, axis=0).reshape((m, cg) + (1,) * (w.ndim - 2))
            if scale is not None:
                w64 = w64 * per_w
            else:
                bias = bias + (w64 * per_w).reshape(m, -1).sum(axis=1)
        else:
            trans_b = op == "Gemm" and attr(layer, "transB", 0)
            w_kn = w64.T if trans_b else w64  # (K, M)
            if scale is not None:
                w_kn = w_kn * v[:, None]
            else:
                bias = bias + attr(layer, "alpha", 1.0) * (v @ w_kn)
            w64 = w_kn.T if trans_b else w_kn
        layer.replace_input_with(0, x)
        layer.replace_input_with(1, add_initializer(graph, namer, w64.astype(w.dtype), f"{layer.name or op}_W"))
        if op != "MatMul" and (shift is not None or (len(layer.inputs) > 2 and layer.inputs[2] is not None)):
            if len(layer.inputs) < 3:
                layer.resize_inputs(3)
            layer.replace_input_with(2, add_initializer(graph, namer, bias.astype(w.dtype), f"{layer.name or op}_B"))
            if op == "Gemm":
                layer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        copy_provenance(layer, node)
        graph.remove(node, safe=True)
        return True

    @staticmethod
    def _out_channels(layer: ir.Node, w: np.ndarray) -> int:
        if layer.op_type == "Conv":
            return w.shape[0]
        if layer.op_type == "Gemm" and attr(layer, "transB", 0):
            return w.shape[0]
        return w.shape[1]
