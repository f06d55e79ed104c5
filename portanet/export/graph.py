"""What every export target needs to know about an IR graph, computed once.

``ExportGraph`` wraps an ``onnx_ir.Model`` (shape-inferred) and answers:

* the constant value of an IR value (initializer or ``Constant`` node output), if any;
* the role of each float initializer: ``param`` (trainable), ``buffer`` (BatchNormalization
  running statistics) or ``const`` (op configuration: Reshape shapes, Clip bounds, ...),
  following the IR's rule that trainability is derived, never stored;
* static shapes (every dimension but the symbolic batch is known after shape inference);
* the source layer each node comes from (provenance), for naming generated layers.

Targets walk ``nodes()`` (topological order, ``Constant`` nodes left out: their values are
read through ``const``).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from portanet.errors import UnsupportedOpError
from portanet.ir.provenance import source_of
from portanet.ir.shapes import dims_of, infer_shapes

#: input positions that configure an op instead of carrying data (their float initializers
#: are constants, not parameters)
CONFIG_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Clip": frozenset({1, 2}),
    "Pad": frozenset({1, 2, 3}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Split": frozenset({1}),
    "Dropout": frozenset({1, 2}),
    "ReduceMean": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "ReduceProd": frozenset({1}),
    "ReduceL2": frozenset({1}),
}
#: ops never evaluated at export time (random, or training-dependent)
_NO_FOLD = {"Dropout", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
#: BatchNormalization's running mean and variance: buffers, not parameters
BUFFER_INPUTS: dict[str, frozenset[int]] = {"BatchNormalization": frozenset({3, 4})}


def identifier(name: str, *, lower: bool = False) -> str:
    """Any layer name -> a valid, readable Python identifier (``conv1/3x3`` -> ``conv1_3x3``)."""
    s = re.sub(r"\W+", "_", name).strip("_")
    if lower:
        s = s.lower()
    if not s:
        s = "layer"
    if s[0].isdigit():
        s = "l" + s
    if keyword.iskeyword(s) or keyword.issoftkeyword(s):
        s += "_"
    return s


def scope_parts(layer: str) -> list[str]:
    """A dotted source path -> identifier segments; numeric segments join the previous one
    (``layer1.0.conv1`` -> ``["layer1_0", "conv1"]``)."""
    parts: list[str] = []
    for seg in layer.split("."):
        if not seg:
            continue
        if seg.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{seg}"
        else:
            parts.append(identifier(seg))
    return parts or ["layer"]


@dataclass
class Problem:
    """One reason a node cannot be exported to a target (collected, then raised together)."""

    key: str
    layer: str


class ExportGraph:
    """An IR model prepared for the exporters (see the module docstring)."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        infer_shapes(model)
        self.graph = model.graph
        self._consts: dict[int, np.ndarray] = {}
        self._folded: set[int] = set()
        for node in self.graph:
            if node.op_type == "Constant" and node.outputs:
                value = _constant_attr(node)
                if value is not None:
                    self._consts[id(node.outputs[0])] = value
        self.kinds = self._classify()

    # -- traversal --------------------------------------------------------------------------
    def nodes(self) -> Iterator[ir.Node]:
        for node in self.graph:
            if node.op_type != "Constant" and id(node) not in self._folded:
                yield node

    def fold_constants(self) -> int:
        """Evaluate nodes whose inputs are all constants (onnx's reference evaluator) and treat
        their outputs as constants; ``nodes()`` then skips them. For targets whose layers
        need constant weights (Keras): a BatchNormalization whose scale is computed from
        stored tensors gets the computed values. Returns the number of folded nodes."""
        import onnx.reference

        folded = 0
        for node in self.graph:
            if node.op_type == "Constant" or not node.outputs or node.op_type in _NO_FOLD:
                continue
            ins = [v for v in node.inputs if v is not None and v.name]
            if not ins or not all(self.is_const(v) for v in ins):
                continue
            proto = ir.serde.serialize_node(node)
            try:
                outs = onnx.reference.ReferenceEvaluator(proto).run(None, {v.name: self.const(v) for v in ins})
            except Exception:  # noqa: BLE001 - an op the reference cannot run stays a node
                continue
            for v, arr in zip(node.outputs, outs):
                self._consts[id(v)] = np.asarray(arr)
            self._folded.add(id(node))
            folded += 1
        return folded

    @property
    def inputs(self) -> list[ir.Value]:
        inits = set(self.graph.initializers)
        return [v for v in self.graph.inputs if v.name not in inits]

    @property
    def outputs(self) -> list[ir.Value]:
        return list(self.graph.outputs)

    def name(self, default: str = "Net") -> str:
        return self.graph.name or default

    # -- values -------------------------------------------------------------------------------
    def const(self, v: ir.Value | None) -> np.ndarray | None:
        """The value of a constant (initializer or Constant output), else None."""
        if v is None:
            return None
        if v.const_value is not None:
            return np.asarray(v.const_value.numpy())
        return self._consts.get(id(v))

    def is_const(self, v: ir.Value | None) -> bool:
        return v is not None and (v.const_value is not None or id(v) in self._consts)

    def ints(self, v: ir.Value | None) -> list[int] | None:
        c = self.const(v)
        return None if c is None else [int(x) for x in c.reshape(-1)]

    def shape(self, v: ir.Value) -> list[int | str | None] | None:
        """Dims of ``v``: ints, the symbolic batch name, or None when unknown."""
        return dims_of(v)

    def static_shape(self, v: ir.Value) -> list[int] | None:
        """Dims of ``v`` when all are known ints, else None."""
        dims = dims_of(v)
        if dims is None or not all(isinstance(d, int) for d in dims):
            return None
        return [int(d) for d in dims]  # type: ignore[arg-type]

    def rank(self, v: ir.Value) -> int | None:
        dims = dims_of(v)
        return None if dims is None else len(dims)

    def kind(self, v: ir.Value) -> str:
        """``param`` / ``buffer`` / ``const`` for an initializer or Constant output."""
        return self.kinds.get(id(v), "const")

    def _classify(self) -> dict[int, str]:
        uses: dict[int, list[tuple[str, int]]] = {}
        values: dict[int, ir.Value] = {}
        for node in self.graph:
            for i, v in enumerate(node.inputs):
                if v is not None and v.const_value is not None:
                    uses.setdefault(id(v), []).append((node.op_type, i))
                    values[id(v)] = v
        kinds: dict[int, str] = {}
        for key, used in uses.items():
            v = values[key]
            arr = v.const_value
            if v.dtype is None or not v.dtype.is_floating_point() or len(arr.shape) == 0:
                kinds[key] = "const"
            elif all(i in BUFFER_INPUTS.get(op, ()) for op, i in used):
                kinds[key] = "buffer"
            elif all(i in CONFIG_INPUTS.get(op, ()) for op, i in used):
                kinds[key] = "const"
            else:
                kinds[key] = "param"
        return kinds

    # -- provenance ---------------------------------------------------------------------------
    @staticmethod
    def layer(node: ir.Node) -> str:
        """The source layer of ``node`` (provenance), else its IR name or op type."""
        src = source_of(node)
        if src is not None and src[0]:
            return src[0]
        if node.name:
            return node.name
        return node.outputs[0].name if node.outputs and node.outputs[0].name else node.op_type

    def check_supported(self, supported: set[str] | dict, target: str) -> None:
        """One UnsupportedOpError listing every op type of the graph ``target`` lacks."""
        missing: dict[str, list[str]] = {}
        for node in self.nodes():
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            if node.domain not in ("", "ai.onnx") or node.op_type not in supported:
                missing.setdefault(key, []).append(self.layer(node))
        if missing:
            raise UnsupportedOpError(missing, framework=f"export to {target}")


