"""Transposes pushed down through layout-agnostic ops until they cancel (TensorFlow NHWC leftovers).

``Relu(Transpose(x, p))`` is ``Transpose(Relu(x), p)``; the same holds for elementwise ops
whose other operands are constants (permuted to match), scalars, or Transposes with the same
``p`` (which disappear), for ``Concat`` (``axis -> p[axis]``), ``Softmax``-like ops and
reductions with ``keepdims=1`` (``axes -> p[axes]``). A Transpose is moved only when, walking
down its single-consumer chain of such ops, it reaches something that absorbs it: the
inverse Transpose (both vanish), a second Transpose with the same ``p`` on a binary op (two
become one), a ``keepdims=0`` reduction whose surviving axes keep their order (the reduction
takes ``x`` with remapped axes and no Transpose is left: the NHWC global pooling of
squeeze-and-excitation blocks), or a Reshape/Flatten feeding a MatMul/Gemm with constant weights (the
``gemm_input`` pass permutes the weight rows instead). Otherwise the graph is left alone,
except that a Transpose right after an elementwise op on a graph input climbs over it onto
the input (the NHWC image scaling then reaches, and folds into, the first Conv).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from portanet.optimizer._util import (
    Namer,
    add_initializer,
    attr,
    const_array,
    only_consumer,
    rank_of,
    replace_value,
    set_attr,
)
from portanet.optimizer.base import OptimizerPass, register_pass

UNARY = frozenset({
    "Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
    "Sign", "Erf", "Softplus", "Softsign", "Elu", "Selu", "LeakyRelu", "HardSigmoid", "HardSwish", "Mish",
    "Gelu", "Celu", "ThresholdedRelu", "Clip", "Cast", "Not", "IsNaN", "IsInf", "Sin", "Cos",
})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater",
                    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "PRelu", "Mod", "BitShift"})
AXIS_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})


def _perm(node: ir.Node | None) -> list[int] | None:
    if node is None or node.op_type != "Transpose" or node.domain != "":
        return None
    return attr(node, "perm")


def _transposed_perm(value: ir.Value | None) -> list[int] | None:
    return _perm(value.producer()) if value is not None else None


def _scalar_like(value: ir.Value) -> bool:
    if value.shape is None:
        return False
    return all(d == 1 for d in value.shape)


def _operand_ok(value: ir.Value | None, perm: list[int], r: int) -> bool:
    """Whether ``value`` can follow the Transpose through a broadcasting op."""
    if value is None:
        return True
    if _transposed_perm(value) == perm:
        return True
    c = const_array(value)
    if c is not None:
        return c.ndim <= r
    return _scalar_like(value) and rank_of(value) is not None and rank_of(value) <= r


#: op -> predicate(node, index of the transposed input, perm) -> whether T can pass through
Through = Callable[[ir.Node, int, list[int]], bool]


def _through(node: ir.Node, index: int, perm: list[int]) -> bool:
    r = len(perm)
    op = node.op_type
    if node.domain != "" or len(node.outputs) != 1:
        return False
    if op in UNARY:
        return index == 0 and all(v is None or _scalar_like(v) for v in node.inputs[1:])
    if op in BINARY:
        if rank_of(node.outputs[0]) != r:
            return False
        if op == "PRelu" and index != 0:
            return False
        return all(_operand_ok(v, perm, r) for j, v in enumerate(node.inputs) if j != index)
    if op == "Concat":
        return all(j == index or _transposed_perm(v) == perm or (const_array(v) is not None and const_array(v).ndim == r)
                   for j, v in enumerate(node.inputs))
    if op in AXIS_OPS:
        return True
    if op in REDUCE:
        if not attr(node, "keepdims", 1):
            return False
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            return const_array(node.inputs[1]) is not None
        return True
    return False


def _reduce_axes(node: ir.Node) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = const_array(node.inputs[1])
        return None if arr is None else [int(a) for a in arr.reshape(-1)]
    return attr(node, "axes")


def _reduce_drops_transpose(node: ir.Node, perm: list[int]) -> bool:
    """A keepdims=0 reduction of ``Transpose(x, perm)`` whose surviving axes keep their order
    in ``x`` equals the same reduction of ``x`` over ``perm[axes]`` - no Transpose needed."""
    if node.domain != "" or attr(node, "keepdims", 1):
        return False
    axes = _reduce_axes(node)
    if not axes:
        return False
    r = len(perm)
    reduced = {a % r for a in axes}
    kept = [perm[i] for i in range(r) if i not in reduced]
    return kept == sorted(kept)


def _absorbs(node: ir.Node, value: ir.Value, perm: list[int]) -> bool:
    """Whether ``node`` (consuming the transposed ``value``) makes the push worthwhile."""
    p2 = _perm(node)
    if p2 is not None:
        return [perm[j] for j in p2] == list(range(len(perm)))
    if node.op_type in BINARY:
        others = [v for v in node.inputs if v is not value]
        return any(_transposed_perm(v) == perm for v in others)
    if node.op_type in REDUCE and _reduce_drops_transpose(node, perm):
        return True
    if node.op_type in ("Reshape", "Flatten"):
        nxt = only_consumer(node.outputs[0])
        return nxt is not None and nxt.op_type in ("MatMul", "Gemm") and const_array(nxt.inputs[1]) is not None
    return False


@register_pass
class PushTransposes(OptimizerPass):
    name = "push_transposes"
    level = 1
    # before collapse_reshapes, which would turn a Transpose of unit axes into a Reshape
    # that no longer cancels with the Transposes pushed down to it
    order = 48

    def run(self, graph: ir.Graph) -> bool:
        namer = Namer(graph)
        modified = False
        work = [n for n in graph if _perm(n) is not None]
        while work:
            t = work.pop()
            if t.graph is not graph:
                continue
            perm = _perm(t)
            if perm is None:
                continue
            if not self._worthwhile(t, perm):
                continue
            if self._into_reduce(graph, namer, t, perm):
                modified = True
                continue
            new_t = self._push(graph, namer, t, perm)
            if new_t is not None:
                modified = True
                work.append(new_t)
        for t in [n for n in graph if _perm(n) is not None]:
            modified |= self._up_to_input(graph, namer, t)
        return modified

    def _up_to_input(self, graph: ir.Graph, namer: Namer, t: ir.Node) -> bool:
        """``Transpose(op(x, c))`` with ``x`` a graph input and ``c`` constants becomes
        ``op(Transpose(x), c')``: the Transpose moves onto the model's interface, and the
        elementwise op can then meet (and fold into) the layer after it - the ``x / 255``
        of an NHWC image model ends up in the first Conv."""
        perm = _perm(t)
        src = t.inputs[0]
        op = src.producer() if src is not None else None
        if perm is None or op is None or op.domain != "" or only_consumer(src) is not t or len(op.outputs) != 1:
            return False
        if self._worthwhile(t, perm):
            return False  # it is on its way down to something that absorbs it
        if op.op_type not in UNARY and op.op_type not in BINARY:
            return False
        r = len(perm)
        live = [j for j, v in enumerate(op.inputs) if v is not None and const_array(v) is None]
        if len(live) != 1 or not op.inputs[live[0]].is_graph_input() or rank_of(op.inputs[live[0]]) != r:
            return False
        if op.op_type in BINARY and rank_of(src) != r:
            return False
        if op.op_type in UNARY and not all(v is None or _scalar_like(v) for v in op.inputs[1:]):
            return False
        consts = [(j, const_array(v)) for j, v in enumerate(op.inputs) if j not in live and v is not None]
        if any(c.ndim > r or not self.may_rewrite(op.inputs[j]) for j, c in consts if c.ndim > 0):
            return False
        x = op.inputs[live[0]]
        new_t = ir.Node("", "Transpose", [x], [ir.AttrInt64s("perm", perm)],
                        outputs=[ir.Value(name=namer(f"{x.name or 'x'}_t"), type=x.type,
                                          shape=None if x.shape is None else ir.Shape([x.shape[p] for p in perm]))],
                        name=namer(f"{t.name or 'Transpose'}_up"), metadata_props=dict(t.metadata_props))
        graph.insert_before(op, new_t)
        op.replace_input_with(live[0], new_t.outputs[0])
        for j, c in consts:
            if c.ndim > 0 and not all(d == 1 for d in c.shape):
                full = c.reshape((1,) * (r - c.ndim) + c.shape)
                op.replace_input_with(j, add_initializer(graph, namer, full.transpose(perm),
                                                         f"{op.inputs[j].name or 'c'}_t"))
        src.shape = t.outputs[0].shape
        if not replace_value(t.outputs[0], src):
            raise AssertionError("Transpose moved to the input could not hand over its output")
        graph.remove(t, safe=True)
        return True

    def _worthwhile(self, t: ir.Node, perm: list[int]) -> bool:
        value = t.outputs[0]
        seen = 0
        while seen < 1000:
            seen += 1
            node = only_consumer(value)
            if node is None:
                return False
            if _absorbs(node, value, perm):
                return True
            index = next(i for i, v in enumerate(node.inputs) if v is value)
            if not _through(node, index, perm) or not self._consts_ok(node, perm):
                return False
            value = node.outputs[0]
        return False

    def _consts_ok(self, node: ir.Node, perm: list[int]) -> bool:
        return all(self.may_rewrite(v) for v in node.inputs if v is not None and const_array(v) is not None
                   and const_array(v).ndim > 0 and _transposed_perm(v) != perm)

    def _into_reduce(self, graph: ir.Graph, namer: Namer, t: ir.Node, perm: list[int]) -> bool:
        """Fold ``t`` into a keepdims=0 reduction that consumes it directly."""
        node = only_consumer(t.outputs[0])
        if node is None or node.op_type not in REDUCE or node.inputs[0] is not t.outputs[0]:
            return False
        if not _reduce_drops_transpose(node, perm):
            return False
        r = len(perm)
        axes = sorted(perm[a % r] for a in _reduce_axes(node))
        node.replace_input_with(0, t.inputs[0])
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            node.replace_input_with(1, add_initializer(graph, namer, np.array(axes, np.int64),
                                                       f"{node.name or 'reduce'}_axes"))
        else:
            set_attr(node, "axes", axes)
        graph.remove(t, safe=True)
        return True

    def _push(self, graph: ir.Graph, namer: Namer, t: ir.Node, perm: list[int]) -> ir.Node | None:
        """Move ``t`` below its single consumer; returns the new Transpose."""
        value = t.outputs[0]
        node = only_consumer(value)
        if node is None or _perm(node) is not None:
            return None  # cancellation is collapse_reshapes' job
        index = next(i for i, v in enumerate(node.inputs) if v is value)
        if not _through(node, index, perm):
            return None  # an absorbing Reshape/Flatten: gemm_input's job
        r = len(perm)
        inv = [int(i) for i in np.argsort(perm)]
        for j, v in enumerate(list(node.inputs)):
            if v is None:
                continue
            if v is value or _transposed_perm(v) == perm:
                node.replace_input_with(j, v.producer().inputs[0])
                continue
            c = const_array(v)
            if c is not None and c.ndim > 0 and not all(d == 1 for d in c.shape):
                full = c.reshape((1,) * (r - c.ndim) + c.shape)
                node.replace_input_with(j, add_initializer(graph, namer, full.transpose(inv), f"{v.name or 'c'}_t"))
        op = node.op_type
        if op in ("Concat", *AXIS_OPS):
            axis = attr(node, "axis", -1 if op in AXIS_OPS else 0)
            set_attr(node, "axis", perm[axis % r])
        elif op in REDUCE:
            if len(node.inputs) > 1 and node.inputs[1] is not None:
                axes = [int(a) % r for a in const_array(node.inputs[1]).reshape(-1)]
                node.replace_input_with(1, add_initializer(graph, namer, np.array([perm[a] for a in axes], np.int64),
                                                           f"{node.name or 'reduce'}_axes"))
            elif attr(node, "axes") is not None:
                set_attr(node, "axes", [perm[a % r] for a in attr(node, "axes")])
        out = node.outputs[0]
        old_shape = out.shape
        new_t = ir.Node("", "Transpose", [None], [ir.AttrInt64s("perm", perm)],
                        outputs=[ir.Value(name=namer(f"{out.name or 'v'}_t"), shape=old_shape, type=out.type)],
                        name=namer(f"{t.name or 'Transpose'}_pushed"), metadata_props=dict(t.metadata_props))
        graph.insert_after(node, new_t)
        if not replace_value(out, new_t.outputs[0]):
            raise AssertionError("pushed Transpose could not take over its output")
        new_t.replace_input_with(0, out)
        if out.name is None:  # ``out`` gave its graph-output name to the Transpose
            out.name = namer(f"{node.name or op}_out")
        out.shape = None if old_shape is None or len(old_shape) != r else ir.Shape([old_shape[i] for i in inv])
        if not t.outputs[0].uses():
            graph.remove(t, safe=True)
        return new_t
