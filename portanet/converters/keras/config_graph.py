"""Convert a Keras file from its config and weights alone: no Keras, TensorFlow or torch.

``config_reader.py`` turns the file into a ``ModelSpec``; this module walks it with the
same layer handlers (``ops/``) the Keras-based walk uses (``graph.py``), handing them
stand-ins for what they read from Keras objects:

* ``ConfigLayer``: a layer's config entries as attributes (``layer.kernel_size``,
  ``layer.padding`` ...), its variables as numpy arrays (``layer.kernel``), read from the
  HDF5 file when asked, and the class name as its type name (``type(layer).__name__``).
* ``ConfigTensor``: a tensor's shape in the Keras layout and dtype. Keras records the shape
  of every tensor a layer is called on; a tensor nobody consumes (a model output) or a
  legacy Sequential's intermediate gets its shape from the IR value it was converted to
  (ONNX shape inference of the nodes emitted so far, ``IRShapes``), mapped back through
  the layout it is held in.

Nodes are visited in the order Keras' own functional graph orders them (``map_graph``),
so the IR is the one the Keras-based walk builds, node for node.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.keras import layout
from portanet.converters.keras.config_reader import (
    NON_TRAINABLE,
    LayerSpec,
    ModelSpec,
    NeedsKeras,
    NodeSpec,
    TensorRef,
    read_model,
    weight_names,
)
from portanet.converters.keras.context import KerasContext
from portanet.converters.keras.graph import FRAMEWORK, _unique_names, bind_inputs, bind_outputs, finish
from portanet.converters.registry import ConvertOptions
from portanet.ir.builder import GraphBuilder

log = logging.getLogger(__name__)

Dims = tuple[int | None, ...]


class ConfigTensor:
    """A Keras tensor of the config: shape in the Keras layout (``known`` once certain)."""

    def __init__(self, name: str, shape: Dims | None, dtype: str | None) -> None:
        self.name = name
        self._keras_history = name  # what the ops handlers test to tell tensors from constants
        self.known = shape is not None
        self.shape: Dims = tuple(shape) if shape is not None else ()
        self.dtype = dtype or "float32"

    def __repr__(self) -> str:
        return f"ConfigTensor({self.name}, {self.shape if self.known else '?'})"


class ConfigVariable:
    """What ``context.frozen_reason`` reads of a Keras variable."""

    def __init__(self, path: str, trainable: bool) -> None:
        self.path = path
        self.name = path.rsplit("/", 1)[-1]
        self.trainable = trainable


class ConfigLayer:
    """A Keras layer as its config and weights (see the module docstring)."""

    def __init__(self, spec: LayerSpec) -> None:
        self._spec = spec
        self.name = spec.name
        self.trainable = spec.trainable
        frozen = NON_TRAINABLE.get(spec.class_name, ())
        self._weight_names = weight_names(spec.class_name, spec.config)
        self.weights = [ConfigVariable(f"{spec.name}/{w}", w not in frozen) for w in self._weight_names]
        digits = re.search(r"(\d)D", spec.class_name)
        if digits:  # Conv2D, DepthwiseConv1D, Conv3DTranspose ...: Keras' ``rank`` attribute
            self.rank = int(digits.group(1))

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        spec = self._spec
        derive = DERIVED.get(spec.class_name, {}).get(key)
        if derive is not None:
            return derive(self, key)
        if key in spec.weights:
            return spec.weights[key]()
        if key in _OPTIONAL_WEIGHTS:  # a variable this configuration does not create
            return None
        if key in spec.config:
            return spec.config[key]
        raise AttributeError(f"{spec.class_name} '{spec.name}' has no config entry '{key}'")


def _normalization_stats(layer: ConfigLayer, key: str) -> np.ndarray:
    """Normalization's ``mean``/``variance`` as Keras holds them after building: shaped to
    broadcast against the input (kept axes at their size, the others 1), from the adapted
    variables or from the constants of the config (aligned right to left to the kept axes)."""
    cfg = layer._spec.config
    shape = layer._input_shape
    rank = len(shape)
    axis = cfg.get("axis")
    axes = () if axis is None else (axis,) if isinstance(axis, int) else tuple(axis)
    keep = sorted(int(a) % rank for a in axes)
    if any(shape[d] is None for d in keep):
        raise NeedsKeras(f"Normalization '{layer.name}' over an axis of unknown size")
    broadcast = [shape[d] if d in keep else 1 for d in range(rank)]
    if cfg.get("mean") is None:
        return np.reshape(layer._spec.weights[key](), broadcast)
    value = np.asarray(cfg[key], np.float32)
    if value.ndim == 0:
        return np.broadcast_to(value, broadcast)
    expanded = [1] * rank
    for i in range(1, value.ndim + 1):
        expanded[keep[-i]] = value.shape[-i]
    return np.broadcast_to(value.reshape(expanded), broadcast)


#: class -> attribute -> fn(layer, attribute): attributes Keras computes when it builds a layer
DERIVED: dict[str, dict[str, Callable[[ConfigLayer, str], Any]]] = {
    "Normalization": {"mean": _normalization_stats, "variance": _normalization_stats},
}

class ConfigOp:
    """A raw keras.ops operation: its config as attributes; ``call``'s parameters are the
    operation's (the ``ops.*`` handlers bind the node's arguments to them)."""

    def __init__(self, spec: LayerSpec) -> None:
        self._spec = spec
        self.name = spec.name

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key not in self._spec.config:
            raise AttributeError(key)
        return self._spec.config[key]


class ConfigArguments:
    """``node.arguments`` of a raw keras.ops call."""

    def __init__(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs


class ConfigNode:
    """The graph node a raw keras.ops handler reads (``ctx.node``)."""

    def __init__(self, op: ConfigOp, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.operation = op
        self.arguments = ConfigArguments(args, kwargs)


def _op_object(spec: LayerSpec) -> ConfigOp:
    from portanet.converters.keras.config_reader import op_classes

    key = f"ops.{spec.class_name}"
    cls = _CLASSES.get(key)
    if cls is None:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("a config stand-in is never called")

        # what inspect.signature(op.call) reports: exactly the operation's parameters
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        names = ("self", *op_classes()[spec.class_name])
        call.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in names])  # type: ignore[attr-defined]
        cls = _CLASSES[key] = type(spec.class_name, (ConfigOp,), {"call": call})
    return cls(spec)


#: variables that exist only in some configurations (None when absent, as in Keras)
_OPTIONAL_WEIGHTS = {"bias", "gamma", "beta"}

_CLASSES: dict[str, type] = {}


def _layer_object(spec: LayerSpec) -> ConfigLayer:
    """A ConfigLayer whose type is named like the Keras class (handlers dispatch on it)."""
    cls = _CLASSES.get(spec.class_name)
    if cls is None:
        cls = _CLASSES[spec.class_name] = type(spec.class_name, (ConfigLayer,), {})
    return cls(spec)


# -- shapes from the IR -------------------------------------------------------------------
class IRShapes:
    """Shapes of IR values by ONNX shape inference, node by node as they were emitted
    (only as far as a requested value; weights are never serialized, small constants are
    passed as data so that Reshape targets resolve)."""

    def __init__(self, builder: GraphBuilder) -> None:
        self.b = builder
        self._done = 0
        self._types: dict[str, Any] = {}

    def _type_of(self, value: ir.Value) -> Any:
        name = value.name or ""
        if name in self._types:
            return self._types[name]
        if value.type is None:
            return None
        import onnx

        dims = [] if value.shape is None else [d if isinstance(d, int) else None for d in value.shape]
        proto = onnx.helper.make_tensor_type_proto(int(value.dtype), None if value.shape is None else dims)
        self._types[name] = proto
        return proto

    def _infer(self, node: ir.Node) -> None:
        import onnx

        try:
            schema = onnx.defs.get_schema(node.op_type, max_inclusive_version=self.b.opset, domain=node.domain)
        except Exception:  # noqa: BLE001 - unknown op: its outputs stay unknown
            return
        types, data = {}, {}
        for v in node.inputs:
            if v is None:
                continue
            t = self._type_of(v)
            if t is None:
                return
            types[v.name] = t
            if v.const_value is not None and v.const_value.size <= 64:
                data[v.name] = ir.serde.serialize_tensor(v.const_value)
        proto = ir.serde.serialize_node(node)
        try:
            out = onnx.shape_inference.infer_node_outputs(
                schema, proto, types, data, opset_imports=[onnx.helper.make_opsetid("", self.b.opset)])
        except Exception:  # noqa: BLE001 - onnx raises several types; the value stays unknown
            return
        self._types.update(out)

    def dims(self, value: ir.Value) -> Dims | None:
        """The value's dims (None where symbolic or unknown), or None if not inferable."""
        nodes = self.b.nodes
        while (value.name or "") not in self._types and self._done < len(nodes):
            self._infer(nodes[self._done])
            self._done += 1
        t = self._type_of(value)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim)


