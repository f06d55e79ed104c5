"""Make values computed inside control-flow subgraphs readable as graph outputs.

An ONNX graph can only output values of its top-level graph; a value computed inside an ``If``
branch, a ``Loop`` body or a ``Scan`` body is invisible from outside. ``expose_inner_values``
rewrites a copy of the model so that each requested inner value travels out through every
enclosing control-flow node, as one more output of that node:

* ``If``: one more branch output. The branch that defines the value outputs it; the other
  branch outputs an empty tensor (shape ``(0,)``) of the same element type, so the new ``If``
  output holds the value when its branch ran and an empty tensor otherwise;
* ``Loop`` / ``Scan``: one more scan output of the body, so the node outputs the value of
  every iteration, flattened, stacked: ``(iterations, size)`` (flattened because runtimes
  differ on multi-dimensional scan outputs: ONNX Runtime stacks them, onnx's reference
  evaluator concatenates them along their first axis).

The rewrite adds outputs only: every original output keeps its value. The same rewrite
applied to two models with the same subgraph structure (a source ``.onnx`` file and its
conversion) yields comparable arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx
from onnx import helper

_CONTROL_FLOW = {"If", "Loop", "Scan"}


def walk(graph: onnx.GraphProto, parents: tuple = ()) -> Iterable[tuple[onnx.NodeProto, tuple]]:
    """(node, chain of (control-flow node, its subgraph attribute name, its graph)) for every
    node of ``graph`` and of the subgraphs below it."""
    for node in graph.node:
        yield node, parents
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from walk(a.g, (*parents, (node, a.name, graph)))


def inner_values(model: onnx.ModelProto) -> dict[str, int]:
    """Names of the values defined inside subgraphs -> subgraph depth (1 = directly inside a
    top-level node)."""
    out: dict[str, int] = {}
    for node, parents in walk(model.graph, ()):
        if parents:
            for name in node.output:
                if name:
                    out[name] = len(parents)
    return out


def _value_types(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, tuple[int, int | None]]:
    """name -> (element type, rank) from shape inference (float and unknown rank where
    inference says nothing)."""
    wanted = set(names)
    found: dict[str, tuple[int, int | None]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a best effort here
        inferred = model
    stack = [inferred.graph]
    while stack:
        g = stack.pop()
        for vi in [*g.value_info, *g.output]:
            t = vi.type.tensor_type
            if vi.name in wanted and t.elem_type:
                found[vi.name] = (t.elem_type, len(t.shape.dim) if t.HasField("shape") else None)
        stack.extend(a.g for node in g.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
    return {n: found.get(n, (onnx.TensorProto.FLOAT, None)) for n in wanted}


def expose_inner_values(model: onnx.ModelProto, names: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` in which each inner value of ``names`` is a top-level output; returns
    the copy and inner name -> name of that top-level output. Names that are no inner value
    (top-level values, unknown names) are left out of the mapping."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = _value_types(model, names)
    where = {}
    for node, parents in walk(out.graph, ()):
        if parents:
            for name in node.output:
                if name in types:
                    where[name] = parents
    used = {v for node, _ in walk(out.graph, ()) for v in [*node.input, *node.output]}
    used |= {i.name for i in out.graph.input} | {i.name for i in out.graph.initializer}
    counter = [0]

    def fresh(base: str) -> str:
        while True:
            counter[0] += 1
            name = f"{base}__probe{counter[0]}"
            if name not in used:
                used.add(name)
                return name

    mapping: dict[str, str] = {}
    for name, parents in where.items():
        elem, rank = types[name]
        current = name
        # innermost enclosing node first: the value climbs one scope at a time
        for node, attr_name, _outer in reversed(parents):
            lifted = fresh(name)
            body = next(a.g for a in node.attribute if a.name == attr_name)
            # a copy, not the value itself: it may already be an output of the body (a name
            # listed twice is ambiguous). Loop/Scan iterations are flattened: stacked 1-D values
            # read the same whether a runtime stacks scan outputs or concatenates them
            inner_copy = fresh(name)
            if node.op_type == "If":
                body.node.append(helper.make_node("Identity", [current], [inner_copy]))
            else:
                flat = fresh(f"{name}_flat_shape")
                body.node.append(helper.make_node(
                    "Constant", [], [flat], value=helper.make_tensor(flat, onnx.TensorProto.INT64, [1], [-1])))
                body.node.append(helper.make_node("Reshape", [current, flat], [inner_copy]))
            body.output.append(helper.make_tensor_value_info(inner_copy, elem, None))
            if node.op_type == "If":
                other = next(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH
                             and a.name != attr_name)
                empty = fresh(f"{name}_empty")
                other.node.append(helper.make_node(
                    "Constant", [], [empty], value=helper.make_tensor(empty, elem, [0], [])))
                other.output.append(helper.make_tensor_value_info(empty, elem, None))
            elif node.op_type == "Scan":
                for key in ("scan_output_axes", "scan_output_directions"):
                    attr = next((a for a in node.attribute if a.name == key), None)
                    if attr is not None:
                        attr.ints.append(0)
            elif node.op_type != "Loop":
                raise ValueError(f"cannot expose values of a subgraph of {node.op_type}")
            node.output.append(lifted)
            current = lifted
            if node.op_type != "If":
                rank = 2  # (iterations, flattened value)
        # a graph output needs a shape field: unknown dims of the known rank
        out.graph.output.append(helper.make_tensor_value_info(current, elem, None if rank is None else [None] * rank))
        mapping[name] = current
    return out, mapping
