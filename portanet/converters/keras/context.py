"""Conversion state shared by the Keras layer handlers.

A handler receives the context, the layer, and the node's input/output Keras tensors. It
asks for its inputs in the layout it needs (``ctx.get(t, perm)`` inserts at most one
Transpose per value and layout, shared by every consumer) and records its outputs with
the layout it produced them in (``ctx.set(t, value, perm)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.keras import layout
from portanet.errors import ConversionError
from portanet.ir.builder import GraphBuilder
from portanet.ir.frozen import mark_frozen


def static_shape(tensor: Any) -> tuple[int | None, ...]:
    """The Keras tensor's shape with the batch dimension included (None where unknown)."""
    return tuple(d if isinstance(d, int) else None for d in tensor.shape)


def to_numpy(variable: Any, dtype: Any = None) -> np.ndarray:
    """A Keras variable (or tensor) as a numpy array (converted to ``dtype`` only if it differs)."""
    if hasattr(variable, "numpy"):
        return np.asarray(variable.numpy(), dtype=dtype)
    return np.asarray(variable, dtype=dtype)


#: non-trainable Keras variables that Keras itself updates in training (BatchNormalization state)
_UPDATED_STATE = ("moving_mean", "moving_variance")


def frozen_reason(layer: Any, key: str) -> str | None:
    """Why ``layer``'s weight ``key`` is frozen in Keras (``trainable=False`` layer, or a
    non-trainable variable of that name), or None when Keras trains it."""
    if not getattr(layer, "trainable", True):
        return "keras trainable=False"
    if key in _UPDATED_STATE:
        return None
    for var in getattr(layer, "weights", []):
        name = str(getattr(var, "path", "") or getattr(var, "name", "")).split("/")[-1]
        if name == key and not getattr(var, "trainable", True):
            return "keras non-trainable weight"
    return None


class KerasContext:
    """Maps Keras tensors to IR values (with their layout) while the graph is walked."""

    def __init__(self, builder: GraphBuilder) -> None:
        self.b = builder
        # id(keras tensor) -> {perm: ir.Value}; the first entry is where it was produced
        self._values: dict[int, dict[layout.Perm, ir.Value]] = {}
        self._keep: list[Any] = []  # keeps keras tensors alive so their ids stay unique
        self._weights: dict[tuple[str, str], ir.Value] = {}
        #: source layer name -> layout of the last value produced under its provenance
        self.layer_perms: dict[str, layout.Perm] = {}
        #: id(keras tensor) -> fn computing its value on first use (masks no consumer may need)
        self._deferred: dict[int, Callable[[], None]] = {}
        #: the graph node being converted (raw keras.ops handlers read its call arguments)
        self.node: Any = None

    # -- tensors --------------------------------------------------------------------------
    def has(self, tensor: Any) -> bool:
        return id(tensor) in self._values or id(tensor) in self._deferred

    def defer(self, tensor: Any, compute: Callable[[], None]) -> None:
        """``compute()`` records ``tensor``'s value (with ``set``) when a consumer first asks for it."""
        self._keep.append(tensor)
        self._deferred[id(tensor)] = compute

    def set(self, tensor: Any, value: ir.Value, perm: Sequence[int] | None = None) -> None:
        """Record ``value`` as the IR value of Keras ``tensor``, held with ``perm``."""
        rank = len(tensor.shape)
        p = tuple(perm) if perm is not None else layout.identity(rank)
        if len(p) != rank:
            raise ConversionError(f"internal layout of rank {len(p)} for a tensor of rank {rank}")
        self._keep.append(tensor)
        self._values[id(tensor)] = {p: value}
        if self.b.current_layer is not None:
            self.layer_perms[self.b.current_layer[0]] = p

    def alias(self, dst: Any, src: Any) -> None:
        """``dst`` is the same tensor as ``src`` (nested-model boundaries)."""
        self._keep.append(dst)
        self._values[id(dst)] = self._values[id(src)]

    def perm_of(self, tensor: Any) -> layout.Perm:
        """The layout the tensor was produced in."""
        return next(iter(self._entry(tensor)))

    def _entry(self, tensor: Any) -> dict[layout.Perm, ir.Value]:
        compute = self._deferred.pop(id(tensor), None)
        if compute is not None:
            compute()
        try:
            return self._values[id(tensor)]
        except KeyError:
            raise ConversionError(f"input tensor '{getattr(tensor, 'name', tensor)}' was not produced yet") from None

    def get(self, tensor: Any, perm: Sequence[int] | None = None) -> ir.Value:
        """The IR value of ``tensor`` in layout ``perm`` (default: the Keras order)."""
        entry = self._entry(tensor)
        want = tuple(perm) if perm is not None else layout.identity(len(tensor.shape))
        if want in entry:
            return entry[want]
        src_perm, src = next(iter(entry.items()))
        t = layout.between(src_perm, want)
        value = self.b.op("Transpose", [src], {"perm": list(t)})
        entry[want] = value
        return value

    def get_any(self, tensor: Any) -> tuple[ir.Value, layout.Perm]:
        """The IR value in the layout it was produced in (for layout-agnostic ops)."""
        perm = self.perm_of(tensor)
        return self._entry(tensor)[perm], perm

    # -- constants and weights ------------------------------------------------------------
    def weight(self, layer: Any, key: str, array: np.ndarray) -> ir.Value:
        """An initializer for ``layer``'s weight ``key``; shared layers reuse it."""
        cache_key = (layer.name, key)
        if cache_key not in self._weights:
            value = self.b.initializer(f"{layer.name}/{key}", np.asarray(array))
            reason = frozen_reason(layer, key)
            if reason:
                mark_frozen(value, reason)
            self._weights[cache_key] = value
        return self._weights[cache_key]

    def const(self, array: Any, dtype: Any = np.float32) -> ir.Value:
        return self.b.const(np.asarray(array, dtype=dtype))

    def ints(self, values: Sequence[int]) -> ir.Value:
        return self.b.const(np.asarray(list(values), dtype=np.int64))

    def op(self, op_type: str, inputs: Sequence[ir.Value | None], attrs: dict[str, Any] | None = None,
           **kw: Any) -> Any:
        return self.b.op(op_type, inputs, attrs, **kw)

    def channel_param(self, array: np.ndarray, keras_axes: Sequence[int], rank: int,
                      perm: Sequence[int]) -> np.ndarray:
        """Reshape a parameter that varies along ``keras_axes`` of a rank-``rank`` tensor so it
        broadcasts against the IR value held with ``perm``."""
        axes = sorted(a + rank if a < 0 else a for a in keras_axes)
        full = [1] * rank
        arr = np.asarray(array)
        sizes = list(arr.shape) if arr.ndim == len(axes) else None
        for i, a in enumerate(axes):
            full[a] = sizes[i] if sizes is not None else -1
        arr = arr.reshape(full)
        return np.transpose(arr, perm)
