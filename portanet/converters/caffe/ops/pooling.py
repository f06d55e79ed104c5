"""Pooling: MAX / AVE / STOCHASTIC (test-time), Caffe's ceil rounding with its clip rule,
FLOOR rounding, global pooling, and AVE divisors that count padding.

ONNX pools are given explicit (possibly asymmetric) pads and ``ceil_mode=0`` so that they
produce exactly Caffe's output size; where Caffe's AVE divisor differs from every ONNX
``count_include_pad`` choice, the window sums are rescaled by a constant divisor map.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from portanet.converters.caffe.context import Ctx, Out
from portanet.converters.caffe.ops.table import HANDLERS
from portanet.errors import ConversionError

MAX, AVE, STOCHASTIC = 0, 1, 2
CEIL, FLOOR = 0, 1


def _pair(p: Any, name: str, default: int | None) -> list[int]:
    h, w = f"{name}_h", f"{name}_w"
    if p.HasField(h) or p.HasField(w):
        return [getattr(p, h), getattr(p, w)]
    base = "kernel_size" if name == "kernel" else name
    if p.HasField(base) or default is None:
        if not p.HasField(base):
            raise ConversionError("kernel_size (or kernel_h/kernel_w) is not set")
        return [getattr(p, base)] * 2
    return [default] * 2


def caffe_pool_out(size: int, k: int, s: int, pad: int, ceil: bool) -> int:
    """Caffe's pooled size: ceil/floor, then the clip rule (last window starts inside)."""
    rounding = math.ceil if ceil else math.floor
    out = int(rounding((size + 2 * pad - k) / s)) + 1
    if pad > 0 and (out - 1) * s >= size + pad:
        out -= 1
    return out


def ave_divisor(size: int, out: int, k: int, s: int, pad: int) -> np.ndarray:
    """Caffe's AVE divisor per output position: window clipped to [-pad, size+pad)."""
    start = np.arange(out) * s - pad
    end = np.minimum(start + k, size + pad)
    return (end - start).astype(np.float64)


@HANDLERS.register("Pooling")
def pooling(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    p = ctx.p.pooling_param
    shape = ctx.shape
    if len(shape) != 4:
        raise ConversionError(f"expected a 4-D (N, C, H, W) bottom, received {shape}")
    n, c, h, w = shape
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise ConversionError("global_pooling with a kernel size set")
        op = {MAX: "GlobalMaxPool", AVE: "GlobalAveragePool"}.get(p.pool)
        if op is None:
            raise ConversionError("STOCHASTIC global pooling is not supported")
        return [Out(ctx.op(op, [ctx.x]), [n, c, 1, 1])]
    kernel = _pair(p, "kernel", None)
    stride = _pair(p, "stride", 1)
    pad = _pair(p, "pad", 0)
    if any(pd >= k for pd, k in zip(pad, kernel)):
        raise ConversionError(f"pad {pad} must be smaller than kernel {kernel}")
    ceil = p.round_mode == CEIL
    out = [caffe_pool_out(sz, k, s, pd, ceil) for sz, k, s, pd in zip((h, w), kernel, stride, pad)]
    # end pads that make ONNX's floor formula give Caffe's size: (out-1)*s + k - size - pad_begin
    # (never negative; anything in [lower, lower+s-1] gives the same size)
    end = [max(0, (o - 1) * s + k - sz - pd) for o, s, k, sz, pd in zip(out, stride, kernel, (h, w), pad)]
    pads = [pad[0], pad[1], end[0], end[1]]
    attrs = {"kernel_shape": kernel, "strides": stride, "pads": pads, "ceil_mode": 0}
    if p.pool == MAX:
        if len(ctx.layer.tops) == 2:  # the argmax mask (SegNet/ENet unpooling)
            from portanet.converters.caffe.ops.fork import max_pool_with_mask

            return max_pool_with_mask(ctx, attrs, [n, c, *out])
        # padded cells never win a max, as in Caffe
        return [Out(ctx.op("MaxPool", [ctx.x], attrs), [n, c, *out])]
    if p.pool == STOCHASTIC:
        return [Out(_stochastic_test(ctx, attrs), [n, c, *out])]
    if p.pool != AVE:
        raise ConversionError(f"unknown pool method {p.pool}")
    # Caffe divides by the window clipped to the padded extent [-pad, size+pad)
    div = [ave_divisor(sz, o, k, s, pd) for sz, o, k, s, pd in zip((h, w), out, kernel, stride, pad)]
    divisor = np.outer(div[0], div[1])
    area = kernel[0] * kernel[1]
    if np.all(divisor == area):
        return [Out(ctx.op("AveragePool", [ctx.x], {**attrs, "count_include_pad": 1}), [n, c, *out])]
    if pad == [0, 0]:
        # no padding: the clipped window is exactly the real cells
        return [Out(ctx.op("AveragePool", [ctx.x], {**attrs, "count_include_pad": 0}), [n, c, *out])]
    # sum = mean * area (with zero pads counted), then divide by Caffe's divisor map (1, 1, H', W')
    mean = ctx.op("AveragePool", [ctx.x], {**attrs, "count_include_pad": 1})
    factor = (area / divisor).astype(np.float32).reshape(1, 1, *out)
    return [Out(ctx.op("Mul", [mean, ctx.fconst(factor)]), [n, c, *out])]


def _stochastic_test(ctx: Ctx, attrs: dict[str, Any]) -> Any:
    """Caffe's test-time stochastic pooling: sum(x^2) / sum(x) over each window
    (the window average's divisor cancels)."""
    sq = ctx.op("Mul", [ctx.x, ctx.x])
    num = ctx.op("AveragePool", [sq], {**attrs, "count_include_pad": 0})
    den = ctx.op("AveragePool", [ctx.x], {**attrs, "count_include_pad": 0})
    return ctx.op("Div", [num, den])