def raise_problems(problems: list[Problem], target: str) -> None:
    """Raise one UnsupportedOpError for every collected problem (no-op when empty)."""
    if not problems:
        return
    grouped: dict[str, list[str]] = {}
    for p in problems:
        grouped.setdefault(p.key, []).append(p.layer)
    raise UnsupportedOpError(grouped, framework=f"export to {target}")


def _constant_attr(node: ir.Node) -> np.ndarray | None:
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        a = node.attributes.get(key)
        if a is not None:
            return np.asarray(a.value, dtype=dtype)
    a = node.attributes.get("value")
    if a is not None and isinstance(a.value, ir.TensorProtocol):
        return np.asarray(a.value.numpy())
    return None


def attr(node: ir.Node, name: str, default=None):
    """Python value of attribute ``name`` (``default`` when absent); strings decoded."""
    a = node.attributes.get(name)
    if a is None:
        return default
    v = a.value
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, tuple | list):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    return v


def pool_geometry(
    node: ir.Node, in_dims: list[int | str | None], kernel: list[int] | None = None
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(kernel, strides, dilations, begin pads, end pads) of a Conv/Pool node over the static
    spatial sizes ``in_dims``; SAME auto_pad resolved, and for ``ceil_mode`` the extra end
    padding that gives ONNX's ceil output size (a last window starting beyond the input and
    its begin padding is dropped, as in ONNX's reference). ``kernel`` defaults to the node's
    kernel_shape (Conv may leave it to the weights). Raises ValueError when the spatial sizes
    are needed (SAME, ceil_mode) but unknown."""
    n = len(in_dims)
    kernel = list(kernel if kernel is not None else attr(node, "kernel_shape") or [])
    needs_sizes = attr(node, "auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") or int(attr(node, "ceil_mode", 0))
    if needs_sizes and not all(isinstance(d, int) for d in in_dims):
        raise ValueError("SAME or ceil-mode padding over unknown spatial sizes")
    strides = list(attr(node, "strides", [1] * n))
    dil = list(attr(node, "dilations", [1] * n))
    auto = attr(node, "auto_pad", "NOTSET")
    pads = list(attr(node, "pads", [0] * (2 * n)))
    if auto == "VALID":
        pads = [0] * (2 * n)
    begins, ends = pads[:n], pads[n:]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(in_dims, kernel, strides, dil):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else big)
            ends.append(big if auto == "SAME_UPPER" else small)
    if int(attr(node, "ceil_mode", 0)):
        ends = list(ends)
        for i in range(n):
            size = in_dims[i] + begins[i] + ends[i]
            eff = (kernel[i] - 1) * dil[i] + 1
            out = -(-(size - eff) // strides[i]) + 1
            if (out - 1) * strides[i] >= in_dims[i] + begins[i]:
                out -= 1
            ends[i] += max((out - 1) * strides[i] + eff - size, 0)
    return kernel, strides, dil, list(begins), list(ends)


def avg_pool_scale(in_dims: list[int], kernel: list[int], strides: list[int], begins: list[int],
                   ends: list[int], declared_ends: list[int], count_include_pad: bool) -> np.ndarray | None:
    """For an average pool computed as ``window mean over the zero-padded input``: the
    per-position factor ``prod(kernel) / counted`` that turns it into ONNX's divisor (the input,
    plus the declared pads when ``count_include_pad``; never the ceil overhang). None when
    every factor is 1 (the plain mean is already exact)."""
    n = len(in_dims)
    counted = np.ones([1] * 0 + [1], dtype=np.float64)
    grids = []
    for i in range(n):
        lo = begins[i] if count_include_pad else 0
        hi = declared_ends[i] if count_include_pad else 0
        mask = np.zeros(in_dims[i] + begins[i] + ends[i])
        mask[begins[i] - lo: begins[i] + in_dims[i] + hi] = 1.0
        out = (len(mask) - kernel[i]) // strides[i] + 1
        grids.append(np.array([mask[j * strides[i]: j * strides[i] + kernel[i]].sum() for j in range(out)]))
    counted = grids[0]
    for g in grids[1:]:
        counted = np.multiply.outer(counted, g)
    scale = float(np.prod(kernel)) / counted
    if np.allclose(scale, 1.0, rtol=0, atol=0):
        return None
    return scale.astype(np.float32)
