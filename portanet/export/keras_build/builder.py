"""Build a Keras 3 functional model from an IR graph, channels-last inside.

Every IR value maps to a Keras tensor plus a *layout*: the permutation ``perm`` with
``keras_tensor == ir_value.transpose(perm)`` (``None`` = same layout). Spatial ops want
NCHW values as NHWC (``perm = (0, 2, 3, 1)``), so image tensors stay channels-last from
layer to layer; IR Transposes only change the recorded layout (no op), and a ``Permute``
layer appears only where a consumer needs a layout a value does not have. Flattening a
channels-last tensor keeps Keras' (H, W, C) order and remembers it (``FlatView``): a
following Dense gets its weight rows permuted instead of the data.

Handlers (``@handler("Conv")`` in ``ops/``) return the node's output tensor(s) and layouts.
Weights are set on the layers right after they are built (``builder.weights``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.errors import PortanetError
from portanet.export.graph import ExportGraph, Problem, identifier, raise_problems

Handler = Callable[["KerasBuilder", ir.Node], Any]
_HANDLERS: dict[str, Handler] = {}

NHWC = (0, 2, 3, 1)


class Unsupported(PortanetError):
    """A handler cannot express this node in Keras (the reason becomes the error's key)."""


def handler(*op_types: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for t in op_types:
            _HANDLERS[t] = fn
        return fn

    return deco


def supported_ops() -> set[str]:
    _load()
    return set(_HANDLERS)


@dataclass
class FlatView:
    """A Flatten of a permuted 4-D tensor, kept in Keras' order: ``tensor`` is
    ``Flatten()(source)`` and IR element ``(c, h, w)`` sits at ``order[c*H*W + h*W + w]``'s
    position, i.e. ``tensor[:, k] == ir_flat[:, order[k]]``."""

    tensor: Any
    source: Any
    source_perm: tuple[int, ...]
    order: np.ndarray


@dataclass
class Out:
    """A handler's result for one output: the Keras tensor and its layout."""

    tensor: Any
    perm: tuple[int, ...] | None = None


def compose(perm_in: tuple[int, ...] | None, transpose: list[int]) -> tuple[int, ...] | None:
    """The layout of ``ir_out = ir_in.transpose(P)`` when the Keras tensor is left as is."""
    rank = len(transpose)
    p_in = perm_in or tuple(range(rank))
    inv = list(np.argsort(transpose))
    out = tuple(int(inv[p_in[j]]) for j in range(rank))
    return None if out == tuple(range(rank)) else out


class KerasBuilder:
    """Walks the graph once, emitting Keras layers (see module doc)."""

    def __init__(self, g: ExportGraph, keep_layout: bool = False) -> None:
        _load()
        import keras

        self.keras = keras
        self.layers = keras.layers
        self.ops = keras.ops
        self.g = g
        self.keep_layout = keep_layout
        self.env: dict[int, Out | FlatView] = {}
        self.weights: list[tuple[Any, list[np.ndarray]]] = []
        self.taps: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self.node: ir.Node | None = None

    # -- names / layers -----------------------------------------------------------------------
    def name(self, suffix: str = "") -> str:
        """A unique Keras layer name after the current node's source layer."""
        layer = self.g.layer(self.node) if self.node is not None else "output"
        base = identifier(layer) + (f"_{suffix}" if suffix else "")
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def apply(self, layer: Any, inputs: Any, weights: list[np.ndarray] | None = None,
              perm: tuple[int, ...] | None = None, tap: bool = True) -> Out:
        """Call ``layer`` on ``inputs``, remember its weights and (for bisection) its output."""
        out = layer(inputs)
        if weights is not None:
            self.weights.append((layer, [np.ascontiguousarray(w, dtype=np.float32) for w in weights]))
        if tap and self.node is not None and self.node.outputs and self.node.outputs[0].name:
            self.taps.append({"key": layer.name, "value": self.node.outputs[0].name,
                              "perm": list(perm) if perm else None})
        return Out(out, perm)

    # -- values ---------------------------------------------------------------------------------
    def const(self, v: ir.Value | None) -> np.ndarray | None:
        return self.g.const(v)

    def is_const(self, v: ir.Value | None) -> bool:
        return self.g.is_const(v)

    def entry(self, v: ir.Value) -> Out | FlatView:
        if id(v) not in self.env:
            raise Unsupported(f"input {v.name} is not a run-time value")
        return self.env[id(v)]

    def get(self, v: ir.Value, perm: tuple[int, ...] | None = None) -> Any:
        """The Keras tensor of ``v`` in layout ``perm`` (a Permute layer when it differs)."""
        e = self.entry(v)
        if isinstance(e, FlatView):
            e = self._materialize(v, e)
        have = e.perm
        rank = len(perm or have or ())
        if have == perm or (rank and (have or tuple(range(rank))) == (perm or tuple(range(rank)))):
            return e.tensor
        rank = len(have or perm)
        p1 = have or tuple(range(rank))
        p2 = perm or tuple(range(rank))
        q = [p1.index(a) for a in p2]
        if q[0] != 0:
            raise Unsupported("a layout change that moves the batch axis")
        layer = self.layers.Permute(tuple(q[1:]), name=self.name("permute"))
        t = layer(e.tensor)
        self.env[id(v)] = Out(t, perm)  # later consumers reuse it
        return t

    def _materialize(self, v: ir.Value, e: FlatView) -> Out:
        base = self.layers.Permute(tuple(np.argsort(e.source_perm)[1:].tolist()), name=self.name("to_nchw"))(e.source)
        t = self.layers.Flatten(name=self.name("flatten"))(base)
        out = Out(t, None)
        self.env[id(v)] = out
        return out

    def same_layout(self, values: list[ir.Value]) -> tuple[list[Any], tuple[int, ...] | None]:
        """Run-time values in the layout of the first one (constants handled by callers)."""
        first = self.entry(values[0])
        perm = first.perm if isinstance(first, Out) else None
        return [self.get(v, perm) for v in values], perm

    # -- the walk -------------------------------------------------------------------------------
    def build(self, model_name: str) -> tuple[Any, list, list]:
        """The Keras model, input perms and output perms (export = ir.transpose(perm))."""
        keras = self.keras
        g = self.g
        inputs, in_perms = [], []
        for v in g.inputs:
            dims = g.shape(v)
            if dims is None or not all(isinstance(d, int) for d in dims[1:]):
                raise Unsupported(f"input {v.name} has unknown sizes")
            perm = self._input_layout(v, dims)
            kdims = [dims[p] for p in perm] if perm else dims
            dtype = np.dtype(v.dtype.numpy()).name if v.dtype is not None else "float32"
            t = keras.Input(shape=tuple(kdims[1:]), name=identifier(v.name or "input"), dtype=dtype,
                            batch_size=dims[0] if isinstance(dims[0], int) else None)
            self._names.add(identifier(v.name or "input"))
            inputs.append(t)
            in_perms.append(list(perm) if perm else None)
            self.env[id(v)] = Out(t, perm)
        problems: list[Problem] = []
        for node in g.nodes():
            self.node = node
            fn = _HANDLERS.get(node.op_type)
            if fn is None or node.domain not in ("", "ai.onnx"):
                problems.append(Problem(node.op_type, g.layer(node)))
                continue
            try:
                outs = fn(self, node)
            except Unsupported as exc:
                problems.append(Problem(f"{node.op_type} ({exc})", g.layer(node)))
                continue
            except (ValueError, TypeError) as exc:  # Keras refusing a configuration
                problems.append(Problem(f"{node.op_type} ({str(exc).splitlines()[0][:80]})", g.layer(node)))
                continue
            outs = outs if isinstance(outs, list) else [outs]
            for v, o in zip(node.outputs, outs):
                self.env[id(v)] = o
        raise_problems(problems, "keras")
        outputs, out_perms = [], []
        self.node = None
        for v in g.outputs:
            e = self.entry(v)
            rank = g.rank(v)
            perm = e.perm if isinstance(e, Out) else None
            if self.keep_layout or isinstance(e, FlatView) or perm is None or not (rank == 4 and perm == NHWC):
                perm = None
            outputs.append(self._get_named(v, perm))
            out_perms.append(list(perm) if perm else None)
        model = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                            name=identifier(model_name))
        for layer, ws in self.weights:
            layer.set_weights(ws)
        return model, in_perms, out_perms

    def _get_named(self, v: ir.Value, perm: tuple[int, ...] | None) -> Any:
        self.node = v.producer()
        return self.get(v, perm)

    def _input_layout(self, v: ir.Value, dims: list) -> tuple[int, ...] | None:
        """Image inputs (4-D, read by spatial ops) are channels-last like a native Keras
        model; an input the IR itself transposes first (Keras sources) keeps its layout."""
        if self.keep_layout or len(dims) != 4:
            return None
        if all(use.node.op_type == "Transpose" for use in v.uses()):
            return None
        return NHWC


def _load() -> None:
    import importlib
    import pkgutil

    from portanet.export.keras_build import ops

    for info in pkgutil.iter_modules(ops.__path__):
        importlib.import_module(f"{ops.__name__}.{info.name}")
