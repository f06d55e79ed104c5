"""Keras masks in the layer-graph walk.

Keras attaches a boolean mask ``(N, T)`` to the outputs of ``Embedding(mask_zero=True)``,
``Masking`` and of the layers that propagate or combine masks (``compute_mask``). In a
functional graph the mask is a tensor of its own: the ``keras.ops`` calls of
``compute_mask`` (``NotEqual``, ``Any``, ...) appear as graph nodes, and a layer whose
``call`` takes ``mask`` (RNNs, attention, ``GlobalAveragePooling1D`` ...) receives the mask
tensor as a node argument (``node.arguments.kwargs["mask"]``, ``query_mask``, ...).

portanet does not walk those ``compute_mask`` nodes. Each layer type that creates a mask
has a rule here (``@mask_rule``) computing the mask in the IR from the layer's own inputs;
the value is built only when a consumer asks for it (``KerasContext.defer``), so a mask
nobody consumes costs nothing. A layer that is handed a mask must be registered as a mask
consumer (``consumes_masks``); any other layer receiving one is refused before conversion,
as is every other refused layer variant (``@refusal``, e.g. ``stateful=True``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import onnx_ir as ir

from portanet.errors import ConversionError

#: layer type -> fn(ctx, layer, node) -> IR mask value of each output (None: no new mask)
MaskRule = Callable[[Any, Any, Any], list[ir.Value | None]]
MASK_RULES: dict[str, MaskRule] = {}
#: layer types whose handlers use (or, at inference, may ignore) the masks they are given
MASK_CONSUMERS: set[str] = set()
#: layer type -> fn(layer) -> a description of an unsupported variant, or None
REFUSALS: dict[str, Callable[[Any], str | None]] = {}


def mask_rule(*kinds: str) -> Callable[[MaskRule], MaskRule]:
    """Register how layers of ``kinds`` compute the masks of their outputs."""

    def deco(fn: MaskRule) -> MaskRule:
        for k in kinds:
            MASK_RULES[k] = fn
        return fn

    return deco


def consumes_masks(*kinds: str) -> None:
    """Declare that the handlers of ``kinds`` implement Keras' masked semantics."""
    MASK_CONSUMERS.update(kinds)


