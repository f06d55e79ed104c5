"""GraphBuilder: what every importer uses to emit the shared IR.

The IR is an ``onnx_ir.Model`` in the default ONNX domain at the canonical opset. The builder
adds nodes with provenance (the source layer's name and type in node metadata), turns numpy
arrays into initializers, keeps value and node names unique, and gives graph inputs a
symbolic batch dimension.

Usage::

    b = GraphBuilder("caffe", name="lenet")
    x = b.add_input("data", [BATCH, 1, 28, 28])
    with b.layer("conv1", "Convolution"):
        w = b.initializer("conv1_w", weights)          # float32 -> a trainable parameter
        y = b.op("Conv", [x, w], {"kernel_shape": [5, 5]}, outputs=["conv1"])
    b.add_output(y)
    model = b.build(source_files=[prototxt, caffemodel], options={"input_shape": None})
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.ir.arrays import contiguous
from portanet.ir.metadata import set_model_metadata
from portanet.ir.provenance import SOURCE_KEY, SOURCE_TYPE_KEY

#: the opset every importer targets; export may convert to 13..21
CANONICAL_OPSET = 18
#: ONNX IR version written (node metadata_props need IR >= 10)
IR_VERSION = 10
#: name of the symbolic batch dimension of graph inputs
BATCH = "N"
#: name of the symbolic time axis of sequence inputs (recurrent models)
TIME = "T"

Dim = int | str | None

_NP_TO_IR = {
    np.dtype(np.float32): ir.DataType.FLOAT,
    np.dtype(np.float16): ir.DataType.FLOAT16,
    np.dtype(np.float64): ir.DataType.DOUBLE,
    np.dtype(np.int64): ir.DataType.INT64,
    np.dtype(np.int32): ir.DataType.INT32,
    np.dtype(np.int8): ir.DataType.INT8,
    np.dtype(np.uint8): ir.DataType.UINT8,
    np.dtype(np.bool_): ir.DataType.BOOL,
}


def ir_dtype(dtype: Any) -> ir.DataType:
    """numpy dtype (or anything np.dtype accepts) -> ir.DataType."""
    if isinstance(dtype, ir.DataType):
        return dtype
    return _NP_TO_IR[np.dtype(dtype)]


def make_shape(dims: Sequence[Dim] | None) -> ir.Shape | None:
    """A list of ints / symbolic names / None (unknown) -> ir.Shape."""
    if dims is None:
        return None
    return ir.Shape([d if isinstance(d, int) else (ir.SymbolicDim(d)) for d in dims])


class GraphBuilder:
    """Incrementally builds one IR graph with provenance and unique names."""

    def __init__(self, framework: str, *, name: str = "main_graph", opset: int = CANONICAL_OPSET) -> None:
        self.framework = framework
        self.name = name
        self.opset = opset
        self.inputs: list[ir.Value] = []
        self.outputs: list[ir.Value] = []
        self.nodes: list[ir.Node] = []
        self.initializers: list[ir.Value] = []
        self._value_names: set[str] = set()
        self._node_names: set[str] = set()
        self._layer: tuple[str, str] | None = None
        self._const_cache: dict[tuple[bytes, str, tuple[int, ...]], ir.Value] = {}

    # -- naming ---------------------------------------------------------------------------
    def unique_value_name(self, hint: str) -> str:
        """``hint`` if unused, else ``hint_1``, ``hint_2``, ..."""
        return _unique(hint or "v", self._value_names)

    def unique_node_name(self, hint: str) -> str:
        return _unique(hint or "node", self._node_names)

    # -- provenance -----------------------------------------------------------------------
    @contextlib.contextmanager
    def layer(self, name: str, layer_type: str) -> Iterator[None]:
        """Nodes added inside this block carry ``name``/``layer_type`` as provenance."""
        saved = self._layer
        self._layer = (name, layer_type)
        try:
            yield
        finally:
            self._layer = saved

    @property
    def current_layer(self) -> tuple[str, str] | None:
        return self._layer

    # -- graph pieces ---------------------------------------------------------------------
    def add_input(self, name: str, shape: Sequence[Dim] | None, dtype: Any = np.float32) -> ir.Value:
        """Declare a graph input. Use ``BATCH`` (``"N"``) for the symbolic batch dimension."""
        value = ir.Value(
            name=self.unique_value_name(name),
            shape=make_shape(shape),
            type=ir.TensorType(ir_dtype(dtype)),
        )
        self.inputs.append(value)
        return value

    def initializer(self, name: str, array: np.ndarray | Any, dtype: Any = None) -> ir.Value:
        """Add ``array`` as an initializer. Float initializers are trainable parameters."""
        arr = np.asarray(array, dtype=dtype) if dtype is not None else np.asarray(array)
        if arr.dtype == np.float64 and dtype is None:
            arr = arr.astype(np.float32)
        arr = contiguous(arr).reshape(arr.shape)  # ascontiguousarray makes 0-d arrays 1-d
        vname = self.unique_value_name(name)
        value = ir.Value(
            name=vname,
            shape=ir.Shape(arr.shape),
            type=ir.TensorType(ir_dtype(arr.dtype)),
            const_value=ir.tensor(arr, name=vname),
        )
        self.initializers.append(value)
        return value

    def const(self, array: Any, dtype: Any = None, name: str = "const") -> ir.Value:
        """A small constant (shapes, axes, scalars) as an initializer, de-duplicated."""
        arr = np.asarray(array, dtype=dtype) if dtype is not None else np.asarray(array)
        if arr.dtype == np.float64 and dtype is None:
            arr = arr.astype(np.float32)
        key = (arr.tobytes(), arr.dtype.str, arr.shape)
        if key not in self._const_cache:
            self._const_cache[key] = self.initializer(name, arr)
        return self._const_cache[key]

    def op(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        attributes: Mapping[str, Any] | None = None,
        *,
        outputs: int | Sequence[str] = 1,
        name: str | None = None,
        domain: str = "",
    ) -> Any:
        """Append a node; returns its output Value (or a tuple when it has several).

        ``outputs`` is a count or a list of preferred output names (kept if unique).
        The node's name defaults to the current layer's name.
        """
        layer_name = self._layer[0] if self._layer else None
        node_name = self.unique_node_name(name or layer_name or op_type)
        if isinstance(outputs, int):
            base = layer_name or node_name
            out_names = [base] if outputs == 1 else [f"{base}_{i}" for i in range(outputs)]
        else:
            out_names = list(outputs)
        out_values = [ir.Value(name=self.unique_value_name(n)) for n in out_names]
        attrs = ir.convenience.convert_attributes(
            {k: v for k, v in (attributes or {}).items() if v is not None}
        )
        meta: dict[str, str] = {}
        if self._layer is not None:
            meta = {SOURCE_KEY: self._layer[0], SOURCE_TYPE_KEY: self._layer[1]}
        node = ir.Node(
            domain,
            op_type,
            list(inputs),
            attrs,
            outputs=out_values,
            name=node_name,
            metadata_props=meta,
        )
        self.nodes.append(node)
        return out_values[0] if len(out_values) == 1 else tuple(out_values)

    def add_output(self, value: ir.Value, name: str | None = None) -> ir.Value:
        """Mark ``value`` as a graph output (an Identity is inserted where ONNX needs one)."""
        needs_identity = value in self.inputs or value.const_value is not None or value in self.outputs
        if needs_identity or (name is not None and name != value.name):
            if name is not None and not needs_identity:
                # rename the producing value instead of adding a node, when the name is free
                if name not in self._value_names:
                    self._value_names.discard(value.name or "")
                    value.name = name
                    self._value_names.add(name)
                    self.outputs.append(value)
                    return value
            value = self.op("Identity", [value], outputs=[name or f"{value.name}_out"])
        self.outputs.append(value)
        return value

    def build(
        self,
        *,
        source_files: Sequence[Any] = (),
        options: Mapping[str, Any] | None = None,
        extra_metadata: Mapping[str, str] | None = None,
        infer: bool = True,
    ) -> ir.Model:
        """Assemble the ``ir.Model`` with portanet's model metadata; ``infer`` runs ONNX
        shape inference so every value (and every output) carries its type and shape."""
        graph = ir.Graph(
            self.inputs,
            self.outputs,
            nodes=self.nodes,
            initializers=self.initializers,
            opset_imports={"": self.opset},
            name=self.name,
        )
        model = new_model(graph)
        if infer:
            from portanet.ir.shapes import infer_shapes

            model = infer_shapes(model)
        for v in model.graph.outputs:  # ONNX requires a type on every graph output
            if v.type is None:
                v.type = ir.TensorType(ir.DataType.FLOAT)
        set_model_metadata(
            model,
            framework=self.framework,
            source_files=source_files,
            options=options,
            extra=extra_metadata,
        )
        return model


def graphs_of(attr: ir.Attr) -> list[ir.Graph]:
    """The subgraphs an attribute holds (If branches, Loop/Scan bodies); [] for other attributes."""
    if attr.type == ir.AttributeType.GRAPH:
        return [attr.value]
    if attr.type == ir.AttributeType.GRAPHS:
        return list(attr.value)
    return []


def new_model(graph: ir.Graph) -> ir.Model:
    """Wrap a graph in an ``ir.Model`` with portanet's producer fields."""
    from portanet import __version__

    return ir.Model(graph, ir_version=IR_VERSION, producer_name="portanet", producer_version=__version__)


