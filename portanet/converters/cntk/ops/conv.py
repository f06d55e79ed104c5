"""Convolution and Pooling with CNTK's geometry (ConvolveGeometry).

All attribute vectors are in CNTK order (W, H, C for an image) and padded to the input rank
the way CNTK does (``fix_vector``). With ``autoPadding`` the output size is
``ceil(in / stride)`` and the padding is split as CNTK does, which for even inputs and
stride 2 puts the extra cell at the *start* ((1, 0) for k=3, in=32) - unlike ONNX
SAME_UPPER - so explicit ``pads`` are always emitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from portanet.converters.cntk.context import HANDLERS, Ctx, T, attr, bool_vec, fix_vector, shape_attr
from portanet.converters.cntk.graph import Function
from portanet.errors import ConversionError


@dataclass
class DimGeometry:
    """One CNTK axis of a convolution/pooling: output size and (lower, upper) padding."""

    out: int
    lo: int
    hi: int


def dim_geometry(size: int, kernel: int, stride: int, dilation: int, auto: bool, lo: int, hi: int,
                 ceil_out: bool) -> DimGeometry:
    """CNTK's output size and padding of one axis (ConvolveGeometry's formulas)."""
    eff = (kernel - 1) * dilation + 1
    padded = size + (eff - 1 if auto else lo + hi)
    if padded < eff:
        raise ConversionError(f"kernel extent {eff} exceeds the (padded) input size {padded}")
    q = (padded - eff) / stride + 1
    out = int(math.ceil(q) if ceil_out else math.floor(q))
    if auto:
        # the first kernel centre sits at extra // 2, the rest of `extra` is left over at the end
        extra = size - ((out - 1) * stride + 1)
        lo = (eff - 1) // 2 - extra // 2
        hi = (eff - 1) - (eff - 1) // 2 - (extra - extra // 2)
    # windows that run past the padded end (ceilOutDim) read padding too: extend the end pad
    need = (out - 1) * stride + eff - size - lo
    hi = max(hi, need)
    return DimGeometry(out, lo, hi)


def _onnx_pads(geo: list[DimGeometry]) -> list[int]:
    """Per-CNTK-axis geometry of the spatial axes -> ONNX pads (NumPy order: begins, ends)."""
    rev = list(reversed(geo))
    return [g.lo for g in rev] + [g.hi for g in rev]


def _check_pads(geo: list[DimGeometry]) -> None:
    for g in geo:
        if g.lo < 0 or g.hi < 0:
            raise ConversionError(f"negative padding ({g.lo}, {g.hi}) is not supported")


@HANDLERS.register("Convolution")
def convolution(ctx: Ctx, f: Function, ins: list[T]) -> T:
    if len(ins) != 2:
        raise ConversionError(f"expected 2 inputs (W, x), received {len(ins)}")
    w, x = ins
    if w.batched:
        raise ConversionError("convolution with data-dependent weights is not supported")
    rank = x.rank  # CNTK input rank, e.g. 3 for [W, H, C]
    if rank < 2:
        raise ConversionError(f"expected an input with channels and >= 1 spatial axis, received shape {list(x.shape)}")
    if w.rank != rank + 1:
        raise ConversionError(f"expected weights of rank {rank + 1} for a rank-{rank} input, received {list(w.shape)}")
    transpose = bool(attr(f, "transpose", False))
    groups = int(attr(f, "groups", 1) or 1)
    # W in NumPy order: (Cout, Cin/groups, spatial...) (for transpose: (Cin, Cout/groups, ...))
    cin = x.shape[0]
    kernel_cntk = list(reversed(w.shape[1:]))  # [kW, kH, Cin/g]
    sharing = fix_vector(bool_vec(f, "sharing", True), rank, rank, True)
    if not all(sharing):
        raise ConversionError("convolution without weight sharing (sharing=False) is not supported")
    strides = fix_vector(shape_attr(f, "strides", (1,)), rank, rank, 1)
    dilation = fix_vector(shape_attr(f, "dilation", (1,)), rank, rank, 1)
    autopad = fix_vector(bool_vec(f, "autoPadding", True), rank, rank, False)
    lower = fix_vector(shape_attr(f, "lowerPad", (0,)), rank, rank, 0)
    upper = fix_vector(shape_attr(f, "upperPad", (0,)), rank, rank, 0)
    nsp = rank - 1
    if transpose:
        return _conv_transpose(ctx, f, x, w, kernel_cntk, strides, dilation, autopad, lower, upper, groups)
    if kernel_cntk[-1] * groups != cin:
        raise ConversionError(
            f"expected weights with {cin // max(groups, 1)} input channels (groups={groups}), received {list(w.shape)}"
        )
    geo = [dim_geometry(x.shape[rank - 1 - i], kernel_cntk[i], strides[i], dilation[i], autopad[i], lower[i],
                        upper[i], False) for i in range(nsp)]
    _check_pads(geo)
    if groups == 1:
        # the kernel spans all channels: CNTK's channel axis must reduce to one position per map
        ch = dim_geometry(cin, kernel_cntk[-1], strides[-1], 1, autopad[-1], lower[-1], upper[-1], False)
        if ch.out != 1 or ch.lo or ch.hi:
            raise ConversionError(
                f"convolution along the channel axis is not supported: channel stride {strides[-1]}, auto-padding "
                f"{autopad[-1]} and pads ({lower[-1]}, {upper[-1]}) give {ch.out} positions, expected 1"
            )
    out_shape = (w.shape[0],) + tuple(g.out for g in reversed(geo))
    attrs = {
        "kernel_shape": list(reversed(kernel_cntk[:nsp])),
        "strides": list(reversed(strides[:nsp])),
        "dilations": list(reversed(dilation[:nsp])),
        "pads": _onnx_pads(geo),
        "group": groups,
    }
    return _batched_call(ctx, f, x, "Conv", [w.value], attrs, out_shape)


def _batched_call(ctx: Ctx, f: Function, x: T, op: str, extra_inputs: list, attrs: dict, out_shape) -> T:
    """ONNX conv/pool ops need (N, C, spatial...): add a unit batch axis to unbatched operands;
    fold a sequence's time axis into the batch (every step is convolved on its own)."""
    if x.seq:
        folded, lead = ctx.fold_time(f, x)
        y = ctx.op(f, op, [folded, *extra_inputs], attrs)
        return x.like(ctx.unfold_time(f, y, lead, tuple(out_shape), final=True), tuple(out_shape))
    if x.batched:
        return T(ctx.op(f, op, [x.value, *extra_inputs], attrs, final=True), tuple(out_shape), True)
    xb = ctx.op(f, "Unsqueeze", [x.value, ctx.i64([0])])
    y = ctx.op(f, op, [xb, *extra_inputs], attrs)
    return T(ctx.op(f, "Squeeze", [y, ctx.i64([0])], final=True), tuple(out_shape), False)


