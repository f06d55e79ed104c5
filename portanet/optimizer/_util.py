"""Small helpers shared by the optimizer passes: constants, attributes, names, rewiring."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.ir.provenance import SOURCE_KEY

#: node metadata key listing the source layers folded into a node by the optimizer
FUSED_KEY = "portanet.fused"


# -- constants ------------------------------------------------------------------------------
def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of ``value`` if it is a compile-time constant, else None.

    Constants are initializers that are not graph inputs (an initializer listed as an input
    can be overridden by a feed) and outputs of ``Constant`` nodes.
    """
    if value is None:
        return None
    if value.is_initializer():
        if value.is_graph_input() or value.const_value is None:
            return None
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Constant" and node.domain == "":
        return constant_node_value(node)
    return None


def constant_node_value(node: ir.Node) -> np.ndarray | None:
    """The tensor a ``Constant`` node produces (any of its value_* attributes)."""
    for key, attr in node.attributes.items():
        if attr.is_ref():
            return None
        if key == "value":
            return attr.as_tensor().numpy()
        if key == "value_float":
            return np.array(attr.as_float(), dtype=np.float32)
        if key == "value_floats":
            return np.array(list(attr.as_floats()), dtype=np.float32)
        if key == "value_int":
            return np.array(attr.as_int(), dtype=np.int64)
        if key == "value_ints":
            return np.array(list(attr.as_ints()), dtype=np.int64)
    return None


def is_param(value: ir.Value | None) -> bool:
    """A trainable parameter: a float initializer (portanet derives trainability this way)."""
    return (
        value is not None
        and value.is_initializer()
        and value.const_value is not None
        and value.const_value.dtype.is_floating_point()
    )


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape as ints when every dimension is known, else None."""
    if value is None:
        return None
    arr = const_array(value)
    if arr is not None:
        return tuple(arr.shape)
    if value.shape is None:
        return None
    dims = []
    for d in value.shape:
        if not isinstance(d, int):
            return None
        dims.append(d)
    return tuple(dims)


def rank_of(value: ir.Value | None) -> int | None:
    if value is None:
        return None
    arr = const_array(value)
    if arr is not None:
        return arr.ndim
    return None if value.shape is None else len(value.shape)


def np_dtype(value: ir.Value) -> np.dtype | None:
    if value.dtype is None:
        arr = const_array(value)
        return None if arr is None else arr.dtype
    try:
        return np.dtype(value.dtype.numpy())
    except (TypeError, ValueError):
        return None


# -- attributes -----------------------------------------------------------------------------
def attr(node: ir.Node, name: str, default: Any = None) -> Any:
    """An attribute's Python value (ints/floats lists as lists), or ``default``."""
    a = node.attributes.get(name)
    if a is None or a.is_ref():
        return default
    v = a.value
    if a.type in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(v)
    return v


def set_attr(node: ir.Node, name: str, value: Any) -> None:
    node.attributes[name] = ir.convenience.convert_attribute(name, value)


def int_list_input(node: ir.Node, index: int, attr_name: str | None = None) -> list[int] | None:
    """An int-list operand given either as a constant input (opset >= 13) or an attribute."""
    if len(node.inputs) > index and node.inputs[index] is not None:
        arr = const_array(node.inputs[index])
        return None if arr is None else [int(x) for x in arr.reshape(-1)]
    if attr_name is not None:
        return attr(node, attr_name)
    return None


# -- graph editing --------------------------------------------------------------------------
class Namer:
    """Hands out value/node names that are unused in a graph."""

    def __init__(self, graph: ir.Graph) -> None:
        self.used: set[str] = set()
        for v in [*graph.inputs, *graph.initializers.values()]:
            if v.name:
                self.used.add(v.name)
        for node in graph.all_nodes():
            if node.name:
                self.used.add(node.name)
            for o in node.outputs:
                if o.name:
                    self.used.add(o.name)

    def __call__(self, hint: str) -> str:
        name, i = hint, 1
        while name in self.used:
            name = f"{hint}_{i}"
            i += 1
        self.used.add(name)
        return name


def add_initializer(graph: ir.Graph, namer: Namer, array: np.ndarray, hint: str) -> ir.Value:
    """Register ``array`` as a new initializer and return its value."""
    arr = np.array(array, order="C")
    name = namer(hint)
    value = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
                     const_value=ir.tensor(arr, name=name))
    graph.register_initializer(value)
    return value


def replace_value(old: ir.Value, new: ir.Value) -> bool:
    """Make every consumer (and graph output slot) of ``old`` use ``new``.

    A graph output keeps its name: ``new`` is renamed, which is only possible when ``new``
    is a node output that is not itself a graph output. Returns False (and changes nothing)
    when the replacement is impossible.
    """
    if old is new:
        return True
    if old.is_graph_output():
        if new.is_graph_input() or new.is_graph_output() or new.is_initializer() or new.producer() is None:
            return False
        graph = old.graph
        assert graph is not None
        old_name = old.name
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        old.name = None  # free the name before giving it to ``new``
        new.name = old_name
        if new.shape is None:
            new.shape = old.shape
        if new.type is None:
            new.type = old.type
        return True
    old.replace_all_uses_with(new)
    return True


def copy_provenance(dst: ir.Node, *srcs: ir.Node) -> None:
    """Keep ``dst``'s own provenance; record every other source layer as folded into it."""
    fused = [s for s in (dst.metadata_props.get(FUSED_KEY, "").split(",")) if s]
    for src in srcs:
        for name in [src.metadata_props.get(SOURCE_KEY), *src.metadata_props.get(FUSED_KEY, "").split(",")]:
            if name and name not in fused and name != dst.metadata_props.get(SOURCE_KEY):
                fused.append(name)
        if SOURCE_KEY not in dst.metadata_props:
            dst.metadata_props.update({k: v for k, v in src.metadata_props.items() if k != FUSED_KEY})
    if fused:
        dst.metadata_props[FUSED_KEY] = ",".join(fused)


def new_node(
    op_type: str,
    inputs: Sequence[ir.Value | None],
    attributes: dict[str, Any] | None = None,
    *,
    namer: Namer,
    like: ir.Node | None = None,
    outputs: int = 1,
    hint: str | None = None,
) -> ir.Node:
    """A node named uniquely after ``hint``, with ``like``'s provenance."""
    base = hint or (like.name if like is not None and like.name else op_type)
    outs = [ir.Value(name=namer(f"{base}_out" if i == 0 else f"{base}_out{i}")) for i in range(outputs)]
    attrs = ir.convenience.convert_attributes({k: v for k, v in (attributes or {}).items() if v is not None})
    node = ir.Node("", op_type, list(inputs), attrs, outputs=outs, name=namer(base))
    if like is not None:
        node.metadata_props.update(like.metadata_props)
    return node


def only_consumer(value: ir.Value) -> ir.Node | None:
    """The single node using ``value`` (exactly one use and not a graph output), else None."""
    if value.is_graph_output():
        return None
    uses = list(value.uses())
    if len(uses) != 1:
        return None
    return uses[0].node


def remove_nodes(graph: ir.Graph, nodes: Iterable[ir.Node]) -> None:
    """Remove nodes whose outputs are no longer used."""
    for n in nodes:
        if n.graph is graph and not any(o.uses() or o.is_graph_output() for o in n.outputs):
            graph.remove(n, safe=True)


def node_count(graph: ir.Graph) -> int:
    return sum(1 for _ in graph)


def initializer_bytes(graph: ir.Graph) -> int:
    return sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)