class ConfigContext(KerasContext):
    """The handler context for config tensors: a tensor whose shape Keras did not record
    takes it from its IR value when a handler records it."""

    def __init__(self, builder: GraphBuilder) -> None:
        super().__init__(builder)
        self.shapes = IRShapes(builder)

    def set(self, tensor: Any, value: ir.Value, perm: Any = None) -> None:
        if isinstance(tensor, ConfigTensor) and not tensor.known:
            dims = self.shapes.dims(value)
            if dims is None:
                raise NeedsKeras(f"the shape of '{tensor.name}' is neither in the config nor inferable")
            p = tuple(perm) if perm is not None else layout.identity(len(dims))
            if len(p) != len(dims):
                raise NeedsKeras(f"'{tensor.name}': a layout of rank {len(p)} for a value of rank {len(dims)}")
            keras_dims: list[int | None] = [None] * len(dims)
            for i, axis in enumerate(p):  # ir = transpose(keras, p): ir dim i is keras dim p[i]
                keras_dims[axis] = dims[i]
            keras_dims[0] = None  # the batch stays free, as in Keras
            tensor.shape, tensor.known = tuple(keras_dims), True
        super().set(tensor, value, perm)


# -- the graph walk -----------------------------------------------------------------------
class Scope:
    """The tensors of one model instance (a nested model gets one per call)."""

    def __init__(self, model: ModelSpec) -> None:
        self.model = model
        self._tensors: dict[tuple[str, int, int], ConfigTensor] = {}
        self._shapes: dict[tuple[str, int, int], tuple[Dims, str | None]] = {}
        for ref in model.inputs:
            self._record(ref)
        for layer in model.layers.values():
            for node in layer.nodes:
                for ref in node.inputs:
                    self._record(ref)

    def _record(self, ref: TensorRef) -> None:
        if ref.shape is not None and ref.key not in self._shapes:
            self._shapes[ref.key] = (ref.shape, ref.dtype)

    def tensor(self, ref: TensorRef | tuple[str, int, int]) -> ConfigTensor:
        key = ref.key if isinstance(ref, TensorRef) else ref
        if key not in self._tensors:
            shape, dtype = self._shapes.get(key, (None, None))
            self._tensors[key] = ConfigTensor(f"{key[0]}:{key[1]}:{key[2]}", shape, dtype)
        return self._tensors[key]


