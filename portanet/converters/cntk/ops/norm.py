"""BatchNormalization at inference: ``(x - mean) / sqrt(var + eps) * scale + bias``.

Inputs are ``[x, scale, bias, runMean, runVar(, runCount)]`` (5 inputs before function
version 4). The 5th input is named "runningInvStd" in CNTK but has held the running
*variance* since model version 13. ``spatial=True`` parameters have one value per channel
(ONNX BatchNormalization); ``spatial=False`` parameters cover the whole sample, often
flattened to 1-D - CNTK's column-major flattening of [W, H, C] equals NumPy's row-major
flattening of (C, H, W), so they reshape to the sample shape and are applied elementwise.
"""

from __future__ import annotations

import numpy as np

from portanet.converters.cntk.context import HANDLERS, Ctx, T, attr
from portanet.converters.cntk.graph import Function
from portanet.errors import ConversionError


def _param(ctx: Ctx, f: Function, t: T, shape: tuple[int, ...], what: str) -> T:
    """A BN parameter reshaped to ``shape`` (folded at import for stored tensors)."""
    size = int(np.prod(shape))
    if int(np.prod(t.shape)) != size:
        raise ConversionError(f"expected {what} with {size} values for an operand of shape {list(shape)}, "
                              f"received shape {list(t.shape)}")
    if t.batched:
        raise ConversionError(f"{what} must not have a batch axis")
    if t.shape == shape:
        return t
    if t.array is not None:
        arr = t.array.reshape(shape)
        return T(ctx.b.initializer(t.value.name or f"{f.uid}_{what}", arr), shape, False, arr)
    return ctx.reshape(f, t, shape)


@HANDLERS.register("BatchNormalization")
def batch_norm(ctx: Ctx, f: Function, ins: list[T]) -> T:
    if len(ins) not in (5, 6):
        raise ConversionError(f"expected 5 or 6 inputs (x, scale, bias, mean, variance[, count]), received {len(ins)}")
    x, scale, bias, mean, var = ins[:5]
    eps = float(attr(f, "epsilon", 0.0) or 0.0)
    spatial = bool(attr(f, "spatial", False))
    if spatial:
        if x.rank < 1:
            raise ConversionError(f"spatial batch normalization needs a channel axis, received shape {list(x.shape)}")
        c = (x.shape[0],)
        params = [_param(ctx, f, t, c, n).value for t, n in
                  ((scale, "scale"), (bias, "bias"), (mean, "mean"), (var, "variance"))]
        if x.seq:  # every step normalized on its own: (N, T, C, ...) -> (N*T, C, ...)
            folded, lead = ctx.fold_time(f, x)
            y = ctx.op(f, "BatchNormalization", [folded, *params], {"epsilon": eps})
            return x.like(ctx.unfold_time(f, y, lead, x.shape, final=True), x.shape)
        if x.batched and x.rank >= 1:
            y = ctx.op(f, "BatchNormalization", [x.value, *params], {"epsilon": eps}, final=True)
            return T(y, x.shape, True)
        xb = ctx.op(f, "Unsqueeze", [x.value, ctx.i64([0])])
        y = ctx.op(f, "BatchNormalization", [xb, *params], {"epsilon": eps})
        return T(ctx.op(f, "Squeeze", [y, ctx.i64([0])], final=True), x.shape, False)
    # non-spatial: elementwise over the whole sample
    s, b, m, v = (_param(ctx, f, t, x.shape, n) for t, n in
                  ((scale, "scale"), (bias, "bias"), (mean, "mean"), (var, "variance")))
    centered = ctx.op(f, "Sub", [x.value, m.value])
    std = ctx.op(f, "Sqrt", [ctx.op(f, "Add", [v.value, ctx.const(np.float32(eps))])])
    normed = ctx.op(f, "Div", [centered, std])
    scaled = ctx.op(f, "Mul", [normed, s.value])
    return x.like(ctx.op(f, "Add", [scaled, b.value], final=True), x.shape)
