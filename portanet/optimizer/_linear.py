"""Shared machinery of the folds into Conv / ConvTranspose / Gemm / MatMul weights.

A "linear producer" is a node whose output channels can be rescaled and shifted by editing
its constant weight and bias: ``y[c] -> y[c] * scale[c] + shift[c]`` for every output
channel ``c`` (axis 1 for Conv/ConvTranspose, the last axis for Gemm/MatMul).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.optimizer._util import Namer, add_initializer, attr, const_array, rank_of

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def channel_axis(node: ir.Node) -> int | None:
    """The axis of the producer's output that holds its output channels."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return 1
    r = rank_of(node.outputs[0])
    if node.op_type == "Gemm":
        return 1
    if node.op_type == "MatMul" and r is not None and r >= 1:
        return r - 1
    return None


def out_channels(node: ir.Node) -> int | None:
    w = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return None
    if node.op_type == "Conv":
        return w.shape[0]
    if node.op_type == "ConvTranspose":
        return w.shape[1] * attr(node, "group", 1)
    if node.op_type == "Gemm":
        return w.shape[0] if attr(node, "transB", 0) else w.shape[1]
    if node.op_type == "MatMul":
        return w.shape[-1] if w.ndim == 2 else None
    return None


def channel_vector(c: np.ndarray, out_rank: int, axis: int, m: int) -> np.ndarray | None:
    """``c`` as a length-``m`` vector if it only varies along ``axis`` of a rank-``out_rank``
    output (and does not broadcast the output to a bigger shape); else None."""
    if c.ndim > out_rank:
        return None
    full = c.reshape((1,) * (out_rank - c.ndim) + c.shape)
    for i, d in enumerate(full.shape):
        if i != axis and d != 1:
            return None
    if full.shape[axis] not in (1, m):
        return None
    return np.broadcast_to(full.reshape(-1), (m,)).astype(np.float64)


def foldable_producer(value: ir.Value, may_rewrite) -> ir.Node | None:
    """The linear node producing ``value`` if its weights/bias are constants we may edit and
    ``value`` has no other consumer."""
    node = value.producer()
    if node is None or node.domain != "" or node.op_type not in LINEAR_OPS:
        return None
    if value.is_graph_output() or len(list(value.uses())) != 1:
        return None
    if len(node.inputs) < 2 or const_array(node.inputs[1]) is None or not may_rewrite(node.inputs[1]):
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        if const_array(node.inputs[2]) is None or not may_rewrite(node.inputs[2]):
            return None
    if node.op_type == "MatMul" and const_array(node.inputs[1]).ndim != 2:
        return None
    if node.op_type == "Gemm" and node.outputs[0].shape is not None and len(node.outputs[0].shape) != 2:
        return None
    if out_channels(node) is None:
        return None
    return node


def _bias_vector(node: ir.Node, m: int) -> np.ndarray | None:
    """The producer's bias as a length-m float64 vector (zeros when it has none)."""
    if node.op_type == "MatMul" or len(node.inputs) < 3 or node.inputs[2] is None:
        return np.zeros(m)
    b = const_array(node.inputs[2]).astype(np.float64)
    if node.op_type == "Gemm":
        b = b * attr(node, "beta", 1.0)
        if b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1) or (b.size not in (1, m)):
            return None  # a per-row bias cannot be folded per channel
    return np.broadcast_to(b.reshape(-1), (m,)).copy()


def apply_affine(graph: ir.Graph, namer: Namer, node: ir.Node, scale: np.ndarray | None,
                 shift: np.ndarray | None) -> bool:
    """Rewrite ``node`` so its output becomes ``out * scale + shift`` per output channel.

    Returns False (graph untouched) when the node's bias cannot take it. A MatMul has no
    bias input: a shift is refused (the MatMul+Add -> Gemm fusion handles that case).
    """
    m = out_channels(node)
    assert m is not None
    w = const_array(node.inputs[1])
    dtype = w.dtype
    if dtype.kind != "f":
        return False
    bias = _bias_vector(node, m)
    if bias is None:
        return False
    if node.op_type == "MatMul" and shift is not None and np.any(shift):
        return False
    s = np.ones(m) if scale is None else scale
    w64 = w.astype(np.float64)
    op = node.op_type
    if op == "Conv":
        w_new = w64 * s.reshape((m,) + (1,) * (w.ndim - 1))
    elif op == "ConvTranspose":
        g = attr(node, "group", 1)
        cin = w.shape[0]
        # (C_in, M/g, k...) -> (g, C_in/g, M/g, k...): output channel = group * M/g + j
        wg = w64.reshape((g, cin // g) + w.shape[1:])
        wg = wg * s.reshape((g, 1, m // g) + (1,) * (w.ndim - 2))
        w_new = wg.reshape(w.shape)
    elif op == "Gemm" and attr(node, "transB", 0):
        w_new = w64 * s[:, None]
    else:  # Gemm without transB, MatMul: weights are (K, M)
        w_new = w64 * s[None, :]
    b_new = bias * s + (0.0 if shift is None else shift)
    node.replace_input_with(1, add_initializer(graph, namer, w_new.astype(dtype), f"{node.name or op}_W"))
    if op != "MatMul":
        b_arr = b_new.astype(dtype)
        if op == "Gemm":
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        b_val = add_initializer(graph, namer, b_arr, f"{node.name or op}_B")
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(2, b_val)
    return True
