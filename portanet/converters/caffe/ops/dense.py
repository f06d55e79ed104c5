"""InnerProduct (axis, transpose)."""

from __future__ import annotations

from portanet.converters.caffe.context import Ctx, Out, prod
from portanet.converters.caffe.ops.table import HANDLERS


@HANDLERS.register("InnerProduct")
def inner_product(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    p = ctx.p.inner_product_param
    shape = ctx.shape
    axis = ctx.axis(p.axis)
    n_out, k = p.num_output, prod(shape[axis:])
    ctx.expect_blobs(2 if p.bias_term else 1, "weights, bias" if p.bias_term else "weights")
    # Caffe's weight is (N, K), or (K, N) with transpose; legacy blobs are 1x1xNxK
    w = ctx.blob(0, [k, n_out] if p.transpose else [n_out, k], "weights")
    b = ctx.blob(1, [n_out], "bias") if p.bias_term else None
    out_shape = [*shape[:axis], n_out]
    if axis == 1:
        # (N, C, H, W) -> (N, C*H*W) -> (N, num_output)
        x2 = ctx.op("Flatten", [ctx.x], {"axis": 1}) if len(shape) != 2 else ctx.x
        inputs = [x2, ctx.param("w", w)]
        if b is not None:
            inputs.append(ctx.param("b", b))
        return [Out(ctx.op("Gemm", inputs, {"transB": 0 if p.transpose else 1}), out_shape)]
    # general axis: keep dims[:axis] (copied with 0, never baking the batch), flatten the rest
    x = ctx.reshape(ctx.x, [0] * axis + [-1]) if len(shape) != axis + 1 else ctx.x
    wt = w if p.transpose else w.T
    y = ctx.op("MatMul", [x, ctx.param("w", wt)])
    if b is not None:
        y = ctx.op("Add", [y, ctx.param("b", b)])
    return [Out(y, out_shape)]
