"""Softmax / LogSoftmax over the whole sample, and ReduceElements over static axes."""

from __future__ import annotations

import math

from portanet.converters.cntk.context import (
    HANDLERS,
    Ctx,
    T,
    attr,
    is_all_axes,
    is_all_static,
    numpy_axis,
    static_axis,
)
from portanet.converters.cntk.graph import Function
from portanet.errors import ConversionError


def _whole_sample(onnx_op: str):
    def handler(ctx: Ctx, f: Function, ins: list[T]) -> T:
        """CNTK's primitive (Log)Softmax normalizes over the whole flattened sample."""
        x = ins[0]
        if x.rank <= 1 and (x.batched or x.rank == 1):
            return x.like(ctx.op(f, onnx_op, [x.value], {"axis": -1}, final=True), x.shape)
        flat = ctx.reshape(f, x, (math.prod(x.shape),))
        y = x.like(ctx.op(f, onnx_op, [flat.value], {"axis": -1}), flat.shape)
        return ctx.reshape(f, y, x.shape, final=True)

    return handler


HANDLERS.register("Softmax")(_whole_sample("Softmax"))
HANDLERS.register("LogSoftmax")(_whole_sample("LogSoftmax"))

#: CNTK reductionOpName -> ONNX op
REDUCTIONS = {"Sum": "ReduceSum", "Mean": "ReduceMean", "Max": "ReduceMax", "Min": "ReduceMin",
              "Prod": "ReduceProd", "LogSum": "ReduceLogSumExp", "Argmax": "ArgMax", "Argmin": "ArgMin"}


@HANDLERS.register("ReduceElements")
def reduce_elements(ctx: Ctx, f: Function, ins: list[T]) -> T:
    x = ins[0]
    name = str(attr(f, "reductionOpName", "Sum"))
    if name not in REDUCTIONS:
        raise ConversionError(f"reduction '{name}' is not supported (expected one of {', '.join(REDUCTIONS)})")
    keep = bool(attr(f, "reductionKeepDimensions", True))
    raw_axes = attr(f, "axisVec")
    if raw_axes is None:
        raw_axes = [attr(f, "axis")]
    if any(is_all_axes(a) for a in raw_axes):
        raise ConversionError("reducing over all axes including the batch axis is not supported")
    if any(is_all_static(a) for a in raw_axes):
        axes = list(range(x.rank))
    else:
        axes = sorted({numpy_axis(static_axis(f, a, x.rank), x.rank) for a in raw_axes})
    ir_axes = [x.axis(a) for a in axes]
    out_shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keep else \
        tuple(d for i, d in enumerate(x.shape) if i not in axes)
    op = REDUCTIONS[name]
    if op in ("ArgMax", "ArgMin"):
        if len(axes) != 1:
            raise ConversionError(f"{name} over {len(axes)} axes is not supported (one axis expected)")
        idx = ctx.op(f, op, [x.value], {"axis": ir_axes[0], "keepdims": int(keep)})
        # CNTK returns the index as a float tensor
        return x.like(ctx.op(f, "Cast", [idx], {"to": 1}, final=True), out_shape)
    y = ctx.op(f, op, [x.value, ctx.i64(ir_axes)], {"keepdims": int(keep)}, final=True)
    return x.like(y, out_shape)
