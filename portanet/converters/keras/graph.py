"""Walk a Keras 3 model's layer graph and emit the IR.

The walk follows the functional graph (``_nodes_by_depth``), not a trace: every node of a
layer is converted by the layer class's handler; nested models (Sequential inside
Functional, keras.applications sub-models) are walked recursively with their inputs bound
to the outer tensors. Sequential models are walked through their functional graph.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.keras import layout, masking
from portanet.converters.keras.context import KerasContext, static_shape
from portanet.converters.keras.ops import HANDLERS
from portanet.converters.keras.trace import TfTrace, splice_tf_trace
from portanet.converters.registry import ConvertOptions
from portanet.errors import ConversionError, InvalidInputError
from portanet.ir.builder import BATCH, GraphBuilder
from portanet.ir.shapes import infer_shapes

log = logging.getLogger(__name__)

FRAMEWORK = "keras"


def has_layer_graph(model: Any) -> bool:
    """True for Functional models and built Sequential models (not for subclassed models)."""
    import keras

    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None) is not None
    return hasattr(model, "_nodes_by_depth")


def functional_of(model: Any) -> Any:
    """The functional graph behind ``model`` (Sequential models keep one once built)."""
    import keras

    if isinstance(model, keras.Sequential):
        fn = getattr(model, "_functional", None)
        if fn is None:
            raise ConversionError(
                f"Sequential model '{model.name}' is not built: give it a keras.Input so its input shape is known",
                framework=FRAMEWORK,
            )
        return fn
    if not hasattr(model, "_nodes_by_depth"):
        raise ConversionError(
            f"model '{model.name}' ({type(model).__name__}) is a subclassed keras.Model without a layer graph; "
            "pass example_inputs=... to convert it through tf2onnx, or build it with the Functional API",
            framework=FRAMEWORK,
        )
    return model


def is_model(op: Any) -> bool:
    import keras

    return isinstance(op, keras.Model)


def layer_type(op: Any) -> str:
    """The handler key of a graph operation: the Keras layer class name; raw ``keras.ops``
    calls in a functional graph are reported as ``ops.<Name>``."""
    import keras

    name = type(op).__name__
    return name if isinstance(op, keras.layers.Layer) else f"ops.{name}"


def iter_nodes(model: Any) -> Iterator[Any]:
    """The model's graph nodes in execution order (inputs first)."""
    fn = functional_of(model)
    for depth in sorted(fn._nodes_by_depth, reverse=True):
        yield from fn._nodes_by_depth[depth]


class Traces:
    """Traced calls of handler-less layers (see ``trace.py``), one per graph node, recorded
    once by the unsupported-op scan and reused by the walk."""

    def __init__(self) -> None:
        self._by_node: dict[int, Any] = {}
        self._keep: list[Any] = []
        #: handler key -> why tracing failed (reported with the unsupported types)
        self.failures: dict[str, str] = {}

    def get(self, node: Any) -> Any:
        """The node's Trace, or None when the operation has a handler (or is a layer graph)."""
        key = id(node)
        if key not in self._by_node:
            self._keep.append(node)
            self._by_node[key] = self._trace(node)
        return self._by_node[key]

    def _trace(self, node: Any) -> Any:
        from portanet.converters.keras.trace import TraceError, trace_node

        op = node.operation
        kind = layer_type(op)
        if kind in HANDLERS or kind.startswith("ops.") or (is_model(op) and has_layer_graph(op)):
            return None
        try:
            return trace_node(node)
        except TraceError as exc:
            first = exc
        try:
            # a call that leaves keras.ops (raw tf.* functions): through TensorFlow and tf2onnx
            from portanet.converters.keras.trace import trace_node_tf

            return trace_node_tf(node)
        except TraceError as exc:
            self.failures[kind] = f"{first}; {exc}"
            return None


def collect_layers(model: Any, traces: Traces | None = None) -> list[tuple[str, str]]:
    """Every (layer name, handler key) in ``model``, nested models and traced layers included."""
    traces = traces if traces is not None else Traces()
    out: list[tuple[str, str]] = []
    skip = masking.mask_nodes(model)
    for node in iter_nodes(model):
        op = node.operation
        if layer_type(op) == "InputLayer" or id(node) in skip:
            continue
        trace = traces.get(node)
        if isinstance(trace, TfTrace):
            continue  # standard ONNX ops only (checked when traced)
        if trace is not None:
            out.extend(collect_layers(trace.model, traces))
        elif is_model(op) and has_layer_graph(op):
            out.extend(collect_layers(op, traces))
        else:
            out.append((op.name, masking.refused_variant(node, layer_type(op)) or layer_type(op)))
    return out


