"""Exact down-conversion rewrites for ops whose schema changed between opsets 13 and 21.

onnx's version converter has no down adapter for most of these (``No Adapter From Version
14 for Reshape``) or writes invalid nodes (a ReduceMean-17 that keeps
``noop_with_empty_axes``). Each rewrite here returns the nodes that mean the same at the
target opset, or None when it does not apply; ``portanet.ir.io`` calls them node by node and
re-checks the result. Rewrites are registered per op type::

    @rewrite("HardSwish", below=14)
    def hard_swish(node, ctx): ...
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from portanet.errors import InvalidModelError

Rewrite = Callable[[onnx.NodeProto, "DowngradeContext"], "list[onnx.NodeProto] | None"]

#: op type -> [(first opset that needs no rewrite, rewrite)]
_REWRITES: dict[str, list[tuple[int, Rewrite]]] = {}


def rewrite(*op_types: str, below: int) -> Callable[[Rewrite], Rewrite]:
    """Register ``fn`` for ``op_types`` when the target opset is below ``below``."""

    def deco(fn: Rewrite) -> Rewrite:
        for op in op_types:
            _REWRITES.setdefault(op, []).append((below, fn))
        return fn

    return deco


@dataclass
class DowngradeContext:
    """What a rewrite may read and add: constants, inferred types, fresh names."""

    target: int
    where: str
    inits: dict[str, onnx.TensorProto]
    types: dict[str, onnx.ValueInfoProto]
    used: set[str]
    new_inits: list[onnx.TensorProto] = field(default_factory=list)

    def name(self, base: str) -> str:
        n, i = base, 1
        while n in self.used:
            n, i = f"{base}_{i}", i + 1
        self.used.add(n)
        return n

    def const(self, base: str, array: np.ndarray) -> str:
        """A new initializer holding ``array``; returns its name."""
        n = self.name(base)
        t = numpy_helper.from_array(np.asarray(array), n)
        self.new_inits.append(t)
        self.inits[n] = t
        return n

    def const_ints(self, node: onnx.NodeProto, i: int) -> list[int] | None:
        """Input ``i`` of ``node`` as a list of ints if it is an initializer."""
        if len(node.input) <= i or not node.input[i] or node.input[i] not in self.inits:
            return None
        return [int(v) for v in numpy_helper.to_array(self.inits[node.input[i]]).ravel()]

    def rank(self, name: str) -> int | None:
        vi = self.types.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            if name in self.inits:
                return len(self.inits[name].dims)
            return None
        return len(vi.type.tensor_type.shape.dim)

    def elem_type(self, name: str) -> int | None:
        if name in self.inits:
            return self.inits[name].data_type
        vi = self.types.get(name)
        return vi.type.tensor_type.elem_type if vi is not None and vi.type.tensor_type.elem_type else None

    def fail(self, node: onnx.NodeProto, why: str) -> InvalidModelError:
        return InvalidModelError(
            f"{self.where}: node '{node.name}' ({node.op_type}) cannot be written at opset {self.target}: {why}"
        )


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _node(op: str, inputs: list[str], outputs: list[str], like: onnx.NodeProto, suffix: str = "", **attrs) -> onnx.NodeProto:
    n = helper.make_node(op, inputs, outputs, name=(like.name + suffix) if like.name else "", **attrs)
    n.metadata_props.extend(like.metadata_props)
    return n


def apply(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """The registered rewrite of ``node`` for ``ctx.target``, or None."""
    for below, fn in _REWRITES.get(node.op_type, []):
        if ctx.target < below:
            out = fn(node, ctx)
            if out is not None:
                return out
    return None


def strip_default_attributes(node: onnx.NodeProto, source: int, target: int) -> onnx.NodeProto | None:
    """``node`` without the attributes the target schema lacks, when each holds the source
    schema's default (``allowzero=0``, ``antialias=0``, ``reduction='none'``, ...); None if
    a missing attribute has a non-default value."""
    try:
        a = onnx.defs.get_schema(node.op_type, source, "")
        b = onnx.defs.get_schema(node.op_type, target, "")
    except onnx.defs.SchemaError:
        return None
    extra = [at for at in node.attribute if at.name not in b.attributes]
    if not extra:
        return node
    for at in extra:
        spec = a.attributes.get(at.name)
        if spec is None or not spec.default_value.name:
            return None
        if helper.get_attribute_value(at) != helper.get_attribute_value(spec.default_value):
            return None
    out = onnx.NodeProto()
    out.CopyFrom(node)
    del out.attribute[:]
    out.attribute.extend(at for at in node.attribute if at.name in b.attributes)
    return out


# ----------------------------------------------------------------------------- reductions
_REDUCE_AXES_AS_INPUT_SINCE_18 = (
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)


@rewrite(*_REDUCE_AXES_AS_INPUT_SINCE_18, below=18)
def reduce_axes_attribute(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """Reduce-18 takes ``axes`` as an input; before, an attribute (no ``noop_with_empty_axes``)."""
    attrs = attrs_of(node)
    noop = attrs.pop("noop_with_empty_axes", 0)
    if len(node.input) >= 2 and node.input[1]:
        axes = ctx.const_ints(node, 1)
        if axes is None:
            raise ctx.fail(node, "its axes are computed at run time; opsets below 18 need constant axes")
    else:
        axes = []
    if not axes and noop:
        return [_node("Identity", [node.input[0]], list(node.output), node)]
    if axes:
        attrs["axes"] = axes
    return [_node(node.op_type, [node.input[0]], list(node.output), node, **attrs)]


@rewrite("Split", below=18)
def split_num_outputs(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """Split-18 ``num_outputs``: Split-13 without a ``split`` input divides equally into
    len(outputs) parts, the same whenever the dimension divides evenly (checked at run time);
    an uneven ``num_outputs`` split gets explicit sizes from the inferred shape."""
    attrs = attrs_of(node)
    if "num_outputs" not in attrs:
        return None
    n = attrs.pop("num_outputs")
    axis = attrs.get("axis", 0)
    vi = ctx.types.get(node.input[0])
    dims = list(vi.type.tensor_type.shape.dim) if vi is not None else []
    if dims and dims[axis].HasField("dim_value") and dims[axis].dim_value % n:
        # Split-18: every part ceil(size / n), the last one what remains
        size = dims[axis].dim_value
        chunk = math.ceil(size / n)
        sizes = [chunk] * (n - 1) + [size - chunk * (n - 1)]
        split = ctx.const(f"{node.name or node.output[0]}_split", np.asarray(sizes, np.int64))
        return [_node("Split", [node.input[0], split], list(node.output), node, **attrs)]
    return [_node("Split", [node.input[0]], list(node.output), node, **attrs)]


@rewrite("BatchNormalization", below=14)
def batchnorm_inference(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """Inference-mode BatchNormalization (one output, training_mode 0) is the same in BN-9."""
    attrs = attrs_of(node)
    if attrs.pop("training_mode", 0) or len([o for o in node.output if o]) != 1:
        raise ctx.fail(node, "training-mode BatchNormalization exists only from opset 14")
    return [_node("BatchNormalization", list(node.input), list(node.output[:1]), node, **attrs)]


# ----------------------------------------------------------------------------- shapes
@rewrite("Reshape", below=14)
def reshape_allowzero(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """Reshape-14 ``allowzero``: 0 is Reshape-13; 1 is too when the target holds no 0."""
    attrs = attrs_of(node)
    if "allowzero" not in attrs:
        return None
    if attrs.pop("allowzero"):
        target = ctx.const_ints(node, 1)
        if target is None or 0 in target:
            raise ctx.fail(node, "allowzero=1 with a zero (or run-time) target exists only from opset 14")
    return [_node("Reshape", list(node.input), list(node.output), node, **attrs)]


@rewrite("Shape", below=15)
def shape_slice(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """Shape-15 ``start``/``end``: Shape-13 then a Slice of the same range."""
    attrs = attrs_of(node)
    start, end = attrs.get("start", 0), attrs.get("end")
    if "start" not in attrs and "end" not in attrs:
        return None
    if start == 0 and end is None:
        return [_node("Shape", [node.input[0]], list(node.output), node)]
    full = ctx.name(f"{node.output[0]}_full")
    base = node.name or node.output[0]
    starts = ctx.const(f"{base}_start", np.asarray([start], np.int64))
    ends = ctx.const(f"{base}_end", np.asarray([end if end is not None else np.iinfo(np.int64).max], np.int64))
    return [
        _node("Shape", [node.input[0]], [full], node, "_full"),
        _node("Slice", [full, starts, ends], list(node.output), node),
    ]


@rewrite("Pad", below=18)
def pad_axes(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """Pad-18's ``axes`` input: expand the pads to every axis."""
    if len(node.input) < 4 or not node.input[3]:
        return None
    axes, pads = ctx.const_ints(node, 3), ctx.const_ints(node, 1)
    r = ctx.rank(node.input[0])
    if axes is None or pads is None or r is None:
        raise ctx.fail(node, "Pad with run-time axes or pads, or of unknown rank, exists only from opset 18")
    full = [0] * (2 * r)
    for k, ax in enumerate(axes):
        ax = ax + r if ax < 0 else ax
        full[ax], full[ax + r] = pads[k], pads[k + len(axes)]
    new_pads = ctx.const(f"{node.name or node.output[0]}_pads", np.asarray(full, np.int64))
    ins = [node.input[0], new_pads] + ([node.input[2]] if len(node.input) > 2 and node.input[2] else [])
    return [_node("Pad", ins, list(node.output), node, **attrs_of(node))]


