"""Layers without a handler, traced through Keras' own op-level symbolic execution.

A user's ``Layer`` subclass, keras.applications' ``LayerScale``/``CustomScaleLayer``, a
``Lambda`` or a subclassed ``keras.Model`` has no layer graph to walk. Calling its ``call``
directly on fresh symbolic inputs makes Keras record every ``keras.ops`` call and every
sub-layer call as graph nodes; those nodes form a Functional model the importer walks like
any other (raw ops through ``ops/keras_ops.py``, sub-layers through their handlers, and
handler-less sub-layers traced again). The layer's variables appear as arguments of the
recorded ops and become (trainable) initializers.

A ``call`` that leaves Keras (a raw TensorFlow function on a symbolic tensor) cannot be
traced this way; it is traced as a ``tf.function`` on the node's input specs instead and
converted with tf2onnx (Keras order, channels-last), then spliced into the IR with its
weights as initializers. A call neither way converts is reported as unsupported.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Trace:
    """The Functional model recorded from one call of a layer, and how it binds to the call."""

    model: Any
    #: (outer tensor of the call, inner input tensor) pairs
    bindings: list[tuple[Any, Any]] = field(default_factory=list)


class TraceError(Exception):
    """The layer's ``call`` cannot be recorded with keras.ops (the reason is the message)."""


def _symbolic_inputs(args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any], list[tuple[Any, Any]]]:
    """The call's arguments with every Keras tensor replaced by a fresh ``keras.Input``."""
    import keras
    from keras import tree

    bindings: list[tuple[Any, Any]] = []

    def fresh(x: Any) -> Any:
        if isinstance(x, keras.KerasTensor):
            inner = keras.Input(batch_shape=x.shape, dtype=x.dtype)
            bindings.append((x, inner))
            return inner
        return x

    return tree.map_structure(fresh, args), tree.map_structure(fresh, kwargs), bindings


def _call_kwargs(layer: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Inference mode for layers whose ``call`` takes ``training``."""
    try:
        params = inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return kwargs
    if "training" in params and "training" not in kwargs:
        return {**kwargs, "training": False}
    return kwargs


def trace_call(layer: Any, args: tuple, kwargs: dict[str, Any]) -> Trace:
    """Record ``layer.call(*args, **kwargs)`` (symbolic Keras tensors) as a Functional model."""
    import keras
    from keras import tree

    new_args, new_kwargs, bindings = _symbolic_inputs(args, kwargs)
    if not bindings:
        raise TraceError("the call has no tensor inputs")
    try:
        out = layer.call(*new_args, **_call_kwargs(layer, new_kwargs))
    except Exception as exc:  # noqa: BLE001 - any failure means "not traceable with keras.ops"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"its call cannot be traced with keras.ops ({type(exc).__name__}: {first})") from exc
    outputs = tree.flatten(out)
    if not outputs or not all(isinstance(o, keras.KerasTensor) for o in outputs):
        raise TraceError("its call does not return Keras tensors")
    inputs = [inner for _, inner in bindings]
    try:
        model = keras.Model(inputs, outputs, name=f"{layer.name}_traced")
    except Exception as exc:  # noqa: BLE001
        raise TraceError(f"its traced graph is not a valid Keras graph ({type(exc).__name__}: {exc})") from exc
    log.debug("traced %s (%s): %d nodes", layer.name, type(layer).__name__,
              sum(len(v) for v in model._nodes_by_depth.values()))
    return Trace(model, bindings)


def trace_node(node: Any) -> Trace:
    """Trace one call (graph node) of a handler-less layer with that node's arguments."""
    return trace_call(node.operation, tuple(node.arguments.args), dict(node.arguments.kwargs))


def trace_model(model: Any, input_specs: list[tuple[str, tuple[int | None, ...], str]]) -> Any:
    """A subclassed ``keras.Model`` recorded as a Functional model with inputs of the given
    (name, batch shape, dtype); the outer model's name is kept."""
    import keras
    from keras import tree

    inputs = [keras.Input(batch_shape=shape, dtype=dtype, name=name) for name, shape, dtype in input_specs]
    arg = inputs[0] if len(inputs) == 1 else inputs
    try:
        out = model.call(arg, **_call_kwargs(model, {}))
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"its call cannot be traced with keras.ops ({type(exc).__name__}: {first})") from exc
    outputs = tree.flatten(out)
    if not outputs or not all(isinstance(o, keras.KerasTensor) for o in outputs):
        raise TraceError("its call does not return Keras tensors")
    return keras.Model(arg, out, name=model.name)


