"""Conversion state shared by the MXNet op handlers.

``Converter`` walks the symbol graph; for each op node it builds a ``NodeCtx`` and calls the
node's handler, which reads attributes through ``ctx.attrs``, fetches its inputs with
``ctx.input(i)`` (data: a graph input or an earlier op's output) or ``ctx.weight(i)`` (must
be in the ``.params`` file), emits IR nodes with ``ctx.op`` and returns its output value(s).

Static shapes, where a handler needs them (rank of a tensor, a Crop or Deconvolution
``target_shape`` size), come from ONNX shape inference over the part of the graph built so
far (weights replaced by typed placeholders), run on demand and cached.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from portanet.converters.mxnet.symbol import Attrs, MxNode, MxSymbol
from portanet.errors import ConversionError, InvalidInputError
from portanet.ir.builder import BATCH, GraphBuilder

log = logging.getLogger(__name__)

Dims = list[int | str | None]

#: ops whose output has their input's shape (looked through when guessing an input's rank)
_SHAPE_PRESERVING = {
    "BatchNorm", "InstanceNorm", "Activation", "LeakyReLU", "Dropout", "_copy", "identity", "BlockGrad",
    "clip", "Cast", "relu", "sigmoid", "tanh",
}

#: initializers up to this many elements are given to partial shape inference with their
#: values (shape vectors, axes, scalars); larger ones as typed placeholders
_SMALL_CONST = 4096


class Converter:
    """Holds the builder, the parsed symbol, the weights and the entry -> IR value map."""

    def __init__(
        self,
        symbol: MxSymbol,
        params: dict[str, np.ndarray],
        builder: GraphBuilder,
        *,
        input_shapes: dict[str, list[int | str]] | None = None,
        dynamic_batch: bool = True,
        params_path: str = "",
    ) -> None:
        self.symbol = symbol
        self.params = params
        self.b = builder
        self.input_shapes = dict(input_shapes or {})
        self.dynamic_batch = dynamic_batch
        self.params_path = params_path
        #: (node index, output index) -> IR value
        self.values: dict[tuple[int, int], ir.Value] = {}
        self._vars: dict[str, ir.Value] = {}
        self._dims_cache: dict[str, Dims | None] = {}
        self._dims_nodes = -1
        self._dtype_cache: dict[str, np.dtype] = {}
        self._shape_values: dict[int, ir.Value] = {}
        #: names of variables that became graph inputs, and of used weights
        self.used_params: set[str] = set()

    # -- variables -------------------------------------------------------------------------
    def variable(self, node: MxNode, consumer: MxNode | None = None, *, weight: bool = False,
                 aux: bool = False) -> ir.Value:
        """The IR value of variable ``node``: an initializer if it is in the params file,
        else (for data positions) a graph input."""
        # variables are identified by name: a file may hold several nodes of one variable
        if node.name in self._vars:
            return self._vars[node.name]
        if node.name in self.params:
            value = self.b.initializer(node.name, self.params[node.name])
            self.used_params.add(node.name)
        elif weight:
            prefix = "aux" if aux else "arg"
            where = f"file {self.params_path}" if self.params_path else "params file"
            raise ConversionError(
                f"the {where} has no '{prefix}:{node.name}', a weight this layer needs "
                f"(expected a variable named '{node.name}')"
            )
        else:
            value = self.b.add_input(node.name, self._input_shape(node, consumer))
        self._vars[node.name] = value
        return value

    def _input_shape(self, node: MxNode, consumer: MxNode | None) -> list[int | str]:
        given = self.input_shapes.get(node.name)
        if given is None and "" in self.input_shapes:
            # a shape without a name is for a single-input model only
            data_vars = {n.name for n in self.symbol.nodes
                         if n.is_variable and n.name not in self.params and not n.name.endswith("_label")}
            if len(data_vars) != 1:
                raise InvalidInputError(
                    f"--input-shape without a name needs a single-input model; inputs: {', '.join(sorted(data_vars))}"
                )
            given = self.input_shapes[""]
        if given is None and node.shape and all(d > 0 for d in node.shape):
            given = list(node.shape)
        if given is not None:
            dims = list(given)
            if self.dynamic_batch and dims and isinstance(dims[0], int):
                dims[0] = BATCH
            return dims
        guess = self._guess_shape(node, consumer)
        if guess is None:
            raise InvalidInputError(
                f"{self.symbol.path}: the shape of input '{node.name}' cannot be told from the symbol "
                f"(its first consumer is {consumer.op if consumer else 'none'}); "
                f"pass it with --input-shape {node.name}=1x3x224x224 (your sizes)"
            )
        return guess

    def _guess_shape(self, node: MxNode, consumer: MxNode | None) -> list[int | str] | None:
        """Rank (and channels) of a data input, when no shape is given: convolution-like ops
        tell the rank by their kernel and the channels by their weight; shape-preserving ops
        in front of them (a BatchNorm on the raw input, scaling) are looked through."""
        consumers = self.symbol.consumers()
        seen = 0
        while consumer is not None and seen < 16:
            seen += 1
            guess = self._shape_from_consumer(node, consumer)
            if guess is not None:
                return guess
            if not (consumer.op in _SHAPE_PRESERVING or "scalar" in consumer.op.lower()):
                return None
            nxt = consumers.get(consumer.index)
            consumer = nxt[0][0] if nxt and nxt[0][1] == 0 else None
        return None

    def _shape_from_consumer(self, node: MxNode, consumer: MxNode) -> list[int | str] | None:
        a = consumer.attrs
        spatial_names = {1: ["W"], 2: ["H", "W"], 3: ["D", "H", "W"]}
        if consumer.op in ("Convolution", "Deconvolution", "Pooling") and not a.bool("global_pool"):
            kernel = a.tuple("kernel", ())
            if not kernel or len(kernel) not in spatial_names:
                return None
            channels: int | str = "C"
            if consumer.op != "Pooling" and len(consumer.inputs) > 1:
                wnode = self.symbol.nodes[consumer.inputs[1][0]]
                w = self.params.get(wnode.name)
                if w is not None and w.ndim == len(kernel) + 2:
                    channels = int(w.shape[1]) * a.int("num_group", 1) if consumer.op == "Convolution" else int(w.shape[0])
            return [BATCH, channels, *(f"{node.name}_{s}" for s in spatial_names[len(kernel)])]
        if consumer.op == "FullyConnected" and a.bool("flatten", True) and len(consumer.inputs) > 1:
            w = self.params.get(self.symbol.nodes[consumer.inputs[1][0]].name)
            if w is not None and w.ndim == 2:
                return [BATCH, int(w.shape[1])]
        return None

    # -- shapes ----------------------------------------------------------------------------
    def dims(self, value: ir.Value) -> Dims | None:
        """Static dims of ``value`` (ints, symbolic names, None) or None if the rank is unknown."""
        if value.const_value is not None:
            return list(value.const_value.shape)
        if value in self.b.inputs:
            return [d if isinstance(d, int) else getattr(d, "value", None) for d in value.shape] if value.shape else None
        if len(self.b.nodes) != self._dims_nodes:
            self._dims_cache = self._infer_partial()
            self._dims_nodes = len(self.b.nodes)
        return self._dims_cache.get(value.name or "")

    def dtype(self, value: ir.Value) -> np.dtype:
        """numpy dtype of ``value`` (float32 when inference cannot tell)."""
        if value.dtype is not None:
            return np.dtype(value.dtype.numpy())
        self.dims(value)
        return self._dtype_cache.get(value.name or "", np.dtype(np.float32))

    def _infer_partial(self) -> dict[str, Dims | None]:
        inputs = [ir.serde.serialize_value(v) for v in self.b.inputs]
        inits = []
        for v in self.b.initializers:
            t = v.const_value
            if t is not None and t.size <= _SMALL_CONST:
                inits.append(ir.serde.serialize_tensor(t))
            else:
                inputs.append(ir.serde.serialize_value(v))
        nodes = [ir.serde.serialize_node(n) for n in self.b.nodes]
        graph = onnx.helper.make_graph(nodes, "partial", inputs, [], initializer=inits)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", self.b.opset)])
        model.ir_version = 10
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception as exc:  # noqa: BLE001 - onnx raises several internal types
            log.debug("partial shape inference failed: %s", exc)
            inferred = model
        out: dict[str, Dims | None] = {}
        self._dtype_cache = {}
        for vi in [*inferred.graph.value_info, *inferred.graph.input]:
            tt = vi.type.tensor_type
            if tt.elem_type:
                self._dtype_cache[vi.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
            if not tt.HasField("shape"):
                out[vi.name] = None
                continue
            out[vi.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
            ]
        return out

    def annotate(self, model: ir.Model) -> None:
        """Set every node output's type and shape from ONNX shape inference run on the graph
        without its weight data (inference over the full model would copy every weight
        several times through protobuf)."""
        self._dims_nodes = -1
        dims = self._infer_partial()
        for node in model.graph:
            for v in node.outputs:
                name = v.name or ""
                if name in self._dtype_cache:
                    v.type = ir.TensorType(ir.DataType.from_numpy(self._dtype_cache[name]))
                d = dims.get(name)
                if d is not None:
                    v.shape = ir.Shape([x if isinstance(x, int) else ir.SymbolicDim(x) for x in d])

    def shape_value(self, value: ir.Value) -> ir.Value:
        """An ONNX ``Shape`` of ``value`` (int64 1-D), emitted once per value."""
        key = id(value)
        if key not in self._shape_values:
            self._shape_values[key] = self.b.op("Shape", [value], outputs=[f"{value.name}_shape"])
        return self._shape_values[key]


class NodeCtx:
    """What a handler sees of one MXNet op node."""

    def __init__(self, conv: Converter, node: MxNode) -> None:
        self.conv = conv
        self.node = node
        self.b = conv.b
        self.attrs: Attrs = node.attrs

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def n_inputs(self) -> int:
        return len(self.node.inputs)

    def _entry(self, i: int) -> tuple[int, int]:
        if i >= len(self.node.inputs):
            raise ConversionError(f"expected at least {i + 1} inputs, received {len(self.node.inputs)}")
        return self.node.inputs[i]

    def input(self, i: int) -> ir.Value:
        """Input ``i`` as data: an op output, a graph input or a stored array."""
        src, idx = self._entry(i)
        src_node = self.conv.symbol.nodes[src]
        if src_node.is_variable:
            return self.conv.variable(src_node, self.node)
        key = (src, idx)
        if key not in self.conv.values:
            raise ConversionError(
                f"input {i} refers to output {idx} of '{src_node.name}' ({src_node.op}), which does not exist"
            )
        return self.conv.values[key]

    def inputs(self) -> list[ir.Value]:
        return [self.input(i) for i in range(self.n_inputs)]

    def weight(self, i: int, *, aux: bool = False) -> ir.Value:
        """Input ``i`` as a weight: it must be a variable stored in the params file."""
        src, _ = self._entry(i)
        src_node = self.conv.symbol.nodes[src]
        if not src_node.is_variable:
            return self.input(i)  # a computed weight (e.g. a shared, transformed tensor)
        return self.conv.variable(src_node, self.node, weight=True, aux=aux)

    def array(self, i: int) -> np.ndarray | None:
        """The stored array of input ``i`` if it is a variable in the params file."""
        src, _ = self._entry(i)
        src_node = self.conv.symbol.nodes[src]
        if src_node.is_variable:
            return self.conv.params.get(src_node.name)
        return None

    def input_name(self, i: int) -> str:
        return self.conv.symbol.nodes[self._entry(i)[0]].name

    # -- emitting --------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[ir.Value | None], attributes: dict[str, Any] | None = None,
           *, outputs: int | Sequence[str] = 1) -> Any:
        return self.b.op(op_type, inputs, attributes, outputs=outputs)

    def const(self, array: Any, dtype: Any = None) -> ir.Value:
        return self.b.const(array, dtype=dtype, name=f"{self.name}_const")

    def ints(self, values: Sequence[int]) -> ir.Value:
        """A 1-D int64 constant (axes, shapes, starts)."""
        return self.b.const(np.asarray(list(values), dtype=np.int64), name=f"{self.name}_i64")

    def scalar(self, value: float, like: ir.Value) -> ir.Value:
        """A 0-d constant with the dtype of ``like``."""
        return self.b.const(np.asarray(value, dtype=self.conv.dtype(like)), name=f"{self.name}_scalar")

    def dims(self, value: ir.Value) -> Dims | None:
        return self.conv.dims(value)

    def rank(self, value: ir.Value) -> int:
        d = self.conv.dims(value)
        if d is None:
            raise ConversionError(
                "cannot determine the rank of the input; give the graph input's shape with --input-shape"
            )
        return len(d)

    def static_dims(self, value: ir.Value, axes: Sequence[int], why: str) -> list[int]:
        d = self.conv.dims(value)
        out = []
        for ax in axes:
            if d is None or ax >= len(d) or not isinstance(d[ax], int):
                raise ConversionError(
                    f"{why} needs static sizes of input dims {list(axes)}, received shape {d}; "
                    "give the input's shape with --input-shape"
                )
            out.append(d[ax])
        return out

    def dim(self, value: ir.Value, axis: int) -> ir.Value:
        """Dim ``axis`` of ``value`` as a 1-element int64 tensor: a constant when static."""
        d = self.conv.dims(value)
        if d is not None and axis < len(d) and isinstance(d[axis], int):
            return self.ints([d[axis]])
        shape = self.conv.shape_value(value)
        return self.op("Slice", [shape, self.ints([axis]), self.ints([axis + 1])])

    def warn(self, message: str) -> None:
        log.warning("mxnet layer '%s' (%s): %s", self.name, self.node.op, message)
