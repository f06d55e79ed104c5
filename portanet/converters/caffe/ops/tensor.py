"""Layers that combine, split or rearrange blobs: Concat, Slice, Split, Eltwise, Flatten,
Reshape, Softmax, Crop, Permute, ArgMax, Reduction, Tile, Silence."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.converters.caffe.context import Ctx, Out, prod
from portanet.converters.caffe.ops.table import HANDLERS
from portanet.errors import ConversionError

PROD, SUM, MAX = 0, 1, 2


@HANDLERS.register("Concat")
def concat(ctx: Ctx) -> list[Out]:
    p = ctx.p.concat_param
    axis = ctx.axis(p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim)
    first = ctx.shape
    for i, s in enumerate(ctx.shapes[1:], 1):
        if len(s) != len(first) or any(a != b for j, (a, b) in enumerate(zip(s, first)) if j != axis):
            raise ConversionError(f"bottom {i} has shape {s}, expected {first} except on axis {axis}")
    out = list(first)
    out[axis] = sum(s[axis] for s in ctx.shapes)
    if len(ctx.inputs) == 1:
        return [Out(ctx.op("Identity", [ctx.x]), out)]
    return [Out(ctx.op("Concat", ctx.inputs, {"axis": axis}), out)]


@HANDLERS.register("Slice")
def slice_(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    p = ctx.p.slice_param
    if p.HasField("axis") and p.HasField("slice_dim"):
        raise ConversionError("sets both axis and slice_dim")
    axis = ctx.axis(p.slice_dim if p.HasField("slice_dim") else p.axis)
    size, n = ctx.shape[axis], len(ctx.layer.tops)
    points = list(p.slice_point)
    if points:
        if len(points) != n - 1:
            raise ConversionError(f"expected {n - 1} slice_point(s) for {n} tops, received {len(points)}")
        bounds = [0, *points, size]
        # every slice non-empty: Caffe accepts a last point equal to the size at set-up but then
        # fails on the empty top
        if any(b <= a for a, b in zip(bounds, bounds[1:])):
            raise ConversionError(f"slice points {points} must increase strictly within axis size {size}")
    else:
        if size % n:
            raise ConversionError(f"axis {axis} of size {size} does not split equally into {n} tops")
        bounds = [i * size // n for i in range(n + 1)]
    sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    outs = ctx.op("Split", [ctx.x, ctx.ints(sizes)], {"axis": axis}, outputs=list(ctx.layer.tops))
    outs = outs if isinstance(outs, tuple) else (outs,)
    result = []
    for v, s in zip(outs, sizes):
        shape = list(ctx.shape)
        shape[axis] = s
        result.append(Out(v, shape))
    return result


@HANDLERS.register("Split")
def split(ctx: Ctx) -> list[Out]:
    """Copies of the bottom: every top is the same IR value."""
    ctx.expect_bottoms(1)
    return [Out(ctx.x, ctx.shape) for _ in ctx.layer.tops]


@HANDLERS.register("Eltwise")
def eltwise(ctx: Ctx) -> list[Out]:
    p = ctx.p.eltwise_param
    if len(ctx.inputs) < 2:
        raise ConversionError(f"expected at least 2 bottoms, received {len(ctx.inputs)}")
    for i, s in enumerate(ctx.shapes[1:], 1):
        if s != ctx.shape:
            raise ConversionError(f"bottom {i} has shape {s}, expected {ctx.shape} (no broadcasting)")
    coeff = list(p.coeff)
    if coeff and p.operation != SUM:
        raise ConversionError("coeff is only allowed with operation SUM")
    if coeff and len(coeff) != len(ctx.inputs):
        raise ConversionError(f"expected one coeff per bottom ({len(ctx.inputs)}), received {len(coeff)}")
    if p.operation == SUM:
        terms = [
            x if not coeff or coeff[i] == 1.0 else ctx.op("Mul", [x, ctx.fconst(np.float32(coeff[i]))])
            for i, x in enumerate(ctx.inputs)
        ]
        y = ctx.op("Add", terms) if len(terms) == 2 else ctx.op("Sum", terms)
    elif p.operation == PROD:
        y = ctx.inputs[0]
        for x in ctx.inputs[1:]:
            y = ctx.op("Mul", [y, x])
    elif p.operation == MAX:
        y = ctx.op("Max", ctx.inputs)
    else:
        raise ConversionError(f"unknown operation {p.operation}")
    return [Out(y, ctx.shape)]


@HANDLERS.register("Flatten")
def flatten(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    p = ctx.p.flatten_param
    shape = ctx.shape
    axis, end = ctx.axis(p.axis), ctx.axis(p.end_axis)
    if end < axis:
        raise ConversionError(f"end_axis {p.end_axis} is before axis {p.axis} for {shape}")
    out = [*shape[:axis], prod(shape[axis : end + 1]), *shape[end + 1 :]]
    if axis == 1 and end == len(shape) - 1:
        return [Out(ctx.op("Flatten", [ctx.x], {"axis": 1}), out)]
    # leading dims copied (0), the flattened run inferred (-1), trailing dims explicit
    return [Out(ctx.reshape(ctx.x, [0] * axis + [-1] + shape[end + 1 :]), out)]


@HANDLERS.register("Reshape")
def reshape(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    p = ctx.p.reshape_param
    shape = ctx.shape
    rank = len(shape)
    axis = p.axis if p.axis >= 0 else rank + p.axis + 1
    if not 0 <= axis <= rank:
        raise ConversionError(f"axis {p.axis} is out of range for {shape}")
    end = rank if p.num_axes == -1 else axis + p.num_axes
    if p.num_axes < -1 or end > rank:
        raise ConversionError(f"num_axes {p.num_axes} from axis {axis} does not fit {shape}")
    spec = [int(d) for d in p.shape.dim]
    if spec.count(-1) > 1:
        raise ConversionError(f"shape {spec} has more than one -1")
    # Caffe's 0 copies input dim axis+i, which sits at the same output index: ONNX's 0 too
    full = [0] * axis + spec + shape[end:]
    out = [shape[i] if d == 0 else d for i, d in enumerate(full)]
    if -1 in out:
        known = prod([d for d in out if d != -1])
        if known == 0 or prod(shape) % known:
            raise ConversionError(f"cannot reshape {shape} to {spec}")
        out[out.index(-1)] = prod(shape) // known
    if prod(out) != prod(shape):
        raise ConversionError(f"cannot reshape {shape} ({prod(shape)} values) to {out} ({prod(out)} values)")
    return [Out(ctx.reshape(ctx.x, full), out)]


@HANDLERS.register("Softmax")
def softmax(ctx: Ctx) -> list[Out]:
    """Normalises over one axis only (ONNX Softmax semantics since opset 13)."""
    ctx.expect_bottoms(1)
    axis = ctx.axis(ctx.p.softmax_param.axis)
    return [Out(ctx.op("Softmax", [ctx.x], {"axis": axis}), ctx.shape)]


@HANDLERS.register("Crop")
def crop(ctx: Ctx) -> list[Out]:
    """Dims from ``axis`` on take bottom 1's size, starting at ``offset``."""
    ctx.expect_bottoms(2)
    p = ctx.p.crop_param
    s0, s1 = ctx.shapes
    if len(s0) != len(s1):
        raise ConversionError(f"bottoms have ranks {len(s0)} and {len(s1)}, expected equal")
    axis = ctx.axis(p.axis)
    n = len(s0) - axis
    offsets = list(p.offset)
    if not offsets:
        offsets = [0] * n
    elif len(offsets) == 1:
        offsets = offsets * n
    elif len(offsets) != n:
        raise ConversionError(f"expected 0, 1 or {n} offsets, received {len(offsets)}")
    out = list(s0[:axis]) + list(s1[axis:])
    for i, off in enumerate(offsets):
        if off + s1[axis + i] > s0[axis + i]:
            raise ConversionError(
                f"crop of {s1[axis + i]} at offset {off} exceeds bottom 0's size {s0[axis + i]} on axis {axis + i}"
            )
    axes = list(range(axis, len(s0)))
    if axis == 0:
        # the batch is cropped to bottom 1's: take the end from its runtime shape
        ends = ctx.op("Add", [ctx.op("Shape", [ctx.inputs[1]]), ctx.ints(offsets)])
    else:
        ends = ctx.ints([o + s1[a] for o, a in zip(offsets, axes)])
    y = ctx.op("Slice", [ctx.x, ctx.ints(offsets), ends, ctx.ints(axes)])
    return [Out(y, out)]


