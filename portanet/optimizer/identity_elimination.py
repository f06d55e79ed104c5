"""Identity, inference-Dropout and no-op elimination.

Removes nodes whose output equals their input: ``Identity``; ``Dropout`` in an inference
graph (level 2 only: removing it changes what training does); and ops that provably do
nothing here - ``Cast`` to the same type, ``Reshape``/``Expand``/``Flatten`` to the input's own
shape, ``Transpose`` with the identity permutation, ``Pad`` with zero pads, a full ``Slice``,
one-input ``Concat``/``Sum``/``Max``/``Min``/``Mean``, ``Add``/``Sub`` of 0 and ``Mul``/``Div``
by 1 that do not broadcast the other operand. At level 1 an operand that is a trainable
parameter (a bias or scale that happens to be 0 or 1) is never removed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from portanet.optimizer._util import attr, const_array, int_list_input, replace_value, static_shape
from portanet.optimizer.base import OptimizerPass, register_pass

#: op type -> rule returning the input the node passes through unchanged (or None)
NoOpRule = Callable[[ir.Node, "EliminateIdentity"], ir.Value | None]
RULES: dict[str, NoOpRule] = {}


def rule(*ops: str) -> Callable[[NoOpRule], NoOpRule]:
    def deco(fn: NoOpRule) -> NoOpRule:
        for op in ops:
            RULES[op] = fn
        return fn

    return deco


def _same_static_shape(a: ir.Value | None, b: ir.Value | None) -> bool:
    sa, sb = static_shape(a), static_shape(b)
    return sa is not None and sa == sb


@rule("Identity")
def _identity(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    return node.inputs[0]


@rule("Dropout")
def _dropout(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    if p.opt_level < 2:
        return None  # level 1 keeps the model trainable: Dropout matters in training
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return None  # the mask is used
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = const_array(node.inputs[2])
        if mode is None or bool(mode):
            return None  # training_mode may be true at run time
    return node.inputs[0]


@rule("Cast", "CastLike")
def _cast(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    x = node.inputs[0]
    if x is not None and x.dtype is not None and x.dtype == node.outputs[0].dtype:
        return x
    return None


@rule("Expand", "Squeeze", "Unsqueeze")
def _same_shape(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    x = node.inputs[0]
    return x if _same_static_shape(x, node.outputs[0]) else None


@rule("Flatten")
def _flatten(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    x = node.inputs[0]
    if x is not None and x.shape is not None and len(x.shape) == 2 and attr(node, "axis", 1) == 1:
        return x  # (N, K) -> (N, K) whatever N and K are
    return _same_shape(node, p)


@rule("Reshape")
def _reshape(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    x = node.inputs[0]
    target = const_array(node.inputs[1])
    if x is not None and x.shape is not None and target is not None and not attr(node, "allowzero", 0):
        if _keeps_shape(list(x.shape), [int(t) for t in target.reshape(-1)]):
            return x
    return _same_shape(node, p)


def _keeps_shape(dims: list, target: list[int]) -> bool:
    """Whether Reshape ``target`` gives back ``dims``: every entry copies (0) or equals the
    input's known dim, except at most one -1, which then must resolve to the remaining dim."""
    if len(dims) != len(target) or target.count(-1) > 1:
        return False
    for d, t in zip(dims, target):
        if t == -1 or t == 0:
            continue
        if not isinstance(d, int) or d != t or d == 0:
            return False
    return True


@rule("Transpose")
def _transpose(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    perm = attr(node, "perm")
    if perm is not None and perm == sorted(perm):
        return node.inputs[0]
    return None


@rule("Pad")
def _pad(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    pads = int_list_input(node, 1)
    return node.inputs[0] if pads is not None and not any(pads) else None


@rule("Slice")
def _slice(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    x = node.inputs[0]
    return x if _same_static_shape(x, node.outputs[0]) else None


@rule("Concat", "Sum", "Max", "Min", "Mean")
def _single(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    return node.inputs[0] if len(node.inputs) == 1 else None


def _neutral(node: ir.Node, p: EliminateIdentity, value: float, positions: tuple[int, ...]) -> ir.Value | None:
    for i in positions:
        c = node.inputs[i]
        other = node.inputs[1 - i]
        arr = const_array(c)
        if arr is None or not p.may_rewrite(c) or arr.size == 0 or not np.all(arr == value):
            continue
        if other is None or other.dtype is None or other.dtype != node.outputs[0].dtype:
            continue
        if _same_static_shape(other, node.outputs[0]) or _does_not_broadcast(other, arr.shape):
            return other
    return None


def _does_not_broadcast(other: ir.Value, shape: tuple[int, ...]) -> bool:
    """Whether a constant of ``shape`` leaves ``other``'s shape unchanged when broadcast:
    no higher rank, and each of its dims is 1 or equal to ``other``'s (known) dim."""
    if other.shape is None or len(shape) > len(other.shape):
        return False
    tail = list(other.shape)[len(other.shape) - len(shape):]
    return all(c == 1 or (isinstance(o, int) and o == c) for c, o in zip(shape, tail))


@rule("Add")
def _add(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    return _neutral(node, p, 0.0, (1, 0))


@rule("Sub")
def _sub(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    return _neutral(node, p, 0.0, (1,))


@rule("Mul")
def _mul(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    return _neutral(node, p, 1.0, (1, 0))


@rule("Div")
def _div(node: ir.Node, p: EliminateIdentity) -> ir.Value | None:
    return _neutral(node, p, 1.0, (1,))


@register_pass
class EliminateIdentity(OptimizerPass):
    name = "eliminate_identity"
    level = 1
    order = 20

    def run(self, graph: ir.Graph) -> bool:
        modified = False
        for node in list(graph):
            fn = RULES.get(node.op_type) if node.domain == "" else None
            if fn is None or not node.inputs:
                continue
            src = fn(node, self)
            if src is None:
                continue
            out = node.outputs[0]
            if not replace_value(out, src):
                continue
            for extra in node.outputs[1:]:
                if extra.uses() or extra.is_graph_output():
                    break
            else:
                graph.remove(node, safe=True)
            modified = True
        return modified
