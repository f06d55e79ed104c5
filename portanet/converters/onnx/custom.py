"""Custom-domain ONNX nodes expanded into standard ops by users' handlers.

An ONNX file may hold nodes of a custom domain (``com.example::Clamp01``) that no runtime
knows. A handler registered with ``@portanet.register_layer("onnx", "com.example::Clamp01")``
receives an :class:`OnnxNodeCtx` and returns the values replacing the node's outputs, built
from standard ops with ``ctx.op``. A handler for a default-domain op type (``"Relu"``)
rewrites every node of that type the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.handlers import HandlerTable
from portanet.errors import ConversionError
from portanet.ir.provenance import SOURCE_KEY, SOURCE_TYPE_KEY

HANDLERS = HandlerTable("onnx")


def node_key(node: ir.Node) -> str:
    """The handler key of a node: ``"domain::OpType"``, or ``"OpType"`` in the default domain."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


class OnnxNodeCtx:
    """What a custom-node handler sees: the node, its inputs and attributes, and ``op`` to emit
    standard ONNX nodes (inserted before the node, with its provenance)."""

    def __init__(self, graph: ir.Graph, node: ir.Node) -> None:
        self.graph = graph
        self.node = node
        #: the node's input values (None for an omitted optional input)
        self.inputs: list[ir.Value | None] = list(node.inputs)
        #: attribute name -> Python value (ints, floats, strings, lists, tensors as numpy arrays)
        self.attrs: dict[str, Any] = {k: _attr_value(a) for k, a in node.attributes.items()}
        self.emitted: list[ir.Node] = []

    @property
    def name(self) -> str:
        return self.node.name or self.node.op_type

    def op(self, op_type: str, inputs: Sequence[ir.Value | None], attrs: dict[str, Any] | None = None, *,
           outputs: int = 1) -> Any:
        """Emit a default-domain node; returns its output value (a tuple for several)."""
        attributes = ir.convenience.convert_attributes({k: v for k, v in (attrs or {}).items() if v is not None})
        n = len(self.emitted)
        outs = [ir.Value(name=f"{self.name}/{op_type}_{n}" + (f"_{i}" if outputs > 1 else ""))
                for i in range(outputs)]
        node = ir.Node("", op_type, list(inputs), attributes, outputs=outs, name=f"{self.name}/{op_type}_{n}",
                       metadata_props={SOURCE_KEY: self.name, SOURCE_TYPE_KEY: node_key(self.node)})
        self.emitted.append(node)
        return outs[0] if outputs == 1 else tuple(outs)

    def const(self, array: Any, dtype: Any = np.float32) -> ir.Value:
        """A constant input (an initializer of the graph)."""
        arr = np.asarray(array, dtype=dtype)
        name = f"{self.name}/const_{len(self.graph.initializers)}"
        value = ir.Value(name=name, shape=ir.Shape(arr.shape), const_value=ir.tensor(arr, name=name),
                         type=ir.TensorType(ir.tensor(arr).dtype))
        self.graph.register_initializer(value)
        return value


def _attr_value(attr: ir.Attr) -> Any:
    value = attr.value
    if isinstance(value, ir.TensorProtocol):
        return value.numpy()
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return value


def expand_custom_nodes(model: ir.Model, *, path: str | None = None) -> int:
    """Replace every node that has a registered handler by the ops the handler emits; returns
    how many nodes were expanded. Nodes without a handler are left as they are."""
    if not HANDLERS.supported:
        return 0
    count = 0
    graph = model.graph
    for node in list(graph):
        key = node_key(node)
        if key not in HANDLERS:
            continue
        ctx = OnnxNodeCtx(graph, node)
        result = HANDLERS.call(key, ctx.name, ctx, path=path)
        new = list(result) if isinstance(result, list | tuple) else [result]
        if len(new) != len(node.outputs):
            raise ConversionError(f"handler returned {len(new)} value(s) for {len(node.outputs)} output(s)",
                                  framework="onnx", layer=ctx.name, layer_type=key, path=path)
        if ctx.emitted:
            graph.insert_before(node, ctx.emitted)
        _replace_outputs(graph, node, new)
        graph.remove(node, safe=True)
        count += 1
    if count:
        used = {n.domain for n in graph if n.domain}
        for domain in [d for d in model.opset_imports if d and d not in ("ai.onnx",) and d not in used]:
            del model.opset_imports[domain]
    return count


def _replace_outputs(graph: ir.Graph, node: ir.Node, new: list[ir.Value]) -> None:
    for old, value in zip(node.outputs, new):
        if old in graph.outputs:
            # a graph output keeps its name: route it through an Identity if the value is shared
            i = list(graph.outputs).index(old)
            name = old.name
            old.name = f"{name}__replaced"
            if value.producer() is None or value in graph.outputs or value.is_graph_input():
                ident = ir.Node("", "Identity", [value], outputs=[ir.Value(name=name)], name=f"{name}/identity",
                                metadata_props=dict(node.metadata_props))
                graph.insert_before(node, [ident])
                value = ident.outputs[0]
            else:
                value.name = name
            value.shape, value.type = value.shape or old.shape, value.type or old.type
            graph.outputs[i] = value
        ir.convenience.replace_all_uses_with(old, value)