@HANDLERS.register("Permute")
def permute(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    rank = len(ctx.shape)
    order = [int(a) for a in ctx.p.permute_param.order]
    if any(a >= rank for a in order) or len(set(order)) != len(order):
        raise ConversionError(f"order {order} is not a permutation of the axes of {ctx.shape}")
    order += [a for a in range(rank) if a not in order]  # unlisted axes keep their order
    return [Out(ctx.op("Transpose", [ctx.x], {"perm": order}), [ctx.shape[a] for a in order])]


@HANDLERS.register("ArgMax")
def argmax(ctx: Ctx) -> list[Out]:
    """Top-k indices (as floats) or values along ``axis``; without an axis, over each
    sample's flattened values with output (N, 1 or 2, top_k, 1...)."""
    ctx.expect_bottoms(1)
    p = ctx.p.argmax_param
    shape = ctx.shape
    k = int(p.top_k)
    if p.HasField("axis"):
        axis = ctx.axis(p.axis)
        if k > shape[axis]:
            raise ConversionError(f"top_k {k} exceeds axis {axis} of size {shape[axis]}")
        values, indices = ctx.op("TopK", [ctx.x, ctx.ints([k])], {"axis": axis}, outputs=2)
        out = list(shape)
        out[axis] = k
        y = values if p.out_max_val else ctx.op("Cast", [indices], {"to": ir.DataType.FLOAT})
        return [Out(y, out)]
    if k > prod(shape[1:]):
        raise ConversionError(f"top_k {k} exceeds the {prod(shape[1:])} values per sample")
    flat = ctx.op("Flatten", [ctx.x], {"axis": 1})  # (N, C*H*W)
    values, indices = ctx.op("TopK", [flat, ctx.ints([k])], {"axis": 1}, outputs=2)
    idx = ctx.op("Cast", [indices], {"to": ir.DataType.FLOAT})
    rank = max(len(shape), 3)
    trailing = [1] * (rank - 3)
    if p.out_max_val:
        y = ctx.op("Concat", [idx, values], {"axis": 1})  # (N, 2k): indices then values
        return [Out(ctx.reshape(y, [0, 2, k, *trailing]), [shape[0], 2, k, *trailing])]
    return [Out(ctx.reshape(idx, [0, 1, k, *trailing]), [shape[0], 1, k, *trailing])]


_REDUCE = {1: "ReduceSum", 2: "ReduceL1", 3: "ReduceSumSquare", 4: "ReduceMean"}


@HANDLERS.register("Reduction")
def reduction(ctx: Ctx) -> list[Out]:
    """SUM / ASUM / SUMSQ / MEAN over all axes from ``axis`` on, times ``coeff``."""
    ctx.expect_bottoms(1)
    p = ctx.p.reduction_param
    if p.operation not in _REDUCE:
        raise ConversionError(f"unknown operation {p.operation}")
    axis = ctx.axis(p.axis)
    axes = ctx.ints(list(range(axis, len(ctx.shape))))
    y = ctx.op(_REDUCE[p.operation], [ctx.x, axes], {"keepdims": 0})
    if p.coeff != 1.0:
        y = ctx.op("Mul", [y, ctx.fconst(np.float32(p.coeff))])
    return [Out(y, ctx.shape[:axis])]


@HANDLERS.register("Tile")
def tile(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    p = ctx.p.tile_param
    if not p.HasField("tiles") or p.tiles < 1:
        raise ConversionError("tiles must be set to a positive number")
    axis = ctx.axis(p.axis)
    repeats = [1] * len(ctx.shape)
    repeats[axis] = p.tiles
    out = list(ctx.shape)
    out[axis] *= p.tiles
    return [Out(ctx.op("Tile", [ctx.x, ctx.ints(repeats)]), out)]


@HANDLERS.register("Silence")
def silence(ctx: Ctx) -> list[Out]:
    """Consumes its bottoms (so they are not net outputs); produces nothing."""
    return []