def _history_name(tensor: Any) -> str:
    return tensor._keras_history.operation.name


def _unique_names(names: Sequence[str]) -> list[str]:
    taken: set[str] = set()
    out = []
    for n in names:
        name, i = n, 1
        while name in taken:  # never a name an earlier suffix already took (split, split_1, ...)
            name, i = f"{n}_{i}", i + 1
        taken.add(name)
        out.append(name)
    return out


def input_names(model: Any) -> list[str]:
    """IR input names: the Keras InputLayer names, in ``model.inputs`` order."""
    return _unique_names([_history_name(t) for t in functional_of(model).inputs])


def output_names(model: Any) -> list[str]:
    """IR output names: the names of the Keras layers producing ``model.outputs`` (an input
    passed straight through to an output gets ``<name>_out``)."""
    taken = set(input_names(model))
    names = [_history_name(t) for t in functional_of(model).outputs]
    return _unique_names([f"{n}_out" if n in taken else n for n in names])


def interface_perm(rank: int, nchw: bool) -> layout.Perm:
    """Layout of a graph input/output: the Keras order, or channels-first for ``--nchw``
    (tensors of rank >= 3 only)."""
    return layout.to_channels_first(rank) if nchw else layout.identity(rank)


def _np_dtype(dtype: Any) -> np.dtype:
    try:
        return np.dtype(str(dtype))
    except TypeError:
        return np.dtype(np.float32)


def _walk(ctx: KerasContext, model: Any, path: str | None, traces: Traces,
          source: tuple[str, str] | None = None) -> None:
    """Convert every node of ``model`` in execution order; nested models recursively.
    ``source`` (a traced layer's name and type) overrides the provenance of every node."""
    skip = masking.mask_nodes(model)  # compute_mask's own nodes: masks come from masking.MASK_RULES
    for node in iter_nodes(model):
        op = node.operation
        if layer_type(op) == "InputLayer" or id(node) in skip:
            continue
        ins, outs = list(node.input_tensors), list(node.output_tensors)
        trace = traces.get(node)
        if trace is not None:
            _walk_traced(ctx, node, trace, path, traces, source)
            continue
        if is_model(op):
            inner = functional_of(op)
            for inner_t, outer_t in zip(inner.inputs, ins):
                ctx.alias(inner_t, outer_t)
            _walk(ctx, op, path, traces, source)
            for outer_t, inner_t in zip(outs, inner.outputs):
                ctx.alias(outer_t, inner_t)
            continue
        kind = layer_type(op)
        ctx.node = node
        with ctx.b.layer(*(source or (op.name, kind))):
            HANDLERS.call(kind, op.name, ctx, op, ins, outs, path=path)
        masking.after_layer(ctx, op, kind, node)


def _walk_traced(ctx: KerasContext, node: Any, trace: Any, path: str | None, traces: Traces,
                 source: tuple[str, str] | None) -> None:
    """A traced layer call: its recorded graph, every node under the layer's own provenance;
    the layer's first output is the last value carrying it (what bisection compares)."""
    op = node.operation
    src = source or (op.name, layer_type(op))
    if isinstance(trace, TfTrace):
        with ctx.b.layer(*src):
            splice_tf_trace(ctx, trace, op.name)
        return
    for outer_t, inner_t in trace.bindings:
        ctx.alias(inner_t, outer_t)
    _walk(ctx, trace.model, path, traces, src)
    outs = list(node.output_tensors)
    for outer_t, inner_t in zip(outs, trace.model.outputs):
        ctx.alias(outer_t, inner_t)
    if source is None and outs:
        value, perm = ctx.get_any(outs[0])
        with ctx.b.layer(*src):
            if not ctx.b.nodes or ctx.b.nodes[-1].outputs[0] is not value:
                ctx.set(outs[0], ctx.op("Identity", [value]), perm)
            ctx.layer_perms[op.name] = perm


