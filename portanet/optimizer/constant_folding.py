"""Constant folding: evaluate nodes whose inputs are all constants, at optimization time.

Also folds shape computations on static shapes: ``Shape``/``Size`` of a value whose
dimensions are known, and ``Gather``/``Slice`` that pick only known dimensions out of a
``Shape`` whose other dimensions are symbolic (the ``x.view(x.size(0), -1)`` pattern keeps
``Shape -> Gather(0)`` for the batch but folds the rest). ``Constant`` nodes become
initializers.

Level 1 keeps the model trainable: nodes reading a trainable parameter (a float
initializer) are left alone, and float results are kept as ``Constant`` nodes rather than
initializers, so folding never creates a new parameter. Results larger than 64 KiB that
are bigger than their inputs (``Expand``, ``Tile``, ``ConstantOfShape`` ...) are not folded:
they would trade a node for megabytes of weights.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from portanet.optimizer._util import Namer, attr, const_array, int_list_input, remove_nodes
from portanet.optimizer.base import OptimizerPass, register_pass

log = logging.getLogger(__name__)

#: ops whose output is not a function of their inputs' values
NON_FOLDABLE = frozenset({
    "RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial", "Bernoulli",
    "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty", "Optional",
})
#: never materialize a folded tensor bigger than this unless it is no bigger than its inputs
MAX_GROWTH_BYTES = 64 * 1024


def partial_shape(value: ir.Value) -> list[int | None] | None:
    """Dims of ``value`` as ints where known, None where symbolic; None if rank unknown."""
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def _shape_dims(node: ir.Node) -> list[int | None] | None:
    """What a ``Shape`` node returns, element by element (None = unknown at compile time)."""
    dims = partial_shape(node.inputs[0])
    if dims is None:
        return None
    r = len(dims)
    start = attr(node, "start", 0)
    end = attr(node, "end", r)
    start = max(0, min(r, start + r if start < 0 else start))
    end = max(0, min(r, end + r if end < 0 else end))
    return dims[start:end]


def _picked_dims(node: ir.Node) -> list[int | None] | None:
    """For Gather/Slice reading a Shape node: the elements they select, if computable."""
    src = node.inputs[0]
    prod = src.producer() if src is not None else None
    if prod is None or prod.op_type != "Shape":
        return None
    dims = _shape_dims(prod)
    if dims is None:
        return None
    if node.op_type == "Gather":
        idx = const_array(node.inputs[1])
        if idx is None or idx.ndim > 1:
            return None
        n = len(dims)
        if any(not -n <= int(i) < n for i in idx.reshape(-1)):
            return None
        return [dims[int(i) + n if i < 0 else int(i)] for i in idx.reshape(-1)]  # the caller restores 0-d
    if node.op_type == "Slice":
        starts = int_list_input(node, 1)
        ends = int_list_input(node, 2)
        axes = int_list_input(node, 3) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
        steps = int_list_input(node, 4) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
        if None in (starts, ends, axes, steps) or len(starts) != 1 or axes not in ([0], [-1]):
            return None
        return [dims[i] for i in range(len(dims))[slice(starts[0], ends[0], steps[0])]]
    return None


def evaluate(node: ir.Node, arrays: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Run one node on numpy arrays with the ONNX reference implementation."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    proto = ir.serde.serialize_node(node)
    ins, feeds = [], {}
    for name, arr in zip(proto.input, arrays):
        if not name or arr is None or name in feeds:
            continue
        feeds[name] = arr
        ins.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape))
    outs = [helper.make_empty_tensor_value_info(o) for o in proto.output if o]
    model = helper.make_model(helper.make_graph([proto], "fold", ins, outs),
                              opset_imports=[helper.make_opsetid("", opset)])
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]


@register_pass
class ConstantFolding(OptimizerPass):
    name = "constant_folding"
    level = 1
    order = 10

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._opset = model.opset_imports.get("", 18)
        return super().call(model)

    def run(self, graph: ir.Graph) -> bool:
        namer = Namer(graph)
        modified = False
        for node in list(graph):
            if node.graph is not graph or node.domain != "" or node.op_type in NON_FOLDABLE:
                continue
            if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
                continue
            if any(o.is_graph_output() for o in node.outputs):
                continue
            results = self._fold(node)
            if results is None:
                continue
            for out, arr in zip(node.outputs, results):
                expected = out.dtype
                if expected is not None and arr.dtype != np.dtype(expected.numpy()):
                    arr = arr.astype(expected.numpy())
                self._materialize(graph, namer, node, out, arr)
            remove_nodes(graph, [node])
            modified = True
        return modified

    # -- deciding and computing -------------------------------------------------------------
    def _fold(self, node: ir.Node) -> list[np.ndarray] | None:
        op = node.op_type
        if op == "Constant":
            arr = const_array(node.outputs[0])
            if arr is None:
                return None
            # level 1: a float Constant stays a node (an initializer would become a parameter)
            if self.opt_level < 2 and arr.dtype.kind == "f":
                return None
            return [arr]
        if op == "Shape":
            dims = _shape_dims(node)
            if dims is None or None in dims:
                return None
            return [np.array(dims, dtype=np.int64)]
        if op == "Size":
            dims = partial_shape(node.inputs[0])
            if dims is None or None in dims:
                return None
            return [np.array(int(np.prod(dims)), dtype=np.int64)]
        if op in ("Gather", "Slice"):
            picked = _picked_dims(node)
            if picked is not None and None not in picked:
                if op == "Gather" and const_array(node.inputs[1]).ndim == 0:
                    return [np.array(picked[0], dtype=np.int64)]
                return [np.array(picked, dtype=np.int64)]
        arrays: list[np.ndarray | None] = []
        for v in node.inputs:
            if v is None:
                arrays.append(None)
                continue
            arr = const_array(v)
            if arr is None or not self.may_rewrite(v):
                return None
            arrays.append(arr)
        if not arrays or all(a is None for a in arrays):
            return None
        try:
            results = evaluate(node, arrays, self._opset)
        except Exception as exc:  # noqa: BLE001 - the reference evaluator raises many types
            log.debug("cannot fold %s (%s): %s", node.name, op, exc)
            return None
        in_bytes = sum(a.nbytes for a in arrays if a is not None)
        if sum(r.nbytes for r in results) > max(in_bytes, MAX_GROWTH_BYTES):
            return None
        return results

    def _materialize(self, graph: ir.Graph, namer: Namer, node: ir.Node, out: ir.Value, arr: np.ndarray) -> None:
        hint = out.name or node.name or "folded"
        if self.opt_level < 2 and arr.dtype.kind == "f":
            # level 1: keep float results out of the parameter set
            name = namer(f"{hint}_const")
            const = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(arr, name=name))],
                            outputs=[ir.Value(name=name, shape=ir.Shape(arr.shape),
                                              type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)))],
                            name=namer(f"{node.name or 'fold'}_const"), metadata_props=dict(node.metadata_props))
            graph.insert_before(node, const)
            out.replace_all_uses_with(const.outputs[0])
            return
        # the initializer takes over the folded value's name (keeps source tensor names)
        name = out.name or namer(hint)
        out.name = None
        value = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
                         const_value=ir.tensor(np.array(arr, order="C"), name=name))
        graph.register_initializer(value)
        out.replace_all_uses_with(value)
