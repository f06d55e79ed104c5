"""Element-wise layers: ReLU, PReLU, Sigmoid, TanH, ELU, AbsVal, BNLL, Power, Exp, Log,
Threshold, Clip, Swish, Dropout."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from portanet.converters.caffe.context import Ctx, Out
from portanet.converters.caffe.ops.table import HANDLERS
from portanet.errors import ConversionError

#: Caffe type -> ONNX op for parameterless element-wise layers (one-line table entries)
_SIMPLE = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus"}


def _unary(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    return [Out(ctx.op(_SIMPLE[ctx.layer.type], [ctx.x]), ctx.shape)]


for _t in _SIMPLE:
    HANDLERS.register(_t)(_unary)


def affine(ctx: Ctx, x: ir.Value, scale: float, shift: float) -> ir.Value:
    """``scale * x + shift``, skipping identities."""
    if scale != 1.0:
        x = ctx.op("Mul", [x, ctx.fconst(np.float32(scale))])
    if shift != 0.0:
        x = ctx.op("Add", [x, ctx.fconst(np.float32(shift))])
    return x


@HANDLERS.register("ReLU")
def relu(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    slope = ctx.p.relu_param.negative_slope
    if slope != 0.0:
        return [Out(ctx.op("LeakyRelu", [ctx.x], {"alpha": float(slope)}), ctx.shape)]
    return [Out(ctx.op("Relu", [ctx.x]), ctx.shape)]


@HANDLERS.register("PReLU")
def prelu(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    shape = ctx.shape
    ctx.expect_blobs(1, "slope")
    if ctx.p.prelu_param.channel_shared:
        slope = ctx.blob(0, [1], "slope")  # 0-D in Caffe; (1,) broadcasts the same
    else:
        if len(shape) < 2:
            raise ConversionError(f"expected a bottom with channels, received {shape}")
        # (C,) -> (C, 1, ..., 1) to broadcast over (N, C, ...)
        slope = ctx.blob(0, [shape[1]], "slope").reshape([shape[1]] + [1] * (len(shape) - 2))
    return [Out(ctx.op("PRelu", [ctx.x, ctx.param("slope", slope)]), shape)]


@HANDLERS.register("ELU")
def elu(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    return [Out(ctx.op("Elu", [ctx.x], {"alpha": float(ctx.p.elu_param.alpha)}), ctx.shape)]


@HANDLERS.register("Power")
def power(ctx: Ctx) -> list[Out]:
    """``y = (shift + scale * x) ^ power``."""
    ctx.expect_bottoms(1)
    p = ctx.p.power_param
    y = affine(ctx, ctx.x, p.scale, p.shift)
    if p.power != 1.0:
        y = ctx.op("Pow", [y, ctx.fconst(np.float32(p.power))])
    elif y is ctx.x:
        y = ctx.op("Identity", [y])
    return [Out(y, ctx.shape)]


@HANDLERS.register("Exp")
def exp(ctx: Ctx) -> list[Out]:
    """``y = base ^ (shift + scale * x)``; base -1 means e."""
    ctx.expect_bottoms(1)
    p = ctx.p.exp_param
    if p.base != -1.0 and p.base <= 0:
        raise ConversionError(f"base must be -1 (e) or positive, received {p.base}")
    ln_base = 1.0 if p.base == -1.0 else math.log(p.base)
    y = affine(ctx, ctx.x, p.scale * ln_base, p.shift * ln_base)
    return [Out(ctx.op("Exp", [y]), ctx.shape)]


@HANDLERS.register("Log")
def log(ctx: Ctx) -> list[Out]:
    """``y = log_base(shift + scale * x)``; base -1 means e."""
    ctx.expect_bottoms(1)
    p = ctx.p.log_param
    if p.base != -1.0 and (p.base <= 0 or p.base == 1.0):
        raise ConversionError(f"base must be -1 (e) or positive and not 1, received {p.base}")
    y = ctx.op("Log", [affine(ctx, ctx.x, p.scale, p.shift)])
    if p.base != -1.0:
        y = ctx.op("Mul", [y, ctx.fconst(np.float32(1.0 / math.log(p.base)))])
    return [Out(y, ctx.shape)]


@HANDLERS.register("Threshold")
def threshold(ctx: Ctx) -> list[Out]:
    """``y = 1 if x > threshold else 0``."""
    ctx.expect_bottoms(1)
    t = ctx.fconst(np.float32(ctx.p.threshold_param.threshold))
    return [Out(ctx.op("Cast", [ctx.op("Greater", [ctx.x, t])], {"to": ir.DataType.FLOAT}), ctx.shape)]


@HANDLERS.register("Clip")
def clip(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    p = ctx.p.clip_param
    if not (p.HasField("min") and p.HasField("max")):
        raise ConversionError("clip_param needs both min and max")
    lo, hi = ctx.fconst(np.float32(p.min)), ctx.fconst(np.float32(p.max))
    return [Out(ctx.op("Clip", [ctx.x, lo, hi]), ctx.shape)]


@HANDLERS.register("ReLU6")
def relu6(ctx: Ctx) -> list[Out]:
    """MobileNet forks' ReLU6: ``min(max(x, 0), 6)``."""
    ctx.expect_bottoms(1)
    lo, hi = ctx.fconst(np.float32(0.0)), ctx.fconst(np.float32(6.0))
    return [Out(ctx.op("Clip", [ctx.x, lo, hi]), ctx.shape)]


@HANDLERS.register("Swish")
def swish(ctx: Ctx) -> list[Out]:
    """``y = x * sigmoid(beta * x)``."""
    ctx.expect_bottoms(1)
    beta = ctx.p.swish_param.beta
    s = ctx.op("Sigmoid", [affine(ctx, ctx.x, beta, 0.0)])
    return [Out(ctx.op("Mul", [ctx.x, s]), ctx.shape)]


@HANDLERS.register("Dropout")
def dropout(ctx: Ctx) -> list[Out]:
    """Inverted dropout: the identity at inference. Kept as an ONNX Dropout so a training
    runtime can re-enable it."""
    ctx.expect_bottoms(1)
    ratio = ctx.fconst(np.float32(ctx.p.dropout_param.dropout_ratio))
    return [Out(ctx.op("Dropout", [ctx.x, ratio]), ctx.shape)]