def subclassed_input_specs(model: Any, options: Any, path: str | None) -> list[tuple[str, tuple[int | None, ...],
                                                                                   str]]:
    """(name, Keras-order batch shape with a free batch, dtype) of each input of a subclassed
    model: from ``--input-shape`` (in the interface layout: NCHW with ``nchw``), else
    ``example_inputs`` (Keras-order arrays), else the shapes the model was built with."""
    import numpy as np

    from portanet.converters.keras import layout
    from portanet.errors import InvalidInputError

    def keras_order(dims: list[Any], interface: bool = True) -> tuple[int | None, ...]:
        dims = [d if isinstance(d, int) else None for d in dims]
        if interface and options.nchw and len(dims) >= 3:  # (N, C, *spatial) -> (N, *spatial, C)
            perm = layout.inverse(layout.to_channels_first(len(dims)))
            dims = [dims[p] for p in perm]
        return (None, *dims[1:])

    if options.input_shapes:
        return [(name or "input", keras_order(list(dims)), "float32") for name, dims in options.input_shapes.items()]
    if options.example_inputs is not None:
        examples = options.example_inputs if isinstance(options.example_inputs, list | tuple) \
            else [options.example_inputs]
        out = []
        for i, e in enumerate(examples):
            a = np.asarray(e)
            out.append((f"input_{i}" if len(examples) > 1 else "input", keras_order(list(a.shape), False),
                        str(a.dtype)))
        return out
    shapes = list((getattr(model, "_build_shapes_dict", None) or {}).values())
    if len(shapes) == 1 and isinstance(shapes[0], list | tuple) and shapes[0] and isinstance(shapes[0][0],
                                                                                          list | tuple):
        shapes = list(shapes[0])  # one argument holding several inputs
    if shapes and all(isinstance(s, list | tuple) for s in shapes):
        names = ["input"] if len(shapes) == 1 else [f"input_{i}" for i in range(len(shapes))]
        return [(n, (None, *[d if isinstance(d, int) else None for d in s[1:]]), "float32")
                for n, s in zip(names, shapes)]
    raise InvalidInputError(f"{path or model.name}: subclassed model '{model.name}' ({type(model).__name__}) has no "
                            "known input shape; pass --input-shape (e.g. 1x32x32x3) or example_inputs=...")


@dataclass
class TfTrace:
    """A layer call converted through TensorFlow and tf2onnx: an ONNX graph (Keras order,
    channels-last) whose inputs are the call's tensors in order and whose outputs are the
    call's outputs. Its initializers are the layer's weights."""

    model: Any
    inputs: list[Any]
    outputs: list[Any]


def trace_node_tf(node: Any) -> TfTrace:
    """A handler-less layer whose ``call`` leaves keras.ops (raw ``tf.*`` functions): trace it
    as a ``tf.function`` on this node's input specs and convert it with tf2onnx."""
    import keras
    from keras import tree

    if keras.backend.backend() != "tensorflow":
        raise TraceError("its call uses TensorFlow and Keras is not running on TensorFlow")
    import onnx_ir as ir
    import tensorflow as tf
    import tf2onnx

    from portanet.ir.builder import CANONICAL_OPSET

    layer = node.operation
    ins = list(node.input_tensors)
    args, kwargs = tuple(node.arguments.args), dict(node.arguments.kwargs)
    specs = [tf.TensorSpec(t.shape, t.dtype, name=f"in_{i}") for i, t in enumerate(ins)]
    ids = {id(t): i for i, t in enumerate(ins)}

    @tf.function(input_signature=specs)
    def call(*xs: Any) -> Any:
        bind = lambda v: xs[ids[id(v)]] if isinstance(v, keras.KerasTensor) else v  # noqa: E731
        out = layer.call(*tree.map_structure(bind, args), **_call_kwargs(layer, tree.map_structure(bind, kwargs)))
        return tree.flatten(out)

    quiet = logging.getLogger("tf2onnx")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its errors about unsupported ops become our one-line report
    try:
        proto, _ = tf2onnx.convert.from_function(call, input_signature=specs, opset=CANONICAL_OPSET)
    except Exception as exc:  # noqa: BLE001 - TensorFlow/tf2onnx raise anything
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise TraceError(f"tf2onnx cannot convert its call ({type(exc).__name__}: {lines[-1] if lines else ''})") \
            from exc
    finally:
        quiet.setLevel(level)
    model = ir.serde.deserialize_model(proto)
    import onnx

    # tf2onnx keeps ops it cannot convert under their TensorFlow names (e.g. PyFunc)
    custom = sorted({n.op_type for n in model.graph
                     if n.domain not in ("", "ai.onnx") or not onnx.defs.has(n.op_type)})
    if custom:
        raise TraceError(f"tf2onnx cannot convert TensorFlow op(s) {', '.join(custom)} of its call")
    flow = sorted({n.op_type for n in model.graph
                   if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in n.attributes.values())})
    if flow:
        raise TraceError(f"its TensorFlow graph has control flow ({', '.join(flow)})")
    return TfTrace(model, ins, list(node.output_tensors))


def splice_tf_trace(ctx: Any, trace: TfTrace, layer_name: str) -> None:
    """Copy the tf2onnx graph into the IR under the current provenance: inputs bound to the
    call's tensors in the Keras order, initializers added as (trainable) weights."""
    graph = trace.model.graph
    mapping: dict[int, Any] = {}
    for v, t in zip(graph.inputs, trace.inputs):
        mapping[id(v)] = ctx.get(t)
    for name, v in graph.initializers.items():
        mapping[id(v)] = ctx.b.initializer(f"{layer_name}/{name.split('/')[-1]}", v.const_value.numpy())
    for n in graph:
        ins = [mapping[id(i)] if i is not None else None for i in n.inputs]
        attrs = {k: a.value for k, a in n.attributes.items()}
        outs = ctx.op(n.op_type, ins, attrs, outputs=len(n.outputs))
        for o, new in zip(n.outputs, outs if isinstance(outs, tuple) else (outs,)):
            mapping[id(o)] = new
    for t, v in zip(trace.outputs, graph.outputs):
        value = mapping[id(v)]
        if value in ctx.b.inputs or value.const_value is not None:
            value = ctx.op("Identity", [value])
        ctx.set(t, value)