def _conv_transpose(ctx, f, x, w, kernel_cntk, strides, dilation, autopad, lower, upper, groups) -> T:
    """Transposed convolution: the adjoint of a forward convolution whose input has the
    output's size, so CNTK's forward padding rule gives the pads."""
    rank = x.rank
    nsp = rank - 1
    cin = x.shape[0]
    if w.shape[0] != cin:
        raise ConversionError(f"expected transposed-convolution weights with {cin} input channels, received {list(w.shape)}")
    cout = w.shape[1] * groups
    out_req = shape_attr(f, "outputShape", (0,))
    if out_req and len(out_req) >= nsp and any(out_req):
        out_req = list(out_req)
    else:
        out_req = []
    pads_lo, pads_hi, out_pad, out_sp = [], [], [], []
    for i in range(nsp):
        size = x.shape[rank - 1 - i]
        k, s, d = kernel_cntk[i], strides[i], dilation[i]
        eff = (k - 1) * d + 1
        if out_req:
            o = out_req[i]
        elif autopad[i]:
            o = (size - 1) * s + 1
        else:
            o = (size - 1) * s + eff - (lower[i] + upper[i])
        if autopad[i]:
            extra = o - ((size - 1) * s + 1)
            lo = (eff - 1) // 2 - extra // 2
            hi = (eff - 1) - (eff - 1) // 2 - (extra - extra // 2)
        else:
            lo, hi = lower[i], upper[i]
        # ONNX: out = s*(in-1) + output_padding + eff - lo - hi
        op_ = o - (s * (size - 1) + eff - lo - hi)
        if op_ < 0:
            hi += -op_
            op_ = 0
        if lo < 0 or hi < 0:
            raise ConversionError(f"transposed convolution needs negative padding ({lo}, {hi}); not supported")
        pads_lo.append(lo)
        pads_hi.append(hi)
        out_pad.append(op_)
        out_sp.append(o)
    attrs = {
        "kernel_shape": list(reversed(kernel_cntk[:nsp])),
        "strides": list(reversed(strides[:nsp])),
        "dilations": list(reversed(dilation[:nsp])),
        "pads": list(reversed(pads_lo)) + list(reversed(pads_hi)),
        "group": groups,
    }
    if any(out_pad):
        attrs["output_padding"] = list(reversed(out_pad))
    out_shape = (cout,) + tuple(reversed(out_sp))
    return _batched_call(ctx, f, x, "ConvTranspose", [w.value], attrs, out_shape)