def _is_input(layer: LayerSpec) -> bool:
    return layer.class_name == "InputLayer"


def execution_order(model: ModelSpec) -> list[NodeSpec]:
    """The call nodes reachable from the outputs, ordered like Keras' ``map_graph`` orders a
    functional graph's nodes (by decreasing depth, then by discovery)."""
    layers = model.layers
    input_nodes: dict[str, NodeSpec] = {}

    def node_of(ref: TensorRef) -> NodeSpec:
        layer = layers.get(ref.layer)
        if layer is None:
            raise NeedsKeras(f"a tensor refers to an unknown layer '{ref.layer}'")
        if _is_input(layer):
            return input_nodes.setdefault(layer.name, NodeSpec(layer.name, 0, []))
        if ref.node >= len(layer.nodes):
            raise NeedsKeras(f"a tensor refers to call {ref.node} of layer '{ref.layer}'")
        return layer.nodes[ref.node]

    # depth-first from the outputs: nodes from the inputs to the outputs
    input_keys = {r.key for r in model.inputs}
    finished: set[tuple[str, int]] = set()
    in_progress: set[tuple[str, int]] = set()
    ordered: list[NodeSpec] = []
    for out in model.outputs:
        stack: list[tuple[TensorRef, Any]] = [(out, None)]
        while stack:
            ref, pending = stack.pop()
            node = node_of(ref)
            key = (node.layer, node.index)
            if pending is None:
                if key in finished:
                    continue
                if not _is_input(layers[node.layer]) and ref.key in input_keys:
                    finished.add(key)
                    continue
                if key in in_progress:
                    raise NeedsKeras(f"a cycle through layer '{node.layer}'")
                in_progress.add(key)
                pending = iter(node.inputs)
            nxt = next(pending, None)
            if nxt is None:
                finished.add(key)
                in_progress.discard(key)
                ordered.append(node)
            else:
                stack.append((ref, pending))
                stack.append((nxt, None))
    in_graph = {(n.layer, n.index) for n in ordered}
    depths: dict[tuple[str, int], int] = {}
    layer_depths: dict[str, int] = {}
    for node in reversed(ordered):
        key = (node.layer, node.index)
        depth = max(depths.setdefault(key, 0), layer_depths.get(node.layer, 0))
        layer_depths[node.layer] = depth
        depths[key] = depth
        for ref in node.inputs:
            parent = node_of(ref)
            pkey = (parent.layer, parent.index)
            if pkey in in_graph:
                depths[pkey] = max(depth + 1, depths.get(pkey, 0))
    by_depth: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for key, depth in depths.items():
        by_depth[depth].append(key)
    nodes = {(n.layer, n.index): n for n in ordered}
    return [nodes[k] for d in sorted(by_depth, reverse=True) for k in by_depth[d]]