def refusal(*kinds: str) -> Callable[[Callable[[Any], str | None]], Callable[[Any], str | None]]:
    """Register a check naming an unsupported variant of ``kinds`` (listed before converting)."""

    def deco(fn: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
        for k in kinds:
            REFUSALS[k] = fn
        return fn

    return deco


def keras_mask(tensor: Any) -> Any:
    """The symbolic mask Keras attached to ``tensor`` (None if unmasked)."""
    return getattr(tensor, "_keras_mask", None)


def _is_keras_tensor(obj: Any) -> bool:
    return hasattr(obj, "_keras_history")


def _flat(obj: Any) -> Iterator[Any]:
    if isinstance(obj, list | tuple):
        for o in obj:
            yield from _flat(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flat(o)
    elif obj is not None:
        yield obj


def node_of(layer: Any, outputs: list) -> Any:
    """The graph node of ``layer`` that produced ``outputs``."""
    for node in layer._inbound_nodes:
        if node.output_tensors and node.output_tensors[0] is outputs[0]:
            return node
    raise ConversionError("cannot find the layer's graph node")


def _explicit_masks(node: Any) -> dict[str, Any]:
    out = {}
    for k, v in node.arguments.kwargs.items():
        if k.endswith("mask") and k != "use_causal_mask" and any(_is_keras_tensor(t) for t in _flat(v)):
            out[k] = v
    return out


def _has_mask(value: Any) -> bool:
    return any(keras_mask(t) is not None for t in _flat(value))


def _masks_of(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_masks_of(v) for v in value]
    return keras_mask(value)


def call_masks(node: Any) -> dict[str, Any]:
    """The mask arguments (``mask``, ``query_mask`` ...) the layer's call receives: the ones
    given explicitly, else Keras' own rule (``Layer.__call__``): with one tensor argument,
    ``mask`` = the masks of that argument (a list for a list); with several, ``<arg>_mask``
    for each argument whose name has such a parameter."""
    import inspect

    out = _explicit_masks(node)
    layer = node.operation
    try:
        params = inspect.signature(layer.call).parameters
        bound = inspect.signature(layer.call).bind_partial(*node.arguments.args, **node.arguments.kwargs)
    except (TypeError, ValueError):
        return out
    tensor_args = {}
    for name, value in bound.arguments.items():
        flat = list(_flat(value))
        if flat and all(_is_keras_tensor(t) for t in flat):
            tensor_args[name] = value
    if len(tensor_args) == 1:
        value = next(iter(tensor_args.values()))
        if "mask" in params and "mask" not in out and _has_mask(value):
            out["mask"] = _masks_of(value)
    else:
        for name, value in tensor_args.items():
            key = f"{name}_mask"
            if key in params and key not in out and _has_mask(value):
                out[key] = _masks_of(value)
    return out


def mask_nodes(model: Any) -> set[int]:
    """ids of the graph nodes that only compute masks inside some layer's ``compute_mask``."""
    import keras

    from portanet.converters.keras.graph import iter_nodes

    found: set[int] = set()
    for node in iter_nodes(model):
        if not isinstance(node.operation, keras.layers.Layer):
            continue
        stop = {id(t) for t in node.input_tensors}
        stop |= {id(keras_mask(t)) for t in node.input_tensors if keras_mask(t) is not None}
        todo = [keras_mask(t) for t in node.output_tensors if keras_mask(t) is not None]
        while todo:
            t = todo.pop()
            if id(t) in stop or not _is_keras_tensor(t):
                continue
            op, node_index, _ = t._keras_history
            if isinstance(op, keras.layers.Layer):
                continue
            inner = op._inbound_nodes[node_index]
            if id(inner) not in found:
                found.add(id(inner))
                todo.extend(inner.input_tensors)
    return found


def refused_variant(node: Any, kind: str) -> str | None:
    """A description of why this node cannot be converted (None if it can)."""
    check = REFUSALS.get(kind)
    why = check(node.operation) if check is not None else None
    if why is not None:
        return f"{kind} ({why})"
    if kind not in MASK_CONSUMERS and call_masks(node):
        return f"{kind} (with a mask from Embedding(mask_zero=True)/Masking)"
    return None


def after_layer(ctx: Any, layer: Any, kind: str, node: Any) -> None:
    """Defer the IR value of every new mask on the node's outputs (see the module docstring)."""
    pending = [(i, m) for i, t in enumerate(node.output_tensors)
               if (m := keras_mask(t)) is not None and not ctx.has(m)]
    if not pending:
        return
    rule = MASK_RULES.get(kind)
    computed: dict[str, list[ir.Value | None]] = {}

    def compute(index: int, mask: Any) -> Callable[[], None]:
        def run() -> None:
            if rule is None:
                raise ConversionError(f"the mask computed by layer '{layer.name}' ({kind}) is not supported; "
                                      f"layers with mask rules: {', '.join(sorted(MASK_RULES))}")
            saved = dict(ctx.layer_perms)  # a mask must not change the layouts recorded for bisection
            with ctx.b.layer(layer.name, kind):
                if "values" not in computed:
                    computed["values"] = rule(ctx, layer, node)
                value = computed["values"][index]
                if value is None:
                    raise ConversionError(f"layer '{layer.name}' ({kind}): no mask rule for output {index}")
                ctx.set(mask, value)
            ctx.layer_perms.clear()
            ctx.layer_perms.update(saved)

        return run

    for i, m in pending:
        ctx.defer(m, compute(i, m))


def mask_value(ctx: Any, mask: Any) -> ir.Value | None:
    """The IR value (bool, Keras order) of a mask argument, or None."""
    if mask is None:
        return None
    return ctx.get(mask)