# ----------------------------------------------------------------------------- activations
@rewrite("HardSwish", below=14)
def hard_swish(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """HardSwish(x) = x * HardSigmoid(x; alpha=1/6, beta=0.5)."""
    gate = ctx.name(f"{node.output[0]}_gate")
    return [
        _node("HardSigmoid", [node.input[0]], [gate], node, "_gate", alpha=1.0 / 6.0, beta=0.5),
        _node("Mul", [node.input[0], gate], list(node.output), node),
    ]


@rewrite("Mish", below=18)
def mish(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """Mish(x) = x * tanh(softplus(x))."""
    sp, th = ctx.name(f"{node.output[0]}_softplus"), ctx.name(f"{node.output[0]}_tanh")
    return [
        _node("Softplus", [node.input[0]], [sp], node, "_softplus"),
        _node("Tanh", [sp], [th], node, "_tanh"),
        _node("Mul", [node.input[0], th], list(node.output), node),
    ]


@rewrite("Gelu", below=20)
def gelu(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """Gelu(x) = 0.5 x (1 + erf(x / sqrt 2)); the tanh form with its own constants."""
    x, out, base = node.input[0], node.output[0], node.name or node.output[0]
    dtype = helper.tensor_dtype_to_np_dtype(ctx.elem_type(x) or onnx.TensorProto.FLOAT)
    half = ctx.const(f"{base}_half", np.asarray(0.5, dtype))
    one = ctx.const(f"{base}_one", np.asarray(1.0, dtype))
    names = [ctx.name(f"{out}_{s}") for s in ("inner", "act", "plus", "halfx")]
    if attrs_of(node).get("approximate", b"none") in (b"tanh", "tanh"):
        # tanh(sqrt(2/pi) * (x + 0.044715 x^3))
        c = ctx.const(f"{base}_c", np.asarray(math.sqrt(2.0 / math.pi), dtype))
        k = ctx.const(f"{base}_k", np.asarray(0.044715, dtype))
        three = ctx.const(f"{base}_three", np.asarray(3.0, dtype))
        cube, kc, s, cs = (ctx.name(f"{out}_{t}") for t in ("cube", "kcube", "sum", "scaled"))
        inner = [
            _node("Pow", [x, three], [cube], node, "_cube"),
            _node("Mul", [cube, k], [kc], node, "_kcube"),
            _node("Add", [x, kc], [s], node, "_sum"),
            _node("Mul", [s, c], [cs], node, "_scaled"),
            _node("Tanh", [cs], [names[1]], node, "_act"),
        ]
    else:
        rsqrt2 = ctx.const(f"{base}_rsqrt2", np.asarray(1.0 / math.sqrt(2.0), dtype))
        inner = [
            _node("Mul", [x, rsqrt2], [names[0]], node, "_inner"),
            _node("Erf", [names[0]], [names[1]], node, "_act"),
        ]
    return [
        *inner,
        _node("Add", [names[1], one], [names[2]], node, "_plus"),
        _node("Mul", [x, half], [names[3]], node, "_halfx"),
        _node("Mul", [names[3], names[2]], list(node.output), node),
    ]


# ----------------------------------------------------------------------------- others
@rewrite("CastLike", below=15)
def cast_like(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """CastLike(x, like) = Cast(x, to=type of like)."""
    to = ctx.elem_type(node.input[1])
    if to is None:
        raise ctx.fail(node, "the type of its second input is unknown")
    return [_node("Cast", [node.input[0]], list(node.output), node, to=to)]


@rewrite("LayerNormalization", below=17)
def layer_norm(node: onnx.NodeProto, ctx: DowngradeContext) -> list[onnx.NodeProto] | None:
    """LayerNormalization over axes [axis, rank): (x - mean) / sqrt(var + eps) * scale + bias."""
    if len([o for o in node.output if o]) > 1:
        raise ctx.fail(node, "its mean / inv-std-dev outputs exist only from opset 17")
    attrs = attrs_of(node)
    axis, eps = attrs.get("axis", -1), attrs.get("epsilon", 1e-5)
    r = ctx.rank(node.input[0])
    if axis >= 0 and r is None:
        raise ctx.fail(node, "input rank unknown")
    axes = list(range(axis, r)) if axis >= 0 else list(range(axis, 0))
    x, out = node.input[0], node.output[0]
    dtype = helper.tensor_dtype_to_np_dtype(ctx.elem_type(x) or onnx.TensorProto.FLOAT)
    e = ctx.const(f"{node.name or out}_eps", np.asarray(eps, dtype))
    mean, xc, sq, var, ve, std, norm = (ctx.name(f"{out}_{s}") for s in ("mean", "xc", "sq", "var", "ve", "std", "norm"))
    nodes = [
        _node("ReduceMean", [x], [mean], node, "_mean", axes=axes, keepdims=1),
        _node("Sub", [x, mean], [xc], node, "_xc"),
        _node("Mul", [xc, xc], [sq], node, "_sq"),
        _node("ReduceMean", [sq], [var], node, "_var", axes=axes, keepdims=1),
        _node("Add", [var, e], [ve], node, "_ve"),
        _node("Sqrt", [ve], [std], node, "_std"),
        _node("Div", [xc, std], [norm], node, "_norm"),
    ]
    has_bias = len(node.input) > 2 and node.input[2]
    scaled = ctx.name(f"{out}_scaled") if has_bias else out
    nodes.append(_node("Mul", [norm, node.input[1]], [scaled], node, "_scale" if has_bias else ""))
    if has_bias:
        nodes.append(_node("Add", [scaled, node.input[2]], [out], node))
    return nodes