def _walk(ctx: ConfigContext, scope: Scope, path: str | None) -> None:
    from portanet.converters.keras.ops import HANDLERS

    for node in execution_order(scope.model):
        layer = scope.model.layers[node.layer]
        if _is_input(layer):
            continue
        ins = [scope.tensor(r) for r in node.inputs]
        if layer.model is not None:
            inner = Scope(layer.model)
            if len(ins) != len(layer.model.inputs):
                raise NeedsKeras(f"nested model '{layer.name}' called on {len(ins)} tensors, "
                                 f"it has {len(layer.model.inputs)} inputs")
            for ref, outer in zip(layer.model.inputs, ins):
                _bind(ctx, inner.tensor(ref), outer)
            _walk(ctx, inner, path)
            for i, ref in enumerate(layer.model.outputs):
                _bind(ctx, scope.tensor((layer.name, node.index, i)), inner.tensor(ref))
            continue
        outs = [scope.tensor((layer.name, node.index, 0))]
        for t in outs:
            if not t.known and ins:
                rule = OUTPUT_SHAPES.get(layer.class_name)
                if rule is not None:  # a handler that needs the output shape before emitting
                    t.shape, t.known = rule(layer.config, ins[0].shape), True
                else:  # until the handler records it: the inputs' rank (what Dense asks for)
                    t.shape = (None,) * max(len(i.shape) for i in ins)
        kind = _kind(layer)
        if layer.is_op:
            obj: Any = _op_object(layer)

            def bind(a: Any) -> Any:
                return scope.tensor(a) if isinstance(a, TensorRef) else a

            ctx.node = ConfigNode(obj, [bind(a) for a in node.args], {k: bind(v) for k, v in node.kwargs.items()})
        else:
            obj = _layer_object(layer)
            obj._input_shape = ins[0].shape if ins else ()
            ctx.node = None
        with ctx.b.layer(layer.name, kind):
            HANDLERS.call(kind, layer.name, ctx, obj, ins, outs, path=path)
        ctx.node = None


def _conv_transpose_shape(cfg: dict[str, Any], in_shape: Dims) -> Dims:
    """Keras' ConvNDTranspose output shape (its conv_transpose output-length rule)."""
    n = len(in_shape) - 2
    last = cfg.get("data_format", "channels_last") != "channels_first"
    sizes = in_shape[1:-1] if last else in_shape[2:]

    def ints(v: Any) -> list[int]:
        return [int(v)] * n if isinstance(v, int) else [int(i) for i in v]

    pads = cfg.get("output_padding")
    out = []
    for i, size in enumerate(sizes):
        k = ints(cfg["kernel_size"])[i]
        d, s = ints(cfg.get("dilation_rate", 1))[i], ints(cfg.get("strides", 1))[i]
        k = k + (k - 1) * (d - 1)
        if size is None:
            out.append(None)
        elif pads is None:
            out.append(size * s + max(k - s, 0) if cfg["padding"] == "valid" else size * s)
        else:
            pad = k // 2 if cfg["padding"] == "same" else 0
            out.append((size - 1) * s + k - 2 * pad + ints(pads)[i])
    filters = int(cfg["filters"])
    return (None, *out, filters) if last else (None, filters, *out)