def _unique(hint: str, used: set[str]) -> str:
    name = hint
    i = 1
    while name in used:
        name = f"{hint}_{i}"
        i += 1
    used.add(name)
    return name


class SubgraphBuilder(GraphBuilder):
    """Builds the body graph of a control-flow node (``Scan``, ``Loop``, ``If``) with the same
    calls as the main graph's builder, so an importer's op handlers can emit into a body.

    Value and node names are shared with (unique across) the parent: ONNX forbids a subgraph
    value shadowing an outer one. Initializers and constants go to the *parent* graph and
    the body reads them as outer-scope values (every runtime supports that, and the weights
    stay trainable parameters of the main graph). Body inputs are declared with
    ``add_input``, body outputs with ``add_output``; ``graph()`` returns the ``ir.Graph`` to
    put in the control-flow node's attribute::

        body = SubgraphBuilder(b, name="loop_step")
        h = body.add_input("h_prev", [BATCH, 8])
        x_t = body.add_input("x_t", [BATCH, 4])
        with body.layer("cell", "LSTM"):
            h_new = body.op("Tanh", [body.op("Add", [h, x_t])])
        body.add_output(h_new)
        b.op("Scan", [h0, x], {"body": ir.AttrGraph("body", body.graph()), "num_scan_inputs": 1}, outputs=1)
    """

    def __init__(self, parent: GraphBuilder, *, name: str = "body") -> None:
        super().__init__(parent.framework, name=parent.unique_value_name(name), opset=parent.opset)
        self.parent = parent
        self._value_names = parent._value_names
        self._node_names = parent._node_names
        self._layer = parent.current_layer

    def initializer(self, name: str, array: np.ndarray | Any, dtype: Any = None) -> ir.Value:
        """Stored in the parent graph; the body reads it as an outer-scope value."""
        return self.parent.initializer(name, array, dtype)

    def const(self, array: Any, dtype: Any = None, name: str = "const") -> ir.Value:
        return self.parent.const(array, dtype, name)

    def add_output(self, value: ir.Value, name: str | None = None) -> ir.Value:
        """Mark ``value`` as a body output. A body output that is not computed by a body node
        (a body input, an outer value, a repeated output) goes through an Identity."""
        produced = value.producer() is not None and value.producer() in self.nodes
        if not produced or value in self.outputs:
            value = self.op("Identity", [value], outputs=[name or f"{value.name}_out"])
        self.outputs.append(value)
        return value

    def graph(self) -> ir.Graph:
        """The body graph (no initializers of its own, no opset imports: it inherits them)."""
        return ir.Graph(self.inputs, self.outputs, nodes=self.nodes, name=self.name)