@HANDLERS.register("Pooling")
def pooling(ctx: Ctx, f: Function, ins: list[T]) -> T:
    x = ins[0]
    rank = x.rank
    ptype = int(attr(f, "poolingType", 0))
    if ptype not in (0, 1):
        raise ConversionError(f"poolingType {ptype} is unknown (expected 0=max, 1=average)")
    window = shape_attr(f, "poolingWindowShape")
    if not window:
        raise ConversionError("poolingWindowShape is missing")
    wr = len(window)
    window = fix_vector(window, wr, rank, 1)
    strides = fix_vector(shape_attr(f, "strides", (1,)), wr, rank, 1)
    autopad = fix_vector(bool_vec(f, "autoPadding", False), wr, rank, False)
    lower = fix_vector(shape_attr(f, "lowerPad", (0,)), wr, rank, 0)
    upper = fix_vector(shape_attr(f, "upperPad", (0,)), wr, rank, 0)
    ceil_out = bool(attr(f, "ceilOutDim", False))
    include_pad = bool(attr(f, "includePad", False))
    geo = [dim_geometry(x.shape[rank - 1 - i], window[i], strides[i], 1, autopad[i], lower[i], upper[i], ceil_out)
           for i in range(rank)]
    _check_pads(geo)
    # axes beyond the window (the channel axis) must pass through unchanged
    nsp = wr if wr < rank else rank - 1
    for i in range(nsp, rank):
        if geo[i].out != x.shape[rank - 1 - i] or geo[i].lo or geo[i].hi:
            raise ConversionError("pooling across the channel axis is not supported")
    geo_sp = geo[:nsp]
    # ONNX pools over the trailing axes after (N, C): pool axes are the last `nsp` NumPy axes
    if rank - nsp != 1:
        raise ConversionError(f"expected pooling over all axes but the channel axis; window {window}, input {list(x.shape)}")
    attrs = {
        "kernel_shape": list(reversed(window[:nsp])),
        "strides": list(reversed(strides[:nsp])),
        "pads": _onnx_pads(geo_sp),
    }
    if ptype == 1:
        attrs["count_include_pad"] = 1 if include_pad else 0
    out_shape = (x.shape[0],) + tuple(g.out for g in reversed(geo_sp))
    return _batched_call(ctx, f, x, "MaxPool" if ptype == 0 else "AveragePool", [], attrs, out_shape)