#: class -> fn(config, input shape) -> output shape, for handlers reading it before emitting
OUTPUT_SHAPES: dict[str, Callable[[dict[str, Any], Dims], Dims]] = {
    f"Conv{d}DTranspose": _conv_transpose_shape for d in (1, 2, 3)}


def _bind(ctx: ConfigContext, dst: ConfigTensor, src: ConfigTensor) -> None:
    """``dst`` is ``src`` (a nested model's boundary)."""
    if not dst.known:
        dst.shape, dst.known = src.shape, src.known
    ctx.alias(dst, src)


def _kind(layer: LayerSpec) -> str:
    """The handler key (and provenance type): the class name, ``ops.<name>`` for raw ops."""
    return f"ops.{layer.class_name}" if layer.is_op else layer.class_name


def _producer_type(model: ModelSpec, ref: TensorRef) -> str:
    layer = model.layers[ref.layer]
    return layer.model.class_name if layer.model is not None else _kind(layer)


def convert_spec(model: ModelSpec, options: ConvertOptions, *, source_files: list[Any],
                 path: str | None) -> ir.Model:
    """The IR of a ``ModelSpec`` (the same graph ``graph.convert_model`` builds from Keras)."""
    from portanet.converters.keras.ops import HANDLERS

    plugged = sorted({_kind(layer) for layer in _all_layers(model)} & set(HANDLERS.plugins))
    if plugged:
        raise NeedsKeras(f"plugin handlers for {', '.join(plugged)} (plugins receive Keras layers)")
    b = GraphBuilder(FRAMEWORK, name=model.name)
    ctx = ConfigContext(b)
    scope = Scope(model)
    in_names = _unique_names([r.layer for r in model.inputs])
    bind_inputs(ctx, in_names, [scope.tensor(r) for r in model.inputs], options, path or model.name)
    taken = set(in_names)
    out_names = _unique_names([f"{r.layer}_out" if r.layer in taken else r.layer for r in model.outputs])
    for name in out_names:
        b.unique_value_name(name)
    _walk(ctx, scope, path)
    producers = [(r.layer, _producer_type(model, r)) for r in model.outputs]
    bind_outputs(ctx, out_names, [scope.tensor(r) for r in model.outputs], producers, bool(options.nchw))
    return finish(ctx, options, source_files)


def _all_layers(model: ModelSpec) -> list[LayerSpec]:
    out = []
    for layer in model.layers.values():
        out.append(layer)
        if layer.model is not None:
            out.extend(_all_layers(layer.model))
    return out


def convert_file(path: Path, options: ConvertOptions) -> ir.Model:
    """Convert a ``.keras``/``.h5`` file without Keras; raises ``NeedsKeras`` when the file
    holds something only Keras can read."""
    import portanet.converters.keras.ops  # noqa: F401  (registers every handler family)

    try:
        with read_model(path) as model:
            return convert_spec(model, options, source_files=[path], path=str(path))
    except NeedsKeras:
        raise
    except (OSError, KeyError, ValueError) as exc:  # an HDF5/zip layout this reader does not know
        raise NeedsKeras(f"{type(exc).__name__}: {exc}") from exc


def try_convert_file(path: Path, options: ConvertOptions,
                     log_fn: Callable[..., None] | None = None) -> ir.Model | None:
    """``convert_file``, or None (logged at INFO with the reason) when the file needs Keras;
    any failure of the config path leaves the decision to the Keras-based path."""
    try:
        model = convert_file(path, options)
    except NeedsKeras as exc:
        (log_fn or log.info)("%s: loading with Keras: %s", path, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - the Keras-based path reports real problems itself
        (log_fn or log.info)("%s: loading with Keras (the config reader failed: %s: %s)", path,
                             type(exc).__name__, exc)
        return None
    log.info("%s: converted from its config and weights (without Keras)", path)
    return model

