"""Shape ops: Reshape (begin/end axis), Splice, Slice, TransposeAxes, Pad, Squeeze.

Axis attributes are CNTK static axes (CNTK order, possibly negative); ``numpy_axis`` maps
them to NumPy sample axes (CNTK dims are reversed).
"""

from __future__ import annotations

import math

import numpy as np

from portanet.converters.cntk.context import (
    HANDLERS,
    Ctx,
    T,
    attr,
    dynamic_of,
    numpy_axis,
    shape_attr,
    static_axis,
)
from portanet.converters.cntk.graph import Function
from portanet.converters.cntk.reader import Axis
from portanet.errors import ConversionError


@HANDLERS.register("Reshape")
def reshape(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """Replace CNTK axes [beginAxis, endAxis) by ``newShape`` (0 copies, -1/inferred fills)."""
    x = ins[0]
    rank = x.rank
    cntk_in = list(reversed(x.shape))
    begin_a, end_a = attr(f, "beginAxis"), attr(f, "endAxis")
    begin = static_axis(f, begin_a, rank, allow_new=True) if isinstance(begin_a, Axis) and begin_a.is_static else 0
    end = rank
    if isinstance(end_a, Axis) and end_a.is_static:
        end = end_a.static_axis_idx + (rank if end_a.static_axis_idx < 0 else 0)
        if not begin <= end <= rank:
            raise ConversionError(f"endAxis {end_a.static_axis_idx} is out of range for a rank-{rank} operand")
    new = shape_attr(f, "newShape")
    replaced = cntk_in[begin:end]
    dims = []
    for i, d in enumerate(new):
        if d == 0 and i < len(replaced):
            d = replaced[i]
        dims.append(d)
    total = math.prod(replaced)
    if dims.count(-1) > 1:
        raise ConversionError(f"newShape {new} has more than one inferred dimension")
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or total % known:
            raise ConversionError(f"cannot infer a dimension of {new} for {total} elements")
        dims[dims.index(-1)] = total // known
    if math.prod(dims) != total:
        raise ConversionError(f"newShape {new} (CNTK order) has {math.prod(dims)} elements, the replaced axes "
                              f"{replaced} have {total}")
    out_cntk = cntk_in[:begin] + dims + cntk_in[end:]
    return ctx.reshape(f, x, tuple(reversed(out_cntk)), final=True)


@HANDLERS.register("Splice")
def splice(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """Concatenate along a CNTK axis; the axis may be one past the last (a new axis)."""
    if not ins:
        raise ConversionError("expected at least 1 input")
    rank = max(t.rank for t in ins)
    batched = any(t.batched for t in ins)
    if batched and not all(t.batched for t in ins):
        raise ConversionError("splicing batched and unbatched operands is not supported")
    dyn = dynamic_of(f, *ins)
    a = attr(f, "axis")
    idx = static_axis(f, a, rank, allow_new=True) if a is not None else rank - 1
    parts: list[T] = []
    for t in ins:
        if t.rank < rank:  # CNTK pads missing trailing CNTK axes (leading NumPy axes) with 1
            t = ctx.reshape(f, t, (1,) * (rank - t.rank) + t.shape)
        if idx == rank:
            t = ctx.reshape(f, t, (1,) + t.shape)
        parts.append(t)
    new_rank = rank + (1 if idx == rank else 0)
    ax = numpy_axis(idx, new_rank)
    shape = list(parts[0].shape)
    for t in parts[1:]:
        others = [d for i, d in enumerate(t.shape) if i != ax]
        if others != [d for i, d in enumerate(shape) if i != ax]:
            raise ConversionError(f"operand shapes {[list(p.shape) for p in parts]} differ off the splice axis")
        shape[ax] += t.shape[ax]
    if len(parts) == 1:
        return parts[0]
    y = ctx.op(f, "Concat", [p.value for p in parts], {"axis": parts[0].axis(ax)}, final=True)
    return dyn.like(y, tuple(shape))


@HANDLERS.register("Slice")
def slice_(ctx: Ctx, f: Function, ins: list[T]) -> T:
    x = ins[0]
    if "axisVec" in f.attributes:
        axes = list(attr(f, "axisVec"))
        begins = [int(v) for v in attr(f, "beginIndexVec", [])]
        ends = [int(v) for v in attr(f, "endIndexVec", [])]
        steps = [int(v) for v in attr(f, "sliceStridesVec", [1] * len(axes))]
    else:
        axes = [attr(f, "axis")]
        begins = [int(attr(f, "beginIndex", 0))]
        ends = [int(attr(f, "endIndex", 0))]
        steps = [int(attr(f, "sliceStrides", 1))]
    if not (len(axes) == len(begins) == len(ends) == len(steps)):
        raise ConversionError("slice axis/begin/end vectors differ in length")
    shape = list(x.shape)
    ir_axes, starts, stops, strides = [], [], [], []
    for a, b, e, s in zip(axes, begins, ends, steps):
        ax = numpy_axis(static_axis(f, a, x.rank), x.rank)
        d = shape[ax]
        b = b + d if b < 0 else b
        e = d if e == 0 else (e + d if e < 0 else e)  # CNTK: endIndex 0 means "to the end"
        b, e = max(0, min(b, d)), max(0, min(e, d))
        if s < 1:
            raise ConversionError(f"slice stride {s} is not supported (positive strides only)")
        shape[ax] = max(0, -(-(e - b) // s))
        ir_axes.append(x.axis(ax))
        starts.append(b)
        stops.append(e)
        strides.append(s)
    y = ctx.op(f, "Slice", [x.value, ctx.i64(starts), ctx.i64(stops), ctx.i64(ir_axes), ctx.i64(strides)], final=True)
    return x.like(y, tuple(shape))


@HANDLERS.register("TransposeAxes")
def transpose_axes(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """Swap two CNTK axes (axis1/axis2), or permute them (axisVec: output CNTK axis i is input
    CNTK axis perm[i])."""
    x = ins[0]
    rank = x.rank
    if "axisVec" in f.attributes:
        perm_cntk = [static_axis(f, a, rank) for a in attr(f, "axisVec")]
        if sorted(perm_cntk) != list(range(rank)):
            raise ConversionError(f"axisVec {perm_cntk} is not a permutation of {rank} axes")
    else:
        a1 = static_axis(f, attr(f, "axis1"), rank)
        a2 = static_axis(f, attr(f, "axis2"), rank)
        perm_cntk = list(range(rank))
        perm_cntk[a1], perm_cntk[a2] = perm_cntk[a2], perm_cntk[a1]
    # output NumPy axis j = CNTK axis rank-1-j, which takes input CNTK axis perm[rank-1-j]
    perm_np = [numpy_axis(perm_cntk[rank - 1 - j], rank) for j in range(rank)]
    shape = tuple(x.shape[p] for p in perm_np)
    full = list(range(x.lead)) + [x.axis(p) for p in perm_np]
    return x.like(ctx.op(f, "Transpose", [x.value], {"perm": full}, final=True), shape)


_PAD_MODES = {0: "constant", 1: "reflect"}


@HANDLERS.register("Pad")
def pad(ctx: Ctx, f: Function, ins: list[T]) -> T:
    x = ins[0]
    mode = int(attr(f, "paddingMode", 0))
    if mode not in _PAD_MODES:
        raise ConversionError(f"padding mode {mode} is not supported (0=constant, 1=reflect; 2=symmetric has no ONNX equivalent)")
    head = shape_attr(f, "paddingHead")
    foot = shape_attr(f, "paddingFoot")
    rank = x.rank
    head = (head + [0] * rank)[:rank]
    foot = (foot + [0] * rank)[:rank]
    begins = list(reversed(head))  # CNTK order -> NumPy order
    ends = list(reversed(foot))
    lead = [0] * x.lead
    pads = lead + begins + lead + ends
    shape = tuple(d + b + e for d, b, e in zip(x.shape, begins, ends))
    value = float(attr(f, "paddingConstantValue", 0.0) or 0.0)
    inputs = [x.value, ctx.i64(pads)]
    if _PAD_MODES[mode] == "constant":
        inputs.append(ctx.const(np.float32(value)))
    return x.like(ctx.op(f, "Pad", inputs, {"mode": _PAD_MODES[mode]}, final=True), shape)


@HANDLERS.register("Squeeze")
def squeeze(ctx: Ctx, f: Function, ins: list[T]) -> T:
    x = ins[0]
    if "axisVec" in f.attributes or "axis" in f.attributes:
        raw = attr(f, "axisVec") or [attr(f, "axis")]
        drop = {numpy_axis(static_axis(f, a, x.rank), x.rank) for a in raw}
        for a in drop:
            if x.shape[a] != 1:
                raise ConversionError(f"cannot squeeze axis of size {x.shape[a]} (NumPy axis {a} of {list(x.shape)})")
    else:
        drop = {i for i, d in enumerate(x.shape) if d == 1}
    shape = tuple(d for i, d in enumerate(x.shape) if i not in drop)
    return ctx.reshape(f, x, shape, final=True)