def convert_model(model: Any, options: ConvertOptions, *, source_files: Sequence[Any] = (),
                  path: str | None = None, graph_output_names: Sequence[str] | None = None) -> ir.Model:
    """Convert a built Keras 3 model to the IR (NCHW inside; see ``interface_perm``)."""
    import portanet.converters.keras.ops  # noqa: F401  (registers every handler family)

    fn = functional_of(model)
    traces = Traces()
    _check_supported(collect_layers(model, traces), traces, path)
    b = GraphBuilder(FRAMEWORK, name=model.name)
    ctx = KerasContext(b)
    bind_inputs(ctx, input_names(model), list(fn.inputs), options, path or model.name)
    out_names = list(graph_output_names) if graph_output_names else output_names(model)
    for name in out_names:  # reserved so that graph outputs carry exactly the Keras layer names
        b.unique_value_name(name)
    _walk(ctx, model, path, traces)
    producers = [(t._keras_history.operation.name, layer_type(t._keras_history.operation)) for t in fn.outputs]
    bind_outputs(ctx, out_names, list(fn.outputs), producers, bool(options.nchw))
    return finish(ctx, options, source_files)


def bind_inputs(ctx: KerasContext, in_names: Sequence[str], tensors: Sequence[Any], options: ConvertOptions,
                label: str) -> None:
    """A graph input per Keras input tensor, in the interface layout (``--nchw``), with the
    ``--input-shape`` overrides and the symbolic batch applied."""
    b = ctx.b
    nchw = bool(options.nchw)
    overrides = dict(options.input_shapes)
    if "" in overrides:
        if len(in_names) != 1:
            raise InvalidInputError(f"{label}: --input-shape without a name needs a single-input "
                                    f"model; inputs: {', '.join(in_names)}")
        overrides[in_names[0]] = overrides.pop("")
    unknown = sorted(set(overrides) - set(in_names))
    if unknown:
        raise InvalidInputError(f"{label}: no input named {', '.join(unknown)}; "
                                f"inputs: {', '.join(in_names)}")
    for name, t in zip(in_names, tensors):
        shape = static_shape(t)
        perm = interface_perm(len(shape), nchw)
        dims: list[int | str | None] = [shape[p] for p in perm]
        dims[0] = dims[0] if dims[0] is not None and not options.dynamic_batch else BATCH
        if name in overrides:
            want = overrides[name]
            if len(want) != len(dims):
                raise InvalidInputError(f"{label}: input '{name}' has rank {len(dims)}, "
                                        f"--input-shape gives {len(want)} dims")
            dims = list(want)
        value = b.add_input(name, dims, _np_dtype(t.dtype))
        ctx.set(t, value, perm)


def bind_outputs(ctx: KerasContext, out_names: Sequence[str], tensors: Sequence[Any],
                 producers: Sequence[tuple[str, str]], nchw: bool) -> None:
    """The graph outputs, in the interface layout, named ``out_names``; ``producers`` are the
    (layer name, layer type) producing each tensor (the provenance of an added Transpose)."""
    b = ctx.b
    for name, t, (op_name, op_type) in zip(out_names, tensors, producers):
        perm = interface_perm(len(t.shape), nchw)
        with b.layer(op_name, op_type):
            value = ctx.get(t, perm)
            if value in b.inputs or value in b.outputs or value.const_value is not None:
                value = b.op("Identity", [value])
            ctx.layer_perms[op_name] = perm
        value.name = name
        b.outputs.append(value)


def finish(ctx: KerasContext, options: ConvertOptions, source_files: Sequence[Any]) -> ir.Model:
    """The IR model with portanet's metadata (and the layouts bisection needs), shapes inferred."""
    extra = {"portanet.keras.layouts": _layouts_json(ctx.layer_perms)}
    model_ir = ctx.b.build(source_files=source_files, options=options.as_metadata(), extra_metadata=extra,
                           infer=False)
    return infer_shapes(model_ir)


def _check_supported(layers: list[tuple[str, str]], traces: Traces, path: str | None) -> None:
    for kind, why in traces.failures.items():
        log.info("keras layer type %s has no handler and %s", kind, why)
    HANDLERS.check_supported(layers, path=path)


def _layouts_json(perms: dict[str, layout.Perm]) -> str:
    import json

    # only non-trivial layouts are recorded: the reference runner uses them to hand back
    # intermediate layer outputs in the IR's layout
    return json.dumps({k: list(v) for k, v in perms.items() if not layout.is_identity(v)}, sort_keys=True)
